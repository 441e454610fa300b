# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Safe extraction of the URL source's archives (.tar, .tar.gz / .tgz, .zip).

An archive is hostile input. Every member is checked before anything is written:

- names: relative, no '..', no backslash, no NUL or control character, each part a usable file name;
- types: regular files and directories; tar symlinks and hard links only when they resolve, inside the extracted
  tree, to a regular file or a directory of the archive itself (resolved member by member, following the archive's
  own links exactly as the kernel would, so a chain such as ``a -> .``, ``b -> a/..`` is seen for what it is:
  CVE-2025-4517 / CVE-2007-4559 and their kin); no member below a link; devices, fifos and anything else refused;
- size: the total that would be written (hard links are written as copies) must fit the free space, and must not
  exceed ``MAX_RATIO`` times the archive's own size (an archive bomb).

Then the members are written by this code itself, never by tarfile's or zipfile's extract: each directory is
opened with O_NOFOLLOW relative to its parent's descriptor and each file created with O_EXCL | O_NOFOLLOW, so
nothing written can follow a link. Symlinks are created last, with the resolved, chain-free relative target. A
corrupt archive, or any failure while writing, ends in one GpufleetError and an empty target.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.store import check_free_space, rmtree_any

MAX_MEMBERS = 200_000
# Model weights barely compress; configs and tokenizers do, but they are small. Only a total above RATIO_FLOOR
# is held to the ratio, so an archive of a few small text files is never refused for compressing well.
MAX_RATIO = 100
RATIO_FLOOR = 64 * 1024 * 1024
MAX_LINK_HOPS = 40  # the kernel's own limit on symlinks followed in one lookup
NAME_MAX = 255
PATH_MAX = 4000
_CHUNK = 1 << 20
_FIX = "fix or rebuild the archive (regular files and directories, relative names)"


def archive_kind(name: str) -> str | None:
    n = name.lower()
    if n.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if n.endswith(".tar"):
        return "tar"
    if n.endswith(".zip"):
        return "zip"
    return None


def _n(name: str) -> str:
    """A member name for a message: quoted, and cut short when long."""
    return repr(name if len(name) <= 100 else name[:60] + "..." + name[-30:])


def _bad(msg: str, fix: str = _FIX) -> GpufleetError:
    return GpufleetError(f"{msg}; refused, nothing was extracted: {fix}", failure_class="bad_archive")


@dataclass
class Member:
    """One archive member, as planned: `name` relative to the target; `kind` file, dir, symlink or hardlink;
    `target` the link text (symlink, relative to its directory) or the linked member (hardlink, from the root);
    `resolved` what a link resolves to inside the tree; `source` the archive's own handle for reading the data."""

    name: str
    kind: str
    size: int = 0
    target: str = ""
    resolved: str = ""
    source: Any = None


