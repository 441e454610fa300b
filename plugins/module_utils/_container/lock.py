# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One converge of a deployment at a time on a host: an exclusive flock per deployment name.

Two runs converging the same container at once break the replacement protocol: the second sees the first one's
kept ``gpufleet-NAME-previous`` as a leftover and removes it, and when the first one's new container then fails,
nothing is left to roll back to. ``converge_lock(state_dir, name)`` takes ``<state_dir>/locks/NAME.lock`` without
waiting (a second run fails at once with one clear message instead of queueing behind a start-up that may take
half an hour); the kernel releases it when the process ends, however it ends.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from ansible_collections.gpufleet.vllm.plugins.module_utils._container.validate import name_problem
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

LOCK_DIR = "locks"


def state_dir(manifest_dir: str) -> str:
    """The host's gpufleet state directory: the parent of manifest_dir (/var/lib/gpufleet by default)."""
    return os.path.dirname(os.path.normpath(manifest_dir)) or "/"


def lock_path(state_dir: str, name: str) -> str:
    """``<state_dir>/locks/<name>.lock``; the name is checked first (it becomes a file name)."""
    problem = name_problem(name)
    if problem:
        raise GpufleetError(problem, failure_class="bad_args")
    return os.path.join(state_dir, LOCK_DIR, f"{name}.lock")


@contextmanager
def converge_lock(state_dir: str, name: str) -> Iterator[str]:
    """Hold the converge lock of deployment ``name`` (GpufleetError, failure class ``locked``, when another process
    holds it). Yields the lock file's path."""
    path = lock_path(state_dir, name)
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise GpufleetError(
            f"cannot create the converge lock {path}: {e.strerror}; make its directory writable (manifest_dir's "
            "parent holds the locks)",
            failure_class="locked",
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_holder(fd)
            raise GpufleetError(
                f"another converge of {name} is running on this host{holder} (lock {path}); wait for it to finish "
                "and run again (two at once would remove each other's rollback container)",
                failure_class="locked",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        os.close(fd)  # releases the flock


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
