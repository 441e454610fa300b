# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node agent: a watchdog over the gpufleet-managed vLLM containers of one host, outside Ansible.

It runs on the host from a copy of this collection's module_utils (the role ``gpufleet.vllm.node_agent`` ships
exactly the files ``shipped_files()`` lists: this module and what it imports), so it shares the one label schema
(``labels``), the one failure classifier and secret masking (``failures``), the engine adapters (``runtime*``) and
the health probe (``readiness``) with the modules:

    PYTHONPATH=/opt/gpufleet/agent python3 -m ansible_collections.gpufleet.vllm.plugins.module_utils._agent.agent --once

One pass (``tick``) over the managed containers of the host:

- **restarts**: a container that exited with a non-zero code, or whose ``/health`` failed ``health_failures``
  probes in a row (after its start-up grace), is restarted within a budget (``max_restarts`` per ``window_s``,
  exponential back-off between restarts). Its failure is classified from the log tail and recorded. A class that a
  restart cannot fix (``NO_RESTART``: bad_args, model_not_found, hf_auth, no_gpu, kv_cache_too_small) is never
  restarted by the agent; one that the engine's own restart policy keeps restarting is stopped.
- **serve-for expiry**: past ``gpufleet.serve-until`` the container is stopped (never removed) and stays stopped.
- **events**: one JSON line per event (restart, failure with its class and masked log tail, expiry, ...) appended to
  ``<state_dir>/events.jsonl`` (rotated by size). Secret values (the container's secret env: api key, HF token,
  secret_env) and anything token-shaped are masked before anything is written.
