# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the node agent needs on a host: the module that runs it (``MODULE``) and the module_utils files it imports,
transitively (``shipped_files``). The role ``gpufleet.vllm.node_agent`` ships exactly these files, byte for byte:
never a copy that could drift. ``pack`` puts them in one reproducible archive (the role ships it in one transfer and
unpacks it into a directory named by its digest: a release)."""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import os
import tarfile

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

PACKAGE = "ansible_collections.gpufleet.vllm.plugins.module_utils"
PACKAGE_DIR = PACKAGE.replace(".", "/")
COMPLETE = ".complete"  # the archive's last member: a release directory without it was not unpacked to the end
ENTRY = "_agent.cli"  # the agent's program, relative to PACKAGE
MODULE = f"{PACKAGE}.{ENTRY}"  # what runs it: python3 -m MODULE


def shipped_files(directory: str | None = None, start: str = ENTRY) -> list[str]:
    """The module_utils files the agent needs on a host: its program, every module_utils module it imports,
    transitively, and the ``__init__.py`` of each package on the way (read from the sources, so the list cannot
    drift from the code). Paths relative to module_utils, sorted."""
    directory = directory or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def module_file(mod: str) -> str | None:
        base = os.path.join(directory, *mod.split("."))
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
        return None

    todo, seen, files = [start], set(), set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = module_file(mod)
        if path is None:
            raise GpufleetError(f"{mod} is imported by the node agent but {directory} has no module file for it")
        files.add(os.path.relpath(path, directory))
        parts = mod.split(".")
        for i in range(1, len(parts)):  # the packages on the way
            todo.append(".".join(parts[:i]))
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), filename=path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == PACKAGE:
                    todo.extend(alias.name for alias in node.names)
                elif node.module.startswith(PACKAGE + "."):
                    sub = node.module[len(PACKAGE) + 1 :]
                    todo.append(sub)
                    # ``from PACKAGE.pkg import mod`` names modules of the package as well as names in it
                    todo.extend(f"{sub}.{a.name}" for a in node.names if module_file(f"{sub}.{a.name}"))
            elif isinstance(node, ast.Import):
                todo.extend(a.name[len(PACKAGE) + 1 :] for a in node.names if a.name.startswith(PACKAGE + "."))
    return sorted(files)


def pack(dest: str, directory: str | None = None) -> dict[str, object]:
    """Write the agent's code as a gzipped tar to ``dest``: the ``__init__.py`` of each package above module_utils
    (empty), the files of ``shipped_files`` under ``ansible_collections/gpufleet/vllm/plugins/module_utils/`` with
    the collection's own bytes, and ``COMPLETE`` last. Reproducible: sorted members, fixed owner, mode and time, no
    gzip name or time, so the same code gives the same bytes and ``sha256`` (the release's name on the host).
    Returns ``{"sha256", "files", "bytes"}``."""
    directory = directory or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = shipped_files(directory)
    members: list[tuple[str, bytes]] = []
    parts = PACKAGE_DIR.split("/")
    for i in range(1, len(parts) + 1):
        init = "/".join(parts[:i]) + "/__init__.py"
        if i < len(parts) or "__init__.py" not in files:
            members.append((init, b""))
    for rel in files:
        with open(os.path.join(directory, rel), "rb") as fh:
            members.append((f"{PACKAGE_DIR}/{rel}", fh.read()))
    members.sort()
    members.append((COMPLETE, b""))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name, data in members:
            for i in range(1, name.count("/") + 1):
                d = "/".join(name.split("/")[:i])
                if d not in dirs:
                    dirs.add(d)
                    tar.addfile(_info(d, tarfile.DIRTYPE, 0o755))
            info = _info(name, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    blob = out.getvalue()
    tmp = f"{dest}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(blob)
    os.replace(tmp, dest)
    return {"sha256": hashlib.sha256(blob).hexdigest(), "files": files, "bytes": len(blob)}


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info
