# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Background mode of the node agent, for hosts without systemd: a supervisor (``_supervisor``: double fork, new
session, pid file) runs the agent as its worker and starts it again when it dies; stopped by SIGTERM. Its command
line names the agent's module (``python -m <MODULE>``): how the pid file's process is recognised."""

from __future__ import annotations

import sys

from ansible_collections.gpufleet.vllm.plugins.module_utils import _supervisor
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.shipping import MODULE

SUPERVISE = "--supervise-internal"  # argv[1] of the supervisor: main() runs supervise(worker, pidfile)
MARKS = (MODULE,)
supervise = _supervisor.supervise


def agent_pid(pidfile: str) -> int | None:
    """The pid of the running supervisor of ``pidfile`` (alive and running this module), else None."""
    return _supervisor.live_pid(pidfile, MARKS)


def stop_background(pidfile: str, timeout: float = 20.0) -> bool:
    """SIGTERM the supervisor (it stops its worker); True when one was running."""
    return _supervisor.stop(pidfile, MARKS, timeout)


def start_background(argv: list[str], pidfile: str, log_path: str) -> tuple[bool, int]:
    """Start a supervisor of the agent with ``argv`` (double fork, new session) unless one runs: (started, pid)."""
    worker = [sys.executable, "-m", MODULE, *argv, "--worker"]
    supervisor = [sys.executable, "-m", MODULE, SUPERVISE, pidfile, *worker]
    return _supervisor.daemonize(supervisor, pidfile, log_path, MARKS)