- **metrics**: Prometheus text (prometheus-client) on ``--port`` and in ``<state_dir>/metrics.prom`` (for
  node_exporter's textfile collector): per deployment up/health, restarts, failures and the last failure class,
  seconds until serve-until; the agent's own tick duration, ticks and tick errors.

State (restart history, counters, what was recorded) lives in ``<state_dir>/state.json`` so ``--once`` runs (cron,
tests) keep their budget and counters. The decisions are plain functions (``restart_decision``, ``backoff_s``,
``seconds_until``, ``tick``) tested against an in-memory engine.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import (
    ContainerState,
    Runtime,
    parse_time,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.factory import get_runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_atomic

MODULE = "ansible_collections.gpufleet.vllm.plugins.module_utils._agent.agent"
PACKAGE = "ansible_collections.gpufleet.vllm.plugins.module_utils"
DEFAULT_STATE_DIR = "/var/lib/gpufleet/agent"
DEFAULT_PORT = 9840
EVENTS_FILE = "events.jsonl"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.prom"
STATE_VERSION = 1

# Failure classes a restart cannot fix: the same arguments, model, credentials and GPUs fail the same way again.
NO_RESTART = frozenset({"bad_args", "model_not_found", "hf_auth", "no_gpu", "kv_cache_too_small"})
# Exit codes of a server stopped on purpose (vLLM exits 0 on SIGTERM; 143 = killed by SIGTERM): never restarted.
CLEAN_EXIT_CODES = frozenset({0, 143})


@dataclass(frozen=True)
class Policy:
    """What the agent may do (the command-line options; the role's gpufleet_agent_* variables)."""

    max_restarts: int = 5  # restarts of one container allowed within window_s
    window_s: float = 3600.0
    backoff_base_s: float = 10.0  # wait before the n-th restart of the window: base * 2**(n-1), at most backoff_max_s
    backoff_max_s: float = 600.0
    health_failures: int = 3  # consecutive failed /health probes of a running server before it is restarted
    start_grace_s: float = 1800.0  # a server that never answered /health since its start gets this long to load
    health_timeout_s: float = 2.0
    stop_timeout: int = 30
    event_tail_lines: int = 40
    no_restart: frozenset[str] = NO_RESTART


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


# ------------------------------------------------------------------------------------------------ pure decisions
def seconds_until(serve_until: str | None, now: float) -> float | None:
    """Seconds left until ``gpufleet.serve-until`` (negative once past); None when there is no (valid) expiry."""
    until = parse_time(serve_until)
    return None if until is None else until - now


def is_expired(serve_until: str | None, now: float) -> bool:
    left = seconds_until(serve_until, now)
    return left is not None and left <= 0


def backoff_s(restarts_in_window: int, policy: Policy) -> float:
    """The wait after the ``restarts_in_window``-th restart of the window before the next one (0 before the first)."""
    if restarts_in_window <= 0:
        return 0.0
    return min(policy.backoff_base_s * 2 ** (restarts_in_window - 1), policy.backoff_max_s)


def restart_decision(restarts: Iterable[float], now: float, policy: Policy) -> tuple[str, float | None]:
    """Whether a failed container may be restarted now: ``("restart", None)``, ``("backoff", not_before)`` or
    ``("budget", not_before)`` (``max_restarts`` already used in the window; not_before = when the oldest leaves)."""
    recent = sorted(t for t in restarts if now - t < policy.window_s)
    if len(recent) >= policy.max_restarts:
        return "budget", recent[0] + policy.window_s
    if recent:
        not_before = recent[-1] + backoff_s(len(recent), policy)
        if now < not_before:
            return "backoff", not_before
    return "restart", None


def health_counts(st: DeploymentState, now: float, policy: Policy) -> bool:
    """Whether a failed /health probe counts: once the server answered since its start, or after the grace."""
    if st.healthy_since_start:
        return True
    return st.running_since is not None and now - st.running_since >= policy.start_grace_s


def is_clean_exit(c: ContainerState) -> bool:
    return c.exit_code in CLEAN_EXIT_CODES and not c.oom_killed


# ------------------------------------------------------------------------------------------------ engine helpers
def secret_values(c: ContainerState) -> list[str]:
    """The values of the container's secret env keys (the spec label's ``secret_env_keys``, plus VLLM_API_KEY and
    HF_TOKEN): what must never be written."""
    spec = lb.parse(c.labels).get("spec") or {}
    keys = set(spec.get("secret_env_keys") or []) | {"VLLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}
    return [v for k, v in c.env.items() if k in keys and v]  # c.env: the adapters read it from the engine's inspect


def classify_tail(rt: Runtime, c: ContainerState, secrets: list[str], policy: Policy) -> tuple[str, str, list[str]]:
    """(failure class, hint, masked tail) of a container's log. The tail is masked before it is classified, so the
    hint (which may quote a log line) never carries a secret either."""
    masked = failures.mask(rt.logs(c.id, failures.TAIL_LINES), secrets)
    if c.oom_killed:
        cls, hint = "unknown", "unknown: the container was OOM-killed (host memory); lower its memory use"
    else:
        cls, hint = failures.classify(masked, exit_code=c.exit_code)
    return cls, failures.mask([hint], secrets)[0], masked[-policy.event_tail_lines :]


def http_probe(base: str, timeout: float) -> bool:
    """``/health`` answers 200 (readiness.http: the collection's one HTTP client)."""
    return rd.http(base + "/health", timeout=timeout)[0] == 200


# ------------------------------------------------------------------------------------------------ one pass
Emit = Callable[[dict[str, Any]], None]
Probe = Callable[[str, float], bool]


def _record_failure(st: DeploymentState, cls: str, now: float) -> None:
    st.failures_total[cls] = st.failures_total.get(cls, 0) + 1
    st.last_failure_class = cls
    st.last_failure_at = now


def _restart(
    rt: Runtime, c: ContainerState, st: DeploymentState, now: float, policy: Policy, emit: Emit, why: dict[str, Any]
) -> None:
    """Restart within the budget and back-off; records the decision."""
    verdict, not_before = restart_decision(st.restarts, now, policy)
    st.restarts = [t for t in st.restarts if now - t < policy.window_s]
    if verdict == "backoff":
        st.next_restart_at = not_before
        return
    if verdict == "budget":
        st.next_restart_at = not_before
        if st.blocked != "budget":
            st.blocked = "budget"
            emit(
                {
                    "event": "restart_budget_exhausted",
                    **why,
                    "restarts_in_window": len(st.restarts),
                    "window_s": policy.window_s,
                    "retry_after": not_before,
                }
            )
        return
    if c.running or c.status in ("paused", "restarting"):
        if c.status == "paused":
            rt.unpause(c.id)
        rt.stop(c.id, policy.stop_timeout)
    rt.start(c.id)
    st.restarts.append(now)
    st.restarts_total += 1
    st.blocked = None
    st.next_restart_at = None
    st.health_failures = 0
    st.healthy_since_start = False
    st.running_since = now
    st.up = True
    emit({"event": "restart", **why, "restarts_in_window": len(st.restarts), "restarts_total": st.restarts_total})


def _observe(rt: Runtime, c: ContainerState, st: DeploymentState, now: float) -> None:
    if c.id != st.container_id:  # a new container (redeploy): a fresh budget; the counters stay
        st.container_id = c.id
        st.restarts, st.crash_seen, st.blocked, st.next_restart_at, st.expired = [], "", None, None, False
        st.restart_count_seen = c.restart_count
        st.healthy_since_start, st.health_failures, st.started_at, st.running_since = False, 0, None, None
    st.container = c.name
    st.status = c.status
    st.up = c.running
    if c.started_at != st.started_at:
        st.started_at = c.started_at
        st.running_since = now if c.running else None
        st.healthy_since_start = False
        st.health_failures = 0
    elif c.running and st.running_since is None:
        st.running_since = now


def handle(
    rt: Runtime,
    c: ContainerState,
    st: DeploymentState,
    now: float,
    policy: Policy,
    emit: Emit,
    probe: Probe = http_probe,
) -> None:
    """The decisions for one managed container (see the module docstring)."""
    lab = lb.parse(c.labels)
    name = lab["name"]
    _observe(rt, c, st, now)
    st.serve_until = lab["serve_until"]
    base_event = {"deployment": name, "container": c.name, "container_id": c.id[:12]}
    secrets: list[str] | None = None

    def secret() -> list[str]:
        nonlocal secrets
        if secrets is None:
            secrets = secret_values(c)
        return secrets

    # Serve-for expiry: stop (never remove), and never restart it afterwards.
    if is_expired(st.serve_until, now):
        live = c.running or c.status in ("paused", "restarting")
        if live:
            if c.status == "paused":
                rt.unpause(c.id)
            rt.stop(c.id, policy.stop_timeout)
            st.up = False
            st.healthy = False
        if live or not st.expired:
            emit({"event": "expired", **base_event, "serve_until": st.serve_until, "stopped": live})
        st.expired = True
        return

    # The engine's own restart policy restarted it since the last tick: record why, and end a futile loop.
    if c.restart_count > st.restart_count_seen:
        cls, hint, tail = classify_tail(rt, c, secret(), policy)
        n = c.restart_count - st.restart_count_seen
        st.restart_count_seen = c.restart_count
        st.engine_restarts_total += n
        _record_failure(st, cls, now)
        emit({"event": "engine_restart", **base_event, "count": n, "failure_class": cls, "hint": hint, "tail": tail})
        if cls in policy.no_restart:
            rt.stop(c.id, policy.stop_timeout)
            st.up, st.healthy, st.blocked = False, False, cls
            st.crash_seen = _crash_id(c)
            emit({"event": "stopped_restart_loop", **base_event, "failure_class": cls, "hint": hint})
            return

    if c.status in ("exited", "dead"):
        st.healthy = False
        st.health_failures = 0
        if is_clean_exit(c):
            return  # stopped on purpose: left alone
        crash = _crash_id(c)
        if crash != st.crash_seen:
            cls, hint, tail = classify_tail(rt, c, secret(), policy)
            st.crash_seen = crash
            _record_failure(st, cls, now)
            emit(
                {
                    "event": "failure",
                    **base_event,
                    "reason": "exited",
                    "exit_code": c.exit_code,
                    "failure_class": cls,
                    "hint": hint,
                    "tail": tail,
                }
            )
            if cls in policy.no_restart:
                st.blocked = cls
                emit({"event": "not_restarted", **base_event, "failure_class": cls, "hint": hint})
            elif st.blocked in policy.no_restart:
                st.blocked = None  # started again by hand and failed differently: restartable now
        cls = st.last_failure_class or "unknown"
        if st.blocked in policy.no_restart:
            return
        why = {**base_event, "reason": "exited", "exit_code": c.exit_code, "failure_class": cls}
        _restart(rt, c, st, now, policy, emit, why)
        return

    if c.status != "running" or not c.running:
        st.healthy = False  # paused (on purpose), restarting (the engine's policy is at work), created
        return

    host = lab["host"]
    port = lab["port"]
    if port is None:
        st.healthy = False
        return
    ok = probe(rd.base_url(host, port), policy.health_timeout_s)
    st.healthy = ok
    if ok:
        st.healthy_since_start = True
        st.health_failures = 0
        if st.blocked == "budget":
            st.blocked = None
        return
    if not health_counts(st, now, policy):
        return
    st.health_failures += 1
    if st.health_failures < policy.health_failures:
        return
    if st.health_failures == policy.health_failures:
        cls, hint, tail = classify_tail(rt, c, secret(), policy)
        _record_failure(st, cls, now)
        emit(
            {
                "event": "failure",
                **base_event,
                "reason": "health",
                "consecutive_failures": st.health_failures,
                "failure_class": cls,
                "hint": hint,
                "tail": tail,
            }
        )
    cls = st.last_failure_class or "unknown"
    if cls in policy.no_restart:
        if st.blocked != cls:
            st.blocked = cls
            emit({"event": "not_restarted", **base_event, "failure_class": cls})
        return
    why = {**base_event, "reason": "health", "consecutive_failures": st.health_failures, "failure_class": cls}
    _restart(rt, c, st, now, policy, emit, why)


def _crash_id(c: ContainerState) -> str:
    return f"{c.id}|{c.finished_at}|{c.restart_count}|{c.exit_code}"


def managed_containers(rt: Runtime, names: list[str] | None = None) -> list[ContainerState]:
    """The host's managed containers the agent watches: labelled by the one label schema, not a rollout's kept-aside
    ``-previous`` container, and chosen by ``names`` (deployment or replica names, labels.selected)."""
    out = []
    for c in rt.list_managed():
        lab = lb.parse(c.labels)
        if not lb.is_managed(c.labels) or c.name.endswith(lb.PREVIOUS_SUFFIX) or c.status == "removing":
            continue
        if lb.selected(lab["name"], names):
            out.append(c)
    return out


def tick(
    rt: Runtime,
    state: AgentState,
    policy: Policy,
    emit: Emit,
    *,
    now: float | None = None,
    probe: Probe = http_probe,
    names: list[str] | None = None,
) -> AgentState:
    """One pass over the host's managed containers; ``state`` is updated in place (and returned).

    An error on one container is recorded (event ``agent_error``, tick_errors_total) and the others still get their
    pass; an engine that cannot be listed makes the whole tick an error."""
    t0 = time.monotonic()
    now = time.time() if now is None else now
    errors = 0
    try:
        containers = managed_containers(rt, names)
    except Exception as e:  # the engine is down: the next tick tries again
        containers = None
        errors += 1
        emit({"event": "agent_error", "error": failures.mask([f"cannot list containers: {e}"])[0]})
    if containers is not None:
        seen = set()
        for c in sorted(containers, key=lambda c: not c.running):
            name = lb.parse(c.labels)["name"]
            if name in seen:  # two containers claim one deployment: the running one counts
                continue
            seen.add(name)
            st = state.deployments.setdefault(name, DeploymentState())
            try:
                handle(rt, c, st, now, policy, emit, probe)
            except Exception as e:
                errors += 1
                emit({"event": "agent_error", "deployment": name, "error": failures.mask([str(e)])[0]})
        for gone in set(state.deployments) - seen:
            del state.deployments[gone]
    state.ticks_total += 1
    state.tick_errors_total += errors
    state.last_tick_at = now
    state.last_tick_duration_s = time.monotonic() - t0
    return state


# ------------------------------------------------------------------------------------------------ files
class EventLog:
    """JSON lines appended to ``path``; rotated to ``path.1`` ... ``path.<backups>`` past ``max_bytes``."""

    def __init__(self, path: str, max_bytes: int = 10 * 1024 * 1024, backups: int = 3, echo: bool = False) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.echo = echo

    def _rotate(self) -> None:
        for i in range(self.backups - 1, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i + 1}")
        if self.backups > 0:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)

    def __call__(self, event: dict[str, Any]) -> None:
        record = {"ts": _iso(time.time()), "host": socket.gethostname(), **event}
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        try:
            size = os.path.getsize(self.path)
        except OSError:
            size = 0
        if size and size + len(line) > self.max_bytes:
            self._rotate()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(line)
        if self.echo:
            short = {k: v for k, v in record.items() if k not in ("tail", "ts", "host")}
            _out(json.dumps(short, sort_keys=True, default=str))


def _out(text: str, stream: Any = None) -> None:
    """One line to stdout (or ``stream``), flushed: the journal or agent.log (this runs as a program, not a module)."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_state(path: str) -> AgentState:
    try:
        with open(path, encoding="utf-8") as fh:
            return AgentState.from_dict(json.load(fh))
    except (OSError, ValueError, TypeError):
        return AgentState()


def save_state(path: str, state: AgentState) -> None:
    write_atomic(path, json.dumps(state.as_dict(), sort_keys=True, indent=1), 0o640, makedirs=False)


# ------------------------------------------------------------------------------------------------ metrics
class StateCollector:
    """A prometheus-client collector over the agent's state (read at each scrape)."""

    def __init__(self, get_state: Callable[[], AgentState], now: Callable[[], float] = time.time) -> None:
        self.get_state = get_state
        self.now = now

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = self.get_state()
        now = self.now()
        up = GaugeMetricFamily("gpufleet_agent_deployment_up", "1 if the container runs", labels=["deployment"])
        healthy = GaugeMetricFamily(
            "gpufleet_agent_deployment_healthy", "1 if /health answered 200 at the last tick", labels=["deployment"]
        )
        restarts = CounterMetricFamily(
            "gpufleet_agent_restarts", "Restarts done by the node agent", labels=["deployment"]
        )
        engine_restarts = CounterMetricFamily(
            "gpufleet_agent_engine_restarts", "Restarts by the engine's restart policy seen", labels=["deployment"]
        )
        fails = CounterMetricFamily(
            "gpufleet_agent_failures", "Failures seen, by class", labels=["deployment", "failure_class"]
        )
        last = GaugeMetricFamily(
            "gpufleet_agent_last_failure_timestamp_seconds",
            "When the last failure was seen; failure_class is its class",
            labels=["deployment", "failure_class"],
        )
        blocked = GaugeMetricFamily(
            "gpufleet_agent_restart_blocked",
            "1 while the agent will not restart the deployment (a class a restart cannot fix, or the budget)",
            labels=["deployment", "reason"],
        )
        until = GaugeMetricFamily(
            "gpufleet_agent_serve_until_seconds",
            "Seconds until gpufleet.serve-until (negative once past)",
            labels=["deployment"],
        )
        expired = GaugeMetricFamily(
            "gpufleet_agent_expired", "1 once stopped for serve-for expiry", labels=["deployment"]
        )
        for name in sorted(state.deployments):
            st = state.deployments[name]
            up.add_metric([name], 1.0 if st.up else 0.0)
            healthy.add_metric([name], 1.0 if st.healthy else 0.0)
            restarts.add_metric([name], float(st.restarts_total))
            engine_restarts.add_metric([name], float(st.engine_restarts_total))
            for cls in sorted(st.failures_total):
                fails.add_metric([name, cls], float(st.failures_total[cls]))
            if st.last_failure_class:
                last.add_metric([name, st.last_failure_class], float(st.last_failure_at or 0.0))
            if st.blocked:
                blocked.add_metric([name, st.blocked], 1.0)
            left = seconds_until(st.serve_until, now)
            if left is not None:
                until.add_metric([name], round(left, 3))
            expired.add_metric([name], 1.0 if st.expired else 0.0)
        yield from (up, healthy, restarts, engine_restarts, fails, last, blocked, until, expired)
        yield GaugeMetricFamily(
            "gpufleet_agent_tick_duration_seconds", "Duration of the last tick", value=state.last_tick_duration_s
        )
        yield GaugeMetricFamily(
            "gpufleet_agent_last_tick_timestamp_seconds", "When the last tick ran", value=state.last_tick_at
        )
        yield CounterMetricFamily("gpufleet_agent_ticks", "Ticks run", value=float(state.ticks_total))
        yield CounterMetricFamily(
            "gpufleet_agent_tick_errors",
            "Errors during ticks (engine unreachable, ...)",
            value=float(state.tick_errors_total),
        )


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as e:
        raise GpufleetError(
            f"the node agent needs prometheus-client on this host (pip install prometheus-client): {e}"
        ) from e
    return prometheus_client


def registry_for(get_state: Callable[[], AgentState], now: Callable[[], float] = time.time) -> Any:
    prometheus_client = _prometheus()
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(get_state, now))
    return registry


def render_metrics(state: AgentState, now: float | None = None) -> str:
    """The Prometheus text exposition of ``state``."""
    registry = registry_for(lambda: state, (lambda: now) if now is not None else time.time)
    return _prometheus().generate_latest(registry).decode()


# ------------------------------------------------------------------------------------------------ shipped files
def shipped_files(directory: str | None = None, start: str = "_agent.agent") -> list[str]:
    """The module_utils files the agent needs on a host: this module, every module_utils module it imports,
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


# ------------------------------------------------------------------------------------------------ the process
class Agent:
    """The long-running agent: state file, event log, metrics file and endpoint, one tick per interval."""

    def __init__(self, args: argparse.Namespace, rt: Runtime | None = None) -> None:
        self.args = args
        self.state_dir = args.state_dir
        os.makedirs(self.state_dir, mode=0o750, exist_ok=True)
        self.state_path = os.path.join(self.state_dir, STATE_FILE)
        self.state = load_state(self.state_path)
        self.events = EventLog(os.path.join(self.state_dir, EVENTS_FILE), args.log_max_bytes, args.log_backups, True)
        self.policy = Policy(
            max_restarts=args.max_restarts,
            window_s=args.restart_window,
            backoff_base_s=args.backoff_base,
            backoff_max_s=args.backoff_max,
            health_failures=args.health_failures,
            start_grace_s=args.start_grace,
            stop_timeout=args.stop_timeout,
        )
        self.names = [n for n in (args.names or "").split(",") if n] or None
        self.rt = rt
        self.stop_event = threading.Event()

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
            tick(rt, self.state, self.policy, self.events, names=self.names)
        save_state(self.state_path, self.state)
        write_atomic(os.path.join(self.state_dir, METRICS_FILE), render_metrics(self.state), 0o640, makedirs=False)

    def serve_metrics(self) -> None:
        if self.args.port:
            _prometheus().start_http_server(self.args.port, addr=self.args.address, registry=registry_for(self._state))

    def _state(self) -> AgentState:
        return self.state

    def run(self) -> int:
        self.serve_metrics()
        parent = os.getppid()
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufleet-node-agent",
        description="Watchdog of the gpufleet-managed vLLM containers of this host (restarts, serve-for expiry, "
        "events, Prometheus metrics). Arguments may come from a file: @FILE, one per line.",
        fromfile_prefix_chars="@",
    )
    p.add_argument("--once", action="store_true", help="one tick, then exit")
    p.add_argument("--interval", type=float, default=15.0, help="seconds between ticks (default 15)")
    p.add_argument("--runtime", choices=("docker", "podman"), default="docker")
    p.add_argument("--docker-host", default="", help="docker engine address (default DOCKER_HOST or the socket)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"metrics port, 0 = none (default {DEFAULT_PORT})")
    p.add_argument("--address", default="0.0.0.0", help="metrics listen address (default 0.0.0.0)")
    p.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, help=f"state, events, metrics (default {DEFAULT_STATE_DIR})"
    )
    p.add_argument("--names", default="", help="comma-separated deployment/replica names to watch (default: all)")
    p.add_argument("--max-restarts", type=int, default=Policy.max_restarts)
    p.add_argument("--restart-window", type=float, default=Policy.window_s, help="seconds")
    p.add_argument("--backoff-base", type=float, default=Policy.backoff_base_s, help="seconds")
    p.add_argument("--backoff-max", type=float, default=Policy.backoff_max_s, help="seconds")
    p.add_argument("--health-failures", type=int, default=Policy.health_failures)
    p.add_argument("--start-grace", type=float, default=Policy.start_grace_s, help="seconds")
    p.add_argument("--stop-timeout", type=int, default=Policy.stop_timeout, help="seconds")
    p.add_argument("--log-max-bytes", type=int, default=10 * 1024 * 1024, help="rotate events.jsonl past this size")
    p.add_argument("--log-backups", type=int, default=3)
    p.add_argument("--pidfile", default="", help="with --daemonize/--stop/--restart: the supervisor's pid file")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--daemonize", action="store_true", help="start a supervised background agent (idempotent)")
    mode.add_argument("--stop", action="store_true", help="stop the background agent of --pidfile")
    mode.add_argument("--restart", action="store_true", help="stop, then start the background agent")
    mode.add_argument("--list-files", action="store_true", help="print the module_utils files the agent needs (JSON)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


# ------------------------------------------------------------------------------------------------ background mode
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


def _supervise(worker: list[str], pidfile: str) -> None:
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
            os.execv(sys.executable, [sys.executable, "-m", MODULE, "--supervise-internal", pidfile, *worker])
        except BaseException:  # nothing can be reported from here but the exit code
            os._exit(1)
    os.close(w)
    os.waitpid(child, 0)
    with os.fdopen(r, "rb") as fh:
        got = fh.read().decode() or "0"
    return True, int(got)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--supervise-internal"]:
        _supervise(argv[2:], argv[1])
        return 0
    args = build_parser().parse_args(argv)
    if args.list_files:
        _out(json.dumps(shipped_files()))
        return 0
    if (args.daemonize or args.stop or args.restart) and not args.worker:
        if not args.pidfile:
            _out("--daemonize, --stop and --restart need --pidfile", sys.stderr)
            return 2
        stopped = stop_background(args.pidfile) if (args.stop or args.restart) else False
        if args.stop:
            _out("stopped" if stopped else "not running")
            return 0
        os.makedirs(args.state_dir, mode=0o750, exist_ok=True)
        rest = [a for a in argv if a not in ("--daemonize", "--restart")]
        started, pid = start_background(rest, args.pidfile, os.path.join(args.state_dir, "agent.log"))
        _out(f"{'started' if started else 'running'} {pid}")
        return 0
    try:
        agent = Agent(args)
    except GpufleetError as e:
        _out(f"gpufleet node agent: {e}", sys.stderr)
        return 1

    def on_term(_signum: int, _frame: Any) -> None:
        agent.stop_event.set()

    signal.signal(signal.SIGTERM, on_term)
    return agent.run()


if __name__ == "__main__":
    raise SystemExit(main())
