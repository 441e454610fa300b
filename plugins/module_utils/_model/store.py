# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filesystem side of model sync: layout under the models root, per-model lock, free-space check, staging,
atomic swap, manifest, progress status file, safe local copy and safe archive extraction.

Layout under `<root>` (``layout.py``: the default root, the model path and name rules)::

    <root>/<name>/<revision_id>/         a revision of the model (what vllm_container mounts; revisions.py)
    <root>/<name>/                       the model itself when synced before revisions existed (flat)
    <root>/.gpufleet/manifests/<name>.json   source, resolved commit, files with sizes and mtimes (no-op check)
    <root>/.gpufleet/status/<name>.json      progress: state, bytes_done, bytes_total, updated (status/node agent)
    <root>/.gpufleet/locks/<name>.lock       flock per model
    <root>/.gpufleet/staging/<name>.<key>/   downloads land here (same filesystem), resumed by the next run
    <root>/.gpufleet/trash/                  old versions after a swap, removed at once (or by the next run)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import fsync_dir, write_atomic
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.layout import is_under

META = ".gpufleet"
STAGING_MARKER = ".gpufleet-staging"
MANIFEST_VERSION = 1
SPACE_MARGIN_MIN = 1024 * 1024
SPACE_MARGIN_MAX = 256 * 1024 * 1024
SPACE_MARGIN_RATIO = 0.05


def meta_dir(root: str, kind: str) -> str:
    d = os.path.join(root, META, kind)
    os.makedirs(d, mode=0o755, exist_ok=True)
    return d


# ---------------------------------------------------------------- lock


