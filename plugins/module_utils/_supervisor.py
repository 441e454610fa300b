# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Supervision without systemd, for the collection's programs on a host (the node agent, the gateway's launcher):
a supervisor (double fork, new session, pid file) runs a worker and starts it again when it dies (back-off 1 s
doubling to 60 s, back to 1 s after a minute up); SIGTERM stops both.

Standard library only, importing nothing of the collection: the gateway role ships this file beside
``_gateway/launch.py`` (the same bytes), the node agent imports it as part of its shipped tree (``_agent/shipping``).
A pid file's process counts as the supervisor only while it is alive and its command line holds every one of the
caller's ``marks`` (a recycled pid or a stale file is never signalled).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any


def read_pid(pidfile: str) -> int | None:
    """The pid written in ``pidfile``, or None (no file, not a number, not positive)."""
    try:
        with open(pidfile, encoding="ascii") as fh:
            pid = int(fh.read().strip() or "0")
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def live_pid(pidfile: str, marks: Sequence[str]) -> int | None:
    """The pid of ``pidfile`` when that process is alive and its command line holds every mark, else None."""
    pid = read_pid(pidfile)
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    return pid if all(m in cmdline for m in marks) else None


def stop(pidfile: str, marks: Sequence[str], timeout: float = 20.0) -> bool:
    """SIGTERM the supervisor of ``pidfile`` (it stops its worker), SIGKILL after ``timeout``; the pid file is
    removed. True when one was running."""
    pid = live_pid(pidfile, marks)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and live_pid(pidfile, marks) == pid:
        time.sleep(0.1)
    if live_pid(pidfile, marks) == pid:
        os.kill(pid, signal.SIGKILL)
    try:
        os.unlink(pidfile)
    except OSError:
        pass
    return True


def supervise(worker: list[str], pidfile: str) -> None:
    """Run the worker, start it again when it dies (back-off 1 s doubling to 60 s), stop it on SIGTERM or SIGINT;
    the pid file is removed at the end when it still names this process."""
    stopping = threading.Event()
    proc: list[subprocess.Popen[bytes]] = []

    def on_term(_signum: int, _frame: Any) -> None:
        stopping.set()
        for p in proc:
            if p.poll() is None:
                p.terminate()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    delay = 1.0
    while not stopping.is_set():
        started = time.monotonic()
        p = subprocess.Popen(worker)
        proc[:] = [p]
        p.wait()
        if stopping.is_set():
            break
        delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 60.0)
        stopping.wait(delay)
    if read_pid(pidfile) == os.getpid():
        try:
            os.unlink(pidfile)
        except OSError:
            pass


def daemonize(supervisor: list[str], pidfile: str, log_path: str, marks: Sequence[str]) -> tuple[bool, int]:
    """Start ``supervisor`` (the argv of a program whose entry point calls :func:`supervise`; it must hold every
    mark) in the background unless one runs: double fork, new session, stdin from /dev/null, stdout and stderr
    appended to ``log_path`` (0640), its pid written to ``pidfile`` (atomically, before it runs); returns once it
    runs its program (or failed to). (started, pid)."""
    running = live_pid(pidfile, marks)
    if running is not None:
        return False, running
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # first child: new session, fork again, exit
        os.close(r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        try:
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            tmp = f"{pidfile}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="ascii") as fh:
                fh.write(f"{os.getpid()}\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, pidfile)
            os.write(w, str(os.getpid()).encode())
            # w is close-on-exec (os.pipe): the caller reads to its end, so it returns once the supervisor's own
            # program runs (its command line holds the marks: live_pid finds it, a second start does not start one).
            os.execv(supervisor[0], supervisor)
        except BaseException:  # nothing can be reported from here but the exit code
            os._exit(1)
    os.close(w)
    os.waitpid(child, 0)
    with os.fdopen(r, "rb") as fh:
        got = fh.read().decode() or "0"
    return True, int(got)
