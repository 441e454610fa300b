# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic file writes: the one way the collection replaces a file (manifests, status files, reports, caches, the
node agent's state), so that a reader never sees half a file and a crash leaves the old one."""

from __future__ import annotations

import contextlib
import os


def fsync_dir(path: str) -> None:
    """fsync a directory, which makes the names created, renamed or removed in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str,
    data: str | bytes,
    mode: int = 0o644,
    *,
    makedirs: bool = True,
    durable: bool = False,
    uid: int = -1,
    gid: int = -1,
) -> None:
    """Replace ``path`` with ``data`` through a temporary file in the same directory and a rename. ``mode`` (and
    ``uid``/``gid`` when >= 0) is set before the rename; ``makedirs`` creates the directory; ``durable`` fsyncs the
    file and then the directory (survives a power loss, not only a crash)."""
    import tempfile  # only when a file is written: never on a no-op converge (manifest.write compares first)

    directory = os.path.dirname(os.path.abspath(path))
    if makedirs:
        os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".tmp-{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if uid >= 0 or gid >= 0:
            os.chown(tmp, uid, gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def write_if_changed(path: str, text: str, mode: int = 0o644) -> bool:
    """``write_atomic`` unless the file already holds ``text``; whether it wrote."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    write_atomic(path, text, mode)
    return True
