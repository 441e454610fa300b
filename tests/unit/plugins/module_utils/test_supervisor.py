"""_supervisor (the node agent's and the gateway launcher's background mode) with real processes: a supervisor in
its own session that starts its worker again when it dies and stops it on SIGTERM, an idempotent start, and a pid
file whose process is not ours (a stale file, a recycled pid) never signalled. The supervisor program here imports
_supervisor.py as the gateway host does: the file alone, beside nothing of the collection."""

from __future__ import annotations

import os
import signal
import stat
import sys
import uuid
from pathlib import Path

from ansible_collections.gpufleet.vllm.plugins.module_utils import _supervisor
from fixtures.paths import wait_for

SUPERVISOR = """import sys
sys.path.insert(0, {dir!r})
import _supervisor
_supervisor.supervise(sys.argv[3:], sys.argv[2])
"""
WORKER = """import os, sys, time
with open(sys.argv[1], "a") as fh:
    fh.write(f"{os.getpid()}\\n")
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_supervised_worker_is_started_again_when_it_dies_and_stopped_with_its_supervisor(tmp_path: Path) -> None:
    mark = f"gpufleet-test-{uuid.uuid4().hex[:8]}"
    (tmp_path / "supervisor.py").write_text(SUPERVISOR.format(dir=os.path.dirname(_supervisor.__file__)))
    (tmp_path / "worker.py").write_text(WORKER)
    pidfile, log, pids = tmp_path / "run" / "sup.pid", tmp_path / "sup.log", tmp_path / "worker.pids"
    pidfile.parent.mkdir()
    worker = [sys.executable, str(tmp_path / "worker.py"), str(pids)]
    argv = [sys.executable, str(tmp_path / "supervisor.py"), mark, str(pidfile), *worker]

    def workers() -> list[int]:
        return [int(p) for p in pids.read_text().split()] if pids.exists() else []

    started, pid = _supervisor.daemonize(argv, str(pidfile), str(log), (mark,))
    try:
        assert started and pid == _supervisor.read_pid(str(pidfile)) == _supervisor.live_pid(str(pidfile), (mark,))
        assert _supervisor.daemonize(argv, str(pidfile), str(log), (mark,)) == (False, pid)  # one runs: kept
        # a session of its own, not the caller's (an SSH session, a module run), and not its leader (double fork)
        assert os.getsid(pid) not in (os.getsid(0), pid)
        assert stat.S_IMODE(log.stat().st_mode) == 0o640
        (first,) = wait_for("the first worker", workers, limit=60, every=0.05)
        os.kill(first, signal.SIGKILL)
        wait_for("the worker started again", lambda: len(workers()) == 2, limit=60, every=0.05)
        second = workers()[1]
        assert second != first and alive(second) and alive(pid)
    finally:
        stopped = _supervisor.stop(str(pidfile), (mark,))
    assert stopped is True and not pidfile.exists()
    assert _supervisor.live_pid(str(pidfile), (mark,)) is None
    wait_for("the worker stopped with its supervisor", lambda: not alive(second), limit=60, every=0.05)
    # stop() returns once the pid file no longer names a live supervisor; the process may still be exiting
    wait_for("the supervisor exited", lambda: not alive(pid), limit=60, every=0.05)
    assert _supervisor.stop(str(pidfile), (mark,)) is False


def test_a_pid_file_whose_process_is_not_ours_is_never_signalled(tmp_path: Path) -> None:
    pidfile = tmp_path / "stale.pid"
    assert _supervisor.read_pid(str(pidfile)) is None and _supervisor.stop(str(pidfile), ("x",)) is False
    for text in ("", "abc\n", "-5\n", "0\n"):
        pidfile.write_text(text)
        assert _supervisor.read_pid(str(pidfile)) is None
    pidfile.write_text(f"{os.getpid()}\n")  # alive, but its command line (pytest's) holds no mark of ours
    mark = f"gpufleet-test-{uuid.uuid4().hex[:8]}"
    assert _supervisor.read_pid(str(pidfile)) == os.getpid()
    assert _supervisor.live_pid(str(pidfile), (mark,)) is None
    assert _supervisor.stop(str(pidfile), (mark,)) is False  # this process is still here: not signalled
    assert pidfile.exists()  # and the file is not ours to remove