def safe_name(member: str, what: str = "archive entry") -> str:
    """`member` as a clean relative path ('a/b'), or GpufleetError when it is absolute, climbs with '..', holds a
    backslash, NUL or control character, or a part too long for a file name. '' for the root itself."""
    if not isinstance(member, str):
        raise _bad(f"{what} {member!r} has no usable name")
    if member.startswith("/") or (len(member) > 1 and member[1] == ":"):
        raise _bad(f"{what} {_n(member)} has an absolute path")
    if "\\" in member:
        raise _bad(f"{what} {_n(member)} holds a backslash (a Windows path)")
    if any(unicodedata.category(c) == "Cc" for c in member):
        raise _bad(f"{what} {_n(member)} holds a control character or NUL")
    parts = [p for p in member.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _bad(f"{what} {_n(member)} escapes the target with '..'")
    if any(len(os.fsencode(p)) > NAME_MAX for p in parts) or len(os.fsencode(member)) > PATH_MAX:
        raise _bad(f"{what} {_n(member)} has a name too long for the filesystem")
    return "/".join(parts)


# ---------------------------------------------------------------- reading the two formats


def _tar_members(t: Any) -> Iterator[tuple[str, str, int, str, Any]]:
    """(name, kind, size, linkname, handle) of every tar member; unsupported types are refused here."""
    for m in t.getmembers():
        if m.isreg():
            kind = "file"
        elif m.isdir():
            kind = "dir"
        elif m.issym():
            kind = "symlink"
        elif m.islnk():
            kind = "hardlink"
        elif m.ischr() or m.isblk():
            raise _bad(f"archive entry {_n(m.name)} is a device")
        elif m.isfifo():
            raise _bad(f"archive entry {_n(m.name)} is a device or fifo")
        else:
            raise _bad(f"archive entry {_n(m.name)} has an unsupported type {m.type!r}")
        if m.size < 0:
            raise _bad(f"archive entry {_n(m.name)} declares a negative size")
        yield m.name, kind, m.size if kind == "file" else 0, m.linkname, m


def _zip_members(z: Any) -> Iterator[tuple[str, str, int, str, Any]]:
    for info in z.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _bad(
                f"archive entry {_n(info.filename)} is a symlink",
                "zip archives may hold only regular files and directories; use a tar archive for links",
            )
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise _bad(f"archive entry {_n(info.filename)} is not a regular file (a device, fifo or socket)")
        if info.flag_bits & 0x1:
            raise _bad(f"archive entry {_n(info.filename)} is encrypted", "publish an archive without a password")
        kind = "dir" if info.is_dir() else "file"
        yield info.filename, kind, info.file_size if kind == "file" else 0, "", info


# ---------------------------------------------------------------- the plan


def plan(raw: list[tuple[str, str, int, str, Any]], strip_top: bool = False) -> list[Member]:
    """Check every member and return what will be written (in archive order, links last). With `strip_top`, a
    single top-level directory holding everything is stripped (the model is its contents) and top-level dot entries
    beside it are dropped. Raises GpufleetError on the first problem."""
    if len(raw) > MAX_MEMBERS:
        raise _bad(f"the archive holds {len(raw)} entries, more than {MAX_MEMBERS}")
    members: list[Member] = []
    seen: dict[str, Member] = {}
    for name, kind, size, linkname, handle in raw:
        rel = safe_name(name)
        if not rel:
            if kind != "dir":
                raise _bad(f"archive entry {_n(name)} names the target directory itself but is not a directory")
            continue
        target = linkname
        if kind == "symlink":
            if not linkname or linkname.startswith("/") or "\\" in linkname or "\0" in linkname:
                raise _bad(f"archive entry {_n(name)} links outside the target ({linkname!r})")
        elif kind == "hardlink":
            try:
                target = safe_name(linkname, "link")
            except GpufleetError:
                raise _bad(f"archive entry {_n(name)} hard-links outside the target ({linkname!r})") from None
        old = seen.get(rel)
        if old is not None:
            if old.kind == "dir" and kind == "dir":
                continue
            raise _bad(f"archive entry {_n(name)} appears twice (as {old.kind} and {kind})")
        m = Member(rel, kind, size, target, source=handle)
        seen[rel] = m
        members.append(m)
    if strip_top:
        members = _strip_top(members)
    tree = {m.name: m for m in members}
    implicit: set[str] = set()
    for m in members:
        parts = m.name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            above = tree.get(prefix)
            if above is None:
                implicit.add(prefix)
            elif above.kind == "symlink":
                raise _bad(f"archive entry {_n(m.name)} lies below the symlink {_n(prefix)} (links outside)")
            elif above.kind != "dir":
                raise _bad(f"archive entry {_n(m.name)} lies below {_n(prefix)}, which is a {above.kind}")
    for d in implicit:
        tree.setdefault(d, Member(d, "dir"))
    order = {m.name: i for i, m in enumerate(members)}
    for m in members:
        if m.kind == "symlink":
            m.resolved = _resolve(tree, m)
        elif m.kind == "hardlink":
            t = tree.get(m.target)
            if t is None or t.kind != "file" or order.get(t.name, len(order)) > order[m.name]:
                raise _bad(
                    f"archive entry {_n(m.name)} hard-links to {m.target!r}, which is not a regular file earlier in "
                    "the archive (links outside)"
                )
            m.resolved, m.size = t.name, t.size
    return [m for m in members if m.kind != "symlink"] + [m for m in members if m.kind == "symlink"]


def _strip_top(members: list[Member]) -> list[Member]:
    visible = [m for m in members if not m.name.split("/")[0].startswith(".")]
    tops = {m.name.split("/")[0] for m in visible}
    if len(tops) != 1:
        return members
    top = tops.pop()
    head = next((m for m in visible if m.name == top), None)
    if (head is not None and head.kind != "dir") or not any(m.name.startswith(top + "/") for m in visible):
        return members
    out = []
    for m in visible:
        if m.name == top:
            continue
        m.name = m.name[len(top) + 1 :]
        if m.kind == "hardlink":
            if not m.target.startswith(top + "/"):
                raise _bad(f"archive entry {_n(top + '/' + m.name)} hard-links to {m.target!r} outside its directory")
            m.target = m.target[len(top) + 1 :]
        out.append(m)
    return out


def _resolve(tree: dict[str, Member], link: Member) -> str:
    """Where symlink `link` leads inside `tree`, following the archive's own links like the kernel (a '..' after a
    link to a directory climbs from where the link led). GpufleetError when it leaves the tree, dangles, loops, or
    lands on something other than a regular file or directory."""
    stack = link.name.split("/")[:-1]
    todo = link.target.split("/")
    hops = 0
    while todo:
        c = todo.pop(0)
        if c in ("", "."):
            continue
        if c == "..":
            if not stack:
                raise _bad(f"archive entry {_n(link.name)} links outside the target ({link.target})")
            stack.pop()
            continue
        cand = "/".join([*stack, c])
        e = tree.get(cand)
        if e is None:
            raise _bad(f"archive entry {_n(link.name)} links to {link.target!r}, which is not in the archive")
        if e.kind == "symlink":
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise _bad(f"archive entry {_n(link.name)} is a symlink loop or a chain of more than {MAX_LINK_HOPS}")
            if e.target.startswith("/"):
                raise _bad(f"archive entry {_n(link.name)} links outside the target through {_n(e.name)}")
            todo = e.target.split("/") + todo
            continue
        if e.kind != "dir" and todo:
            raise _bad(f"archive entry {_n(link.name)} links through {_n(cand)}, which is not a directory")
        stack = cand.split("/")
    final = "/".join(stack)
    if not final:
        raise _bad(f"archive entry {_n(link.name)} links to the target directory itself")
    return final


# ---------------------------------------------------------------- writing


def extract_archive(
    archive: str, kind: str, dst: str, strip_top: bool = False, max_ratio: float = MAX_RATIO
) -> list[str]:
    """Extract a tar / tar.gz / zip into the empty directory `dst` (see the module docstring for what is refused;
    `strip_top`: see plan). Returns the regular files written, relative to `dst`. On any failure `dst` is left
    empty."""
    import tarfile
    import zipfile

    try:
        opened: Any = zipfile.ZipFile(archive) if kind == "zip" else tarfile.open(archive, "r:*")
    except GpufleetError:
        raise
    except Exception as err:  # a parser fed hostile bytes may raise anything
        raise _corrupt(archive, kind, err) from None
    with opened:
        try:
            raw = list(_zip_members(opened) if kind == "zip" else _tar_members(opened))
        except GpufleetError:
            raise
        except Exception as err:  # likewise
            raise _corrupt(archive, kind, err) from None
        members = plan(raw, strip_top)
        total = sum(m.size for m in members if m.kind in ("file", "hardlink"))
        packed = max(os.path.getsize(archive), 1)
        if total > RATIO_FLOOR and total > packed * max_ratio:
            raise _bad(
                f"the archive would expand to {total} bytes, {total // packed}x its own size (more than "
                f"{max_ratio:g}x: an archive bomb?)",
                "publish the model uncompressed or in a tar.gz of its weights",
            )
        check_free_space(dst, total, f"the contents of {os.path.basename(archive)}")
        if kind == "zip":

            def reader(m: Member) -> IO[bytes]:
                return opened.open(m.source)
        else:

            def reader(m: Member) -> IO[bytes]:
                f = opened.extractfile(m.source)
                if f is None:  # pragma: no cover - planned members are regular files
                    raise _bad(f"archive entry {_n(m.name)} has no data")
                return f

        try:
            return _write(dst, members, reader)
        except BaseException as err:
            _empty(dst)
            if isinstance(err, GpufleetError):
                raise
            if isinstance(err, OSError) and err.errno in (28, 122):  # ENOSPC, EDQUOT
                raise GpufleetError(
                    f"disk full while extracting {os.path.basename(archive)} into {dst}: {err}; nothing was kept "
                    "and the installed model was left as it was",
                    failure_class="disk_full",
                ) from None
            if isinstance(err, Exception):
                raise _corrupt(archive, kind, err) from None
            raise


def _corrupt(archive: str, kind: str, err: BaseException) -> GpufleetError:
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return GpufleetError(
        f"{os.path.basename(archive)} is not a readable {kind} archive ({type(err).__name__}: {first}); nothing "
        "was extracted: check the url and the file it serves (a checksum catches a corrupt or truncated download)",
        failure_class="bad_archive",
    )


def _empty(dst: str) -> None:
    try:
        entries = os.listdir(dst)
    except OSError:
        return
    for e in entries:
        rmtree_any(os.path.join(dst, e))


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _split(rel: str) -> tuple[str, str]:
    """('a/b', 'c') for 'a/b/c'; ('', 'c') for 'c'."""
    parent, _sep, base = rel.rpartition("/")
    return parent, base


def _write(dst: str, members: list[Member], reader: Callable[[Member], IO[bytes]]) -> list[str]:
    fds: dict[str, int] = {"": os.open(dst, _DIR_FLAGS)}

    def dir_fd(rel: str) -> int:
        """A descriptor of directory `rel` (created as needed), reached from `dst` without following a link."""
        if rel in fds:
            return fds[rel]
        parent, base = _split(rel)
        pfd = dir_fd(parent)
        try:
            os.mkdir(base, 0o755, dir_fd=pfd)
        except FileExistsError:
            pass
        fds[rel] = os.open(base, _DIR_FLAGS, dir_fd=pfd)
        return fds[rel]

    files: list[str] = []
    try:
        for m in members:
            if m.kind == "dir":
                dir_fd(m.name)
                continue
            parent, base = _split(m.name)
            pfd = dir_fd(parent)
            if m.kind == "symlink":
                os.symlink(os.path.relpath(m.resolved, parent or "."), base, dir_fd=pfd)
                continue
            if m.kind == "file":
                src: IO[bytes] = reader(m)
            else:  # a hard link is written as a copy of the file already extracted
                tparent, tbase = _split(m.resolved)
                src = os.fdopen(
                    os.open(tbase, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd(tparent)), "rb"
                )
            with src, os.fdopen(os.open(base, _NEW_FILE, 0o644, dir_fd=pfd), "wb") as out:
                left = m.size
                while left > 0:
                    chunk = src.read(min(_CHUNK, left))
                    if not chunk:
                        raise _bad(f"archive entry {_n(m.name)} ends before its declared {m.size} bytes (truncated)")
                    out.write(chunk)
                    left -= len(chunk)
                if src.read(1):
                    raise _bad(f"archive entry {_n(m.name)} holds more than its declared {m.size} bytes")
            files.append(m.name)
    finally:
        for fd in fds.values():
            os.close(fd)
    return sorted(files)
