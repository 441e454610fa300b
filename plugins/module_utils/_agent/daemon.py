# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Background mode of the node agent, for hosts without systemd: a supervisor (double fork, new session, pid file)
that runs the agent as its worker and starts it again when it dies; stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.shipping import MODULE
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_atomic

SUPERVISE = "--supervise-internal"  # argv[1] of the supervisor: main() runs _supervise(worker, pidfile)


def _read_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile, encoding="ascii") as fh:
            pid = int(fh.read().strip() or "0")
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def agent_pid(pidfile: str) -> int | None:
    """The pid of the running supervisor of ``pidfile`` (alive and running this module), else None."""
    pid = _read_pid(pidfile)
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    return pid if MODULE in cmdline else None


def stop_background(pidfile: str, timeout: float = 20.0) -> bool:
    """SIGTERM the supervisor (it stops its worker); True when one was running."""
    pid = agent_pid(pidfile)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and agent_pid(pidfile) == pid:
        time.sleep(0.1)
    if agent_pid(pidfile) == pid:
        os.kill(pid, signal.SIGKILL)
    try:
        os.unlink(pidfile)
    except OSError:
        pass
    return True


def supervise(worker: list[str], pidfile: str) -> None:
    """Run the worker, start it again when it dies (back-off 1 s doubling to 60 s), stop it on SIGTERM."""
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
    try:
        if _read_pid(pidfile) == os.getpid():
            os.unlink(pidfile)
    except OSError:
        pass


def start_background(argv: list[str], pidfile: str, log_path: str) -> tuple[bool, int]:
    """Start a supervisor (double fork, new session) unless one runs: (started, pid)."""
    running = agent_pid(pidfile)
    if running is not None:
        return False, running
    worker = [sys.executable, "-m", MODULE, *argv, "--worker"]
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
            write_atomic(pidfile, f"{os.getpid()}\n", 0o644, makedirs=False)
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            # Make the supervisor's cmdline name the module (agent_pid checks it).
            os.execv(sys.executable, [sys.executable, "-m", MODULE, SUPERVISE, pidfile, *worker])
        except BaseException:  # nothing can be reported from here but the exit code
            os._exit(1)
    os.close(w)
    os.waitpid(child, 0)
    with os.fdopen(r, "rb") as fh:
        got = fh.read().decode() or "0"
    return True, int(got)
