# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the node agent remembers between ticks and runs: per deployment (restart history, counters, what was already
recorded) and its own tick counters, kept in ``<state_dir>/state.json`` so ``--once`` runs (cron, tests) keep their
budget and counters."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_atomic

STATE_FILE = "state.json"
STATE_VERSION = 1


@dataclass
class DeploymentState:
    """What the agent remembers about one deployment (keyed by deployment name) between ticks and runs."""

    container_id: str = ""
    container: str = ""
    restarts: list[float] = field(default_factory=list)  # times of the agent's restarts (the budget window)
    restarts_total: int = 0
    engine_restarts_total: int = 0
    restart_count_seen: int = 0  # the engine's RestartCount last seen
    failures_total: dict[str, int] = field(default_factory=dict)
    last_failure_class: str | None = None
    last_failure_at: float | None = None
    crash_seen: str = ""  # identity of the last exit that was recorded (no duplicate events)
    started_at: str | None = None  # the engine's StartedAt last seen
    running_since: float | None = None  # when the agent first saw the current start
    healthy_since_start: bool = False
    health_failures: int = 0
    up: bool = False
    healthy: bool = False
    status: str = ""
    serve_until: str | None = None
    expired: bool = False
    blocked: str | None = None  # why the agent does not restart it: a failure class or "budget"
    next_restart_at: float | None = None
    failures_in_row: int = 0  # failures since the server was last stable (policy.is_stable): the crash-loop count
    final: str | None = None  # the end state's reason (crash_loop, start_timeout, not_restartable): never restarted
    final_class: str | None = None
    owner: str | None = None
    paused: str | None = None  # asleep on purpose (the lifecycle record's reason: idle, warm_cache, manual)
    paused_at: float | None = None

    def record_failure(self, failure_class: str, now: float) -> None:
        self.failures_total[failure_class] = self.failures_total.get(failure_class, 0) + 1
        self.last_failure_class = failure_class
        self.last_failure_at = now


@dataclass
class AgentState:
    deployments: dict[str, DeploymentState] = field(default_factory=dict)
    ticks_total: int = 0
    tick_errors_total: int = 0
    last_tick_duration_s: float = 0.0
    last_tick_at: float = 0.0
    version: int = STATE_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AgentState:
        if not data or data.get("version") != STATE_VERSION:
            return cls()
        known = {f.name for f in fields(DeploymentState)}
        deps = {
            str(name): DeploymentState(**{k: v for k, v in (d or {}).items() if k in known})
            for name, d in (data.get("deployments") or {}).items()
        }
        return cls(
            deployments=deps,
            ticks_total=int(data.get("ticks_total") or 0),
            tick_errors_total=int(data.get("tick_errors_total") or 0),
            last_tick_duration_s=float(data.get("last_tick_duration_s") or 0.0),
            last_tick_at=float(data.get("last_tick_at") or 0.0),
        )


def load_state(path: str) -> AgentState:
    """The state saved at ``path``; a fresh one when the file is missing, unreadable or of another version."""
    try:
        with open(path, encoding="utf-8") as fh:
            return AgentState.from_dict(json.load(fh))
    except (OSError, ValueError, TypeError):
        return AgentState()


def save_state(path: str, state: AgentState) -> None:
    write_atomic(path, json.dumps(state.as_dict(), sort_keys=True, indent=1), 0o640, makedirs=False)
