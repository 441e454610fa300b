# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The long-running node agent: loads its state, runs one tick per interval, and after each tick saves the state
and writes the metrics file; serves ``/metrics`` while it runs."""

from __future__ import annotations

import argparse
import os
import threading
import time

from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.events import EVENTS_FILE, EventLog
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.logs import LOGS_DIR, LogKeeper
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.loop import tick
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.metrics import (
    METRICS_FILE,
    render_metrics,
    serve_metrics,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.policy import Policy
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.state import (
    STATE_FILE,
    AgentState,
    load_state,
    save_state,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.xid import XidRecorder, XidWatch
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState, Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.factory import get_runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_atomic
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.xid import XID_FILE_NAME


def policy_of(args: argparse.Namespace) -> Policy:
    """The policy the command-line options set (cli.build_parser)."""
    return Policy(
        max_restarts=args.max_restarts,
        window_s=args.restart_window,
        backoff_base_s=args.backoff_base,
        backoff_max_s=args.backoff_max,
        health_failures=args.health_failures,
        start_grace_s=args.start_grace,
        stop_timeout=args.stop_timeout,
        max_failed_restarts=args.max_failed_restarts,
        stable_after_s=args.stable_after,
    )


class Agent:
    """The long-running agent: state file, event log, metrics file and endpoint, one tick per interval."""

    def __init__(self, args: argparse.Namespace, rt: Runtime | None = None) -> None:
        self.args = args
        self.state_dir = args.state_dir
        os.makedirs(self.state_dir, mode=0o750, exist_ok=True)
        self.state_path = os.path.join(self.state_dir, STATE_FILE)
        self.state = load_state(self.state_path)
        self.events = EventLog(os.path.join(self.state_dir, EVENTS_FILE), args.log_max_bytes, args.log_backups, True)
        self.policy = policy_of(args)
        self.names = [n for n in (args.names or "").split(",") if n] or None
        self.rt = rt
        self.stop_event = threading.Event()
        self.vllm_logs: LogKeeper | None = None
        if not args.no_vllm_logs:
            where = args.vllm_logs_dir or os.path.join(self.state_dir, LOGS_DIR)
            keep = (args.vllm_log_max_bytes, args.vllm_log_retention_days)
            self.vllm_logs = LogKeeper(where, *keep, follow=not args.once)

    def runtime(self) -> Runtime:
        if self.rt is None:
            self.rt = get_runtime(self.args.runtime, docker_host=self.args.docker_host or None)
        return self.rt

    def tick(self) -> None:
        try:
            rt = self.runtime()
        except GpufleetError as e:
            self.events({"event": "agent_error", "error": str(e)})
            self.state.tick_errors_total += 1
            self.state.ticks_total += 1
            self.state.last_tick_at = time.time()
        else:
            tick(
                rt,
                self.state,
                self.policy,
                self.events,
                names=self.names,
                lifecycle_dir=self.args.gpufleet_dir or None,
                observe=self.keep_logs if self.vllm_logs is not None else None,
            )
        save_state(self.state_path, self.state)
        write_atomic(os.path.join(self.state_dir, METRICS_FILE), render_metrics(self.state), 0o640, makedirs=False)

    def keep_logs(self, containers: list[ContainerState]) -> None:
        """The vLLM logs of this tick's containers (logs.LogKeeper); a failure is an event, never a tick error."""
        if self.vllm_logs is None or self.rt is None:
            return
        self.vllm_logs.sync(self.rt, containers)
        for error in self.vllm_logs.take_errors():
            self.events({"event": "agent_error", "error": failures.mask([f"vllm logs: {error}"])[0]})

    def serve_metrics(self) -> None:
        if self.args.port:
            serve_metrics(self.args.port, self.args.address, self._state, getattr(self.args, "web_config_file", ""))

    def _state(self) -> AgentState:
        return self.state

    def run(self) -> int:
        self.serve_metrics()
        parent = os.getppid()
        watch = None
        if not self.args.once:  # Xid errors come as NVML events only a waiting process sees (_agent/xid.py)
            record = XidRecorder(os.path.join(self.state_dir, XID_FILE_NAME), self.events)
            watch = XidWatch(record, self.events)
            watch.start()
        try:
            return self._loop(parent)
        finally:
            if watch is not None:
                watch.stop()
            if self.vllm_logs is not None:
                self.vllm_logs.close(0)

    def _loop(self, parent: int) -> int:
        while True:
            self.tick()
            if self.args.once:
                return 0
            deadline = time.monotonic() + self.args.interval
            while (left := deadline - time.monotonic()) > 0:
                if self.stop_event.wait(min(left, 1.0)):
                    return 0
                if self.args.worker and os.getppid() != parent:
                    return 0  # the supervisor is gone (killed): do not run on unsupervised