@contextlib.contextmanager
def model_lock(root: str, name: str, timeout: float) -> Iterator[None]:
    """Exclusive flock on <root>/.gpufleet/locks/<name>.lock, waiting up to `timeout` seconds."""
    path = os.path.join(meta_dir(root, "locks"), f"{name}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + max(timeout, 0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = ""
                    with contextlib.suppress(OSError, ValueError):
                        holder = f" (held by pid {int(os.pread(fd, 32, 0).split()[0])})"
                    raise GpufleetError(
                        f"another model_sync of {name!r} is running{holder}; waited {timeout:g}s for its lock "
                        f"{path}. Let it finish or raise lock_timeout.",
                        failure_class="locked",
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


# ---------------------------------------------------------------- space


def free_bytes(path: str) -> int:
    while not os.path.exists(path):
        path = os.path.dirname(path) or "/"
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_free_space(path: str, need: int, what: str) -> dict[str, int]:
    """Raise unless `need` bytes plus a margin fit on the filesystem of `path` (before any byte is written)."""
    margin = min(SPACE_MARGIN_MAX, max(SPACE_MARGIN_MIN, int(need * SPACE_MARGIN_RATIO)))
    free = free_bytes(path)
    if need + margin > free:
        raise GpufleetError(
            f"not enough disk space for {what}: needs {_h(need)} (+ {_h(margin)} margin) under {path}, only "
            f"{_h(free)} free. Free some space or choose another models_root.",
            failure_class="disk_full",
            need_bytes=need,
            free_bytes=free,
        )
    return {"need_bytes": need, "free_bytes": free, "margin_bytes": margin}


def _h(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


# ---------------------------------------------------------------- staging and swap


_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _check_key(key: str) -> str:
    # A key never holds a dot, so "<name>.<key>" splits back into exactly one (name, key): `qwen2` never matches
    # the staging of `qwen2.5-7b` (`qwen2.5-7b.<key>` splits into `qwen2.5-7b` and `<key>`).
    if not _KEY_RE.match(key):
        raise ValueError(f"staging key {key!r} must be letters, digits, '_' or '-'")
    return key


def is_staging_of(entry: str, name: str) -> bool:
    """Whether `entry` of the staging directory ("<name>.<key>") belongs to model `name` exactly."""
    owner, dot, key = entry.rpartition(".")
    return bool(dot) and owner == name and _KEY_RE.match(key) is not None


def is_trash_of(entry: str, name: str) -> bool:
    """Whether `entry` of the trash directory ("<name>.<pid>.<ns>") belongs to model `name` exactly."""
    parts = entry.rsplit(".", 2)
    return len(parts) == 3 and parts[0] == name and parts[1].isdigit() and parts[2].isdigit()


def staging_path(root: str, name: str, key: str) -> str:
    return os.path.join(root, META, "staging", f"{name}.{_check_key(key)}")


def staging_dir(root: str, name: str, key: str) -> str:
    """Create the staging directory for (name, key); stale staging dirs of other keys of this model are removed."""
    base = meta_dir(root, "staging")
    mine = f"{name}.{_check_key(key)}"
    for entry in os.listdir(base):
        if entry != mine and is_staging_of(entry, name):
            rmtree_any(os.path.join(base, entry))
    path = os.path.join(base, mine)
    marker = os.path.join(path, STAGING_MARKER)
    if os.path.lexists(path) and not os.path.exists(marker):
        # not ours to resume: e.g. the old version left here by a kill right after the exchange in swap_in
        rmtree_any(path)
    os.makedirs(path, exist_ok=True)
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(f"{key}\n")
    return path


def remove_staging(root: str, name: str) -> None:
    """Remove every staging directory of model `name` (and of no other model)."""
    base = os.path.join(root, META, "staging")
    if not os.path.isdir(base):
        return
    for entry in os.listdir(base):
        if is_staging_of(entry, name):
            rmtree_any(os.path.join(base, entry))


def clean_trash(root: str, name: str | None = None) -> None:
    base = os.path.join(root, META, "trash")
    if not os.path.isdir(base):
        return
    for entry in os.listdir(base):
        if name is None or is_trash_of(entry, name):
            rmtree_any(os.path.join(base, entry))


def rmtree_any(path: str) -> None:
    if os.path.islink(path) or not os.path.isdir(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


_RENAME_EXCHANGE = 2
_SYNC_FILE_RANGE_WRITE = 2
_libc: Any = None
_sync_file_range: Any = False  # False: not looked up yet; None: not available


def _libc_fn(name: str) -> Any:
    """A function of the C library (None where it or the library is missing)."""
    global _libc
    import ctypes

    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return getattr(_libc, name)
    except (OSError, AttributeError):
        return None


# ---------------------------------------------------------------- durability


def start_writeback(path: str) -> bool:
    """Ask the kernel to start writing the dirty pages of file `path` to disk now, without waiting for it (Linux
    sync_file_range(SYNC_FILE_RANGE_WRITE)), so that the fsync before the swap has little left to do. False where
    unsupported or on any error (it is only a head start)."""
    global _sync_file_range
    if _sync_file_range is False:
        import ctypes

        fn = _libc_fn("sync_file_range")
        if fn is not None:
            fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            fn.restype = ctypes.c_int
        _sync_file_range = fn
    if _sync_file_range is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0
    finally:
        os.close(fd)


def _fsync_file(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def fsync_tree(path: str, workers: int = 4) -> dict[str, Any]:
    """Make a staged model durable before it is swapped in: fsync every regular file under `path` (in parallel:
    fsync waits on the device, not the CPU), then every directory, deepest first. A symlink (`link: true`) only
    needs its parent directory. Returns {"files", "bytes", "seconds"}."""
    t = time.monotonic()
    if os.path.islink(path) or not os.path.isdir(path):
        fsync_dir(os.path.dirname(path))
        return {"files": 0, "bytes": 0, "seconds": round(time.monotonic() - t, 3)}
    files: list[str] = []
    dirs: list[str] = []
    for dirpath, _dirnames, filenames in os.walk(path, topdown=False):
        dirs.append(dirpath)
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            if not os.path.islink(full):
                files.append(full)
    size = 0
    if len(files) > 1 and workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(workers, len(files)), thread_name_prefix="gpufleet-fsync") as ex:
            size = sum(ex.map(_fsync_file, files))
    else:
        size = sum(_fsync_file(f) for f in files)
    for d in dirs:
        fsync_dir(d)
    return {"files": len(files), "bytes": size, "seconds": round(time.monotonic() - t, 3)}


def _renameat2_exchange(a: str, b: str) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE). False where unsupported."""
    import ctypes

    fn = _libc_fn("renameat2")
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def swap_in(root: str, name: str, new: str, dest: str | None = None) -> None:
    """Make `new` (a directory or symlink on the same filesystem) become `dest` (default <root>/<name>, else a
    revision directory of model `name`) atomically.

    With renameat2(RENAME_EXCHANGE) the destination is never absent; elsewhere the old version is renamed aside
    and restored if the second rename fails. The old version goes to the trash and is removed."""
    dest = dest or os.path.join(root, name)
    trash = os.path.join(meta_dir(root, "trash"), f"{name}.{os.getpid()}.{time.time_ns()}")
    if not os.path.islink(new):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(new, STAGING_MARKER))
    if not os.path.lexists(dest):
        os.rename(new, dest)
        _fsync_dirs(os.path.dirname(dest), os.path.dirname(new))
        return
    if _renameat2_exchange(new, dest):
        os.rename(new, trash)  # `new` now names the old version
    else:
        os.rename(dest, trash)
        try:
            os.rename(new, dest)
        except BaseException:
            os.rename(trash, dest)
            raise
    _fsync_dirs(os.path.dirname(dest), os.path.dirname(new), os.path.dirname(trash))
    rmtree_any(trash)


def _fsync_dirs(*dirs: str) -> None:
    """fsync the directories a swap renamed entries in (the swap is durable once this returns)."""
    for d in dict.fromkeys(dirs):
        with contextlib.suppress(OSError):
            fsync_dir(d)


def recover(root: str, name: str) -> None:
    """After a kill between the two renames of the fallback swap: put the newest trashed version back."""
    dest = os.path.join(root, name)
    base = os.path.join(root, META, "trash")
    if os.path.lexists(dest) or not os.path.isdir(base):
        clean_trash(root, name)
        return
    cands = sorted((e for e in os.listdir(base) if is_trash_of(e, name)), key=lambda e: int(e.rsplit(".", 1)[-1]))
    if cands:
        os.rename(os.path.join(base, cands[-1]), dest)
    clean_trash(root, name)


def remove_model(root: str, name: str) -> None:
    dest = os.path.join(root, name)
    if os.path.lexists(dest):
        trash = os.path.join(meta_dir(root, "trash"), f"{name}.{os.getpid()}.{time.time_ns()}")
        os.rename(dest, trash)
        rmtree_any(trash)
    for kind in ("manifests", "status"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(root, META, kind, f"{name}.json"))


# ---------------------------------------------------------------- manifest


def list_tree(path: str) -> dict[str, dict[str, int]]:
    """Regular files under `path` (skipping dot entries): relative name -> {size, mtime_ns}."""
    out: dict[str, dict[str, int]] = {}
    base_len = len(path.rstrip("/")) + 1
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if fn.startswith("."):
                continue
            full = os.path.join(dirpath, fn)
            st = os.stat(full)
            out[full[base_len:]] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def _write_json_atomic(path: str, data: dict[str, Any], durable: bool = False) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True), makedirs=False, durable=durable)


def write_json(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON at ``path``, atomically and durably (the directory must exist)."""
    _write_json_atomic(path, data, durable=True)


def manifest_path(root: str, name: str) -> str:
    return os.path.join(root, META, "manifests", f"{name}.json")


def read_manifest(root: str, name: str) -> dict[str, Any] | None:
    try:
        with open(manifest_path(root, name)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == MANIFEST_VERSION else None


def write_manifest(root: str, name: str, data: dict[str, Any]) -> None:
    meta_dir(root, "manifests")
    _write_json_atomic(manifest_path(root, name), {**data, "version": MANIFEST_VERSION}, durable=True)


def drop_manifest(root: str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(manifest_path(root, name))


def manifest_matches_disk(manifest: dict[str, Any], path: str) -> bool:
    """True when every file the manifest records is on disk with the same size and mtime (no hashing)."""
    files = manifest.get("files") or {}
    if not os.path.isdir(path) or not files:
        return False
    for rel, meta in files.items():
        try:
            st = os.stat(os.path.join(path, rel))
        except OSError:
            return False
        if st.st_size != meta.get("size") or st.st_mtime_ns != meta.get("mtime_ns"):
            return False
    return True


# ---------------------------------------------------------------- progress status


class Progress:
    """Writes <root>/.gpufleet/status/<name>.json: {state, bytes_done, bytes_total, updated, pid, ...}.

    `watch(dir)` starts a thread that sums the sizes of the files under `dir` every `interval` seconds (works
    whatever writes them: huggingface_hub, urllib, copies)."""

    def __init__(self, root: str, name: str, interval: float = 1.0) -> None:
        self.path = os.path.join(meta_dir(root, "status"), f"{name}.json")
        self.name = name
        self.interval = interval
        self.info: dict[str, Any] = {"name": name, "pid": os.getpid(), "started": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, **info: Any) -> None:
        self.info.update(info, updated=time.time())
        with contextlib.suppress(OSError):
            _write_json_atomic(self.path, self.info)

    def watch(self, directory: str, bytes_total: int, base: int = 0, writeback: float = 0.0) -> None:
        """Report the bytes under `directory` every `interval` s. With `writeback` > 0, also start the disk
        writeback of every file that grew, every `writeback` s (see start_writeback)."""
        self.write(state="downloading", bytes_total=bytes_total, bytes_done=base)
        tick = min(self.interval, writeback) if writeback > 0 else self.interval

        def loop() -> None:
            sizes: dict[str, int] = {}
            last = time.monotonic()
            while not self._stop.wait(tick):
                done = dir_bytes(directory, sizes if writeback > 0 else None)
                if time.monotonic() - last >= self.interval - 1e-3:
                    last = time.monotonic()
                    self.write(bytes_done=base + done)

        self._thread = threading.Thread(target=loop, name="gpufleet-progress", daemon=True)
        self._thread.start()

    def stop(self, state: str, **info: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.write(state=state, **info)


def dir_bytes(directory: str, writeback: dict[str, int] | None = None) -> int:
    """Bytes of the files under `directory`. With a `writeback` dict (path -> size seen last time), start the
    disk writeback of every file that grew since."""
    total = 0
    for dirpath, _dirs, filenames in os.walk(directory):
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            total += st.st_size
            if writeback is not None and stat.S_ISREG(st.st_mode) and st.st_size > writeback.get(full, 0):
                writeback[full] = st.st_size
                start_writeback(full)
    return total


# ---------------------------------------------------------------- local source


def resolve_local_source(src: str, allowed_dirs: list[str]) -> str:
    """The real path of `src`, which must lie under one of `allowed_dirs` (also resolved) after following symlinks.

    A path with a '..' component is refused outright; a symlink (anywhere inside the tree too) pointing outside the
    allowlist is refused by copy_tree."""
    if not allowed_dirs:
        raise GpufleetError(
            "source: local needs allowed_dirs (the directories a local checkpoint may come from)",
            failure_class="bad_args",
        )
    if not os.path.isabs(src) or ".." in src.split(os.sep):
        raise GpufleetError(
            f"local source {src!r} must be an absolute path without '..' components", failure_class="bad_source"
        )
    real = os.path.realpath(src)
    allowed = [os.path.realpath(a) for a in allowed_dirs]
    if not any(is_under(real, a) for a in allowed):
        raise GpufleetError(
            f"local source {src} (resolves to {real}) is not under allowed_dirs {allowed_dirs}: add its directory "
            "to allowed_dirs or move the checkpoint",
            failure_class="bad_source",
        )
    if not os.path.isdir(real):
        raise GpufleetError(f"local source {src} is not a directory", failure_class="bad_source")
    return real


def local_files(src: str, allowed_dirs: list[str]) -> dict[str, dict[str, int]]:
    """Files of a local checkpoint: relative name -> {size, mtime_ns}. Refuses symlinks that leave the allowlist
    and anything that is not a regular file or directory."""
    allowed = [os.path.realpath(a) for a in allowed_dirs]
    out: dict[str, dict[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        for d in list(dirnames):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                target = os.path.realpath(full)
                if not any(is_under(target, a) for a in allowed):
                    raise GpufleetError(
                        f"local source: symlink {full} points outside allowed_dirs (to {target}); refused",
                        failure_class="bad_source",
                    )
                dirnames.remove(d)  # not followed: a linked directory is not copied
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, src)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(full)
                if not any(is_under(target, a) for a in allowed):
                    raise GpufleetError(
                        f"local source: symlink {rel} points outside allowed_dirs (to {target}); refused",
                        failure_class="bad_source",
                    )
                st = os.stat(full)
            if not stat.S_ISREG(st.st_mode):
                raise GpufleetError(f"local source: {rel} is not a regular file; refused", failure_class="bad_source")
            out[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_no_links(path: str) -> int:
    """A read descriptor of the regular file at the absolute `path`, reached from '/' one component at a time with
    O_NOFOLLOW: a symlink anywhere on the way (say one swapped in after the checks) fails the open instead of being
    followed, so what is opened really is `path`. OSError (ELOOP, ENOTDIR, ...) or GpufleetError (not a file)."""
    parts = [p for p in path.split("/") if p]
    if not parts or ".." in parts:
        raise OSError(errno.EINVAL, "not an absolute path without '..'", path)
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(ffd).st_mode):
        os.close(ffd)
        raise GpufleetError(f"local source: {path} is not a regular file; refused", failure_class="bad_source")
    return ffd


def _copy_fd(sfd: int, dfd: int) -> None:
    """Copy all of `sfd` into `dfd` (copy_file_range where the kernel has it, else read/write)."""
    if hasattr(os, "copy_file_range"):
        try:
            while os.copy_file_range(sfd, dfd, 1 << 30):
                pass
            return
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
            os.lseek(sfd, 0, os.SEEK_SET)
            os.lseek(dfd, 0, os.SEEK_SET)
            os.ftruncate(dfd, 0)
    while chunk := os.read(sfd, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dfd, view) :]


def _link_fd(fd: int, dest: str) -> None:
    """Hard-link the file open as `fd` at `dest`: linkat(/proc/self/fd/N, AT_SYMLINK_FOLLOW) links the opened file
    itself, never whatever its old path names now. (os.link takes linkat, not link(2), only with a dir fd.)"""
    parent, base = os.path.split(dest)
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", base, src_dir_fd=pfd, dst_dir_fd=pfd, follow_symlinks=True)
    finally:
        os.close(pfd)


def copy_tree(
    src: str,
    files: dict[str, dict[str, int]],
    dst: str,
    hardlink: bool = True,
    allowed_dirs: list[str] | None = None,
) -> dict[str, int]:
    """Copy `files` (from local_files) into `dst`, hard-linking where the filesystem allows. Returns counts.

    Every source file is opened by its resolved path with no link followed on the way (open_no_links) and checked
    to lie under `allowed_dirs` (default: `src`) and to be a regular file; the copy or the hard link is made from
    that descriptor, never by path again. A file swapped for a symlink after local_files checked it therefore
    cannot bring anything from outside the allowlist into the model."""
    allowed = [os.path.realpath(a) for a in (allowed_dirs or [src])]
    linked = copied = 0
    for rel in sorted(files):
        real = os.path.realpath(os.path.join(src, rel))
        if not any(is_under(real, a) for a in allowed):
            raise GpufleetError(
                f"local source: {rel} now resolves to {real}, outside allowed_dirs (changed while copying); refused",
                failure_class="bad_source",
            )
        try:
            sfd = open_no_links(real)
        except OSError as err:
            raise GpufleetError(
                f"local source: {rel} changed while copying ({err.strerror}); refused, run again once the "
                "checkpoint is stable",
                failure_class="bad_source",
            ) from None
        try:
            d = os.path.join(dst, rel)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            if os.path.lexists(d):
                os.unlink(d)
            if hardlink:
                try:
                    _link_fd(sfd, d)
                    linked += 1
                    continue
                except OSError:
                    hardlink = False  # cross-device or not permitted: copy the rest
            st = os.fstat(sfd)
            dfd = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                _copy_fd(sfd, dfd)
                os.fchmod(dfd, stat.S_IMODE(st.st_mode))
                os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dfd)
            copied += 1
        finally:
            os.close(sfd)
    return {"linked": linked, "copied": copied}
