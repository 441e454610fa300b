# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One pass of the node agent (``tick``) over the managed containers of the host, and the decisions for one
container (``handle``):

- **restarts**: a container that exited with a non-zero code, or whose ``/health`` failed ``health_failures``
  probes in a row (after its start-up grace), is restarted within a budget (``max_restarts`` per ``window_s``,
  exponential back-off between restarts). Its failure is classified from the log tail and recorded. A class that a
  restart cannot fix (``NO_RESTART``) is never restarted by the agent; one that the engine's own restart policy
  keeps restarting is stopped.
- **the crash-loop end state**: after more than ``max_failed_restarts`` failures in a row (crashes, the engine's
  restarts, failed health, a start that never answered within ``start_timeout``), or at once for a class a restart
  cannot fix, the container is stopped for good (never removed) and the cause is written to the deployment's
  lifecycle record (``_container/lifecycle.py``), where the next converge reads it.
- **idle pause and wake on demand** (``idle.py``): a replica with ``idle_pause_after`` and no request for that long
  is put to sleep; a request waiting at a sleeping one wakes it, the warm cache making room on its GPUs first.
- **serve-for expiry**: past the lifecycle record's deadline (older containers: ``gpufleet.serve-until``) the container
  is stopped (never removed) and stays stopped; ``expired`` is written to the record.

Events go to ``emit`` (``events.EventLog``), masked; the state is updated in place. Tested against an in-memory
engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent import idle
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.diagnosis import (
    Diagnosis,
    classify_tail,
    http_probe,
    secret_values,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.events import Emit
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.policy import (
    Limits,
    Policy,
    health_counts,
    is_clean_exit,
    is_expired,
    is_stable,
    limits_of,
    over_budget,
    restart_decision,
    start_timed_out,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.state import AgentState, DeploymentState
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState, Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._utc import stamp_or_none

Probe = Callable[[str, float], bool]
LIVE = ("paused", "restarting")  # not running, yet holding (or about to hold) the GPUs: stopped like a running one


@dataclass(frozen=True)
class Target:
    """One managed container as the agent sees it: its deployment (from the labels) and where it answers."""

    deployment: str
    container: str
    container_id: str
    host: str | None
    port: int | None
    serve_until: str | None
    config_hash: str | None = None
    owner: str | None = None

    @classmethod
    def of(cls, c: ContainerState) -> Target:
        lab = lb.parse(c.labels)
        return cls(
            lab["name"], c.name, c.id, lab["host"], lab["port"], lab["serve_until"], lab["config_hash"], lab["owner"]
        )

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """An event about this container: ``event``, ``deployment``, ``container``, short ``container_id``."""
        ids = {"deployment": self.deployment, "container": self.container, "container_id": self.container_id[:12]}
        return {"event": kind, **ids, **fields}


@dataclass(frozen=True)
class Cause:
    """Why the agent restarts a container: it ``exited`` (with ``exit_code``), failed its ``health`` probes
    (``consecutive_failures`` in a row) or never answered (``start_timeout``), and the failure class recorded."""

    reason: str
    failure_class: str
    exit_code: int | None = None
    consecutive_failures: int = 0

    def fields(self) -> dict[str, Any]:
        if self.reason == "exited":
            detail: dict[str, Any] = {"exit_code": self.exit_code}
        else:
            detail = {"consecutive_failures": self.consecutive_failures}
        return {"reason": self.reason, **detail, "failure_class": self.failure_class}


def _stop(rt: Runtime, c: ContainerState, policy: Policy) -> None:
    if c.status == "paused":
        rt.unpause(c.id)
    rt.stop(c.id, policy.stop_timeout)


def _restart(
    rt: Runtime, c: ContainerState, st: DeploymentState, now: float, policy: Policy, emit: Emit, t: Target, why: Cause
) -> None:
    """Restart within the budget and back-off; records the decision."""
    verdict, not_before = restart_decision(st.restarts, now, policy)
    st.restarts = [r for r in st.restarts if now - r < policy.window_s]
    if verdict == "backoff":
        st.next_restart_at = not_before
        return
    if verdict == "budget":
        st.next_restart_at = not_before
        if st.blocked != "budget":
            st.blocked = "budget"
            emit(
                t.event(
                    "restart_budget_exhausted",
                    **why.fields(),
                    restarts_in_window=len(st.restarts),
                    window_s=policy.window_s,
                    retry_after=not_before,
                )
            )
        return
    if c.running or c.status in LIVE:
        _stop(rt, c, policy)
    rt.start(c.id)
    st.restarts.append(now)
    st.restarts_total += 1
    st.blocked = None
    st.next_restart_at = None
    st.health_failures = 0
    st.healthy_since_start = False
    st.running_since = now
    st.up = True
    emit(t.event("restart", **why.fields(), restarts_in_window=len(st.restarts), restarts_total=st.restarts_total))


def _observe(c: ContainerState, st: DeploymentState, now: float) -> None:
    if c.id != st.container_id:  # a new container (redeploy): a fresh budget; the counters stay
        st.container_id = c.id
        st.restarts, st.crash_seen, st.blocked, st.next_restart_at, st.expired = [], "", None, None, False
        st.failures_in_row, st.final, st.final_class = 0, None, None
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


def _crash_id(c: ContainerState) -> str:
    return f"{c.id}|{c.finished_at}|{c.restart_count}|{c.exit_code}"


class Ctx:
    """What the decisions for one container share: the engine, the container, its state and lifecycle record, the
    policy and its limits, the event sink, the clock."""

    def __init__(
        self,
        rt: Runtime,
        c: ContainerState,
        st: DeploymentState,
        now: float,
        policy: Policy,
        emit: Emit,
        lifecycle_dir: str | None,
    ) -> None:
        self.rt, self.c, self.st, self.now, self.policy, self.emit = rt, c, st, now, policy, emit
        self.t = Target.of(c)
        self.lifecycle_dir = lifecycle_dir
        self.record: lc.Record = lc.load(lifecycle_dir, self.t.deployment) if lifecycle_dir else {}
        self.limits: Limits = limits_of(self.record, policy)
        self._secrets: list[str] | None = None

    def diagnose(self) -> Diagnosis:
        if self._secrets is None:
            self._secrets = secret_values(self.c)
        return classify_tail(self.rt, self.c, self._secrets, self.policy.event_tail_lines)

    def fail(self, event: str, n: int = 1, unknown_as: str | None = None, **fields: Any) -> tuple[Diagnosis, str]:
        """One observed failure (``n`` for the engine's own restarts): diagnose the log tail, count it in the row,
        record its class (``unknown_as`` replaces an unknown one) and emit ``event`` with ``fields``."""
        d = self.diagnose()
        cls = unknown_as if unknown_as and d.failure_class == "unknown" else d.failure_class
        self.st.failures_in_row += n
        self.st.record_failure(cls, self.now)
        self.emit(self.t.event(event, **fields, failure_class=cls, hint=d.hint, tail=d.tail))
        return d, cls

    def write(self, change: Callable[[lc.Record], None]) -> None:
        if self.lifecycle_dir:
            self.record = lc.update(self.lifecycle_dir, self.t.deployment, change)

    def serve_until(self) -> str | None:
        """The deadline: the lifecycle record's (the converge and extend.yml move it), else the old label."""
        if self.record.get("since") is not None:
            until = lc.deadline(self.record)
            return stamp_or_none(until)
        return self.t.serve_until


def _give_up(x: Ctx, reason: str, failure_class: str, hint: str | None, announced: bool = False) -> None:
    """The end state: stop the container (never remove it), never restart it, and write the cause to the lifecycle
    record for the next converge. A converge with a changed configuration or reset_failed starts it again.
    ``announced``: a class a restart cannot fix, already stopped and told (not_restarted, stopped_restart_loop)."""
    c, st, t = x.c, x.st, x.t
    live = not announced and (c.running or c.status in LIVE)
    if live:
        _stop(x.rt, c, x.policy)
    st.up, st.healthy, st.final, st.final_class = False, False, reason, failure_class
    st.next_restart_at = None
    if st.blocked not in x.policy.no_restart:
        st.blocked = reason
    failed = {
        "reason": reason,
        "failure_class": failure_class,
        "hint": hint,
        "at": x.now,
        "container_id": c.id,
        "config_hash": t.config_hash,
        "failures_in_row": st.failures_in_row,
        "max_failed_restarts": x.limits.max_failed_restarts,
    }
    x.write(lambda rec: rec.update(failed=failed))
    if announced:
        return
    x.emit(
        t.event(
            "gave_up",
            reason=reason,
            failure_class=failure_class,
            hint=hint,
            failures_in_row=st.failures_in_row,
            max_failed_restarts=x.limits.max_failed_restarts,
            stopped=live,
        )
    )


def handle(
    rt: Runtime,
    c: ContainerState,
    st: DeploymentState,
    now: float,
    policy: Policy,
    emit: Emit,
    probe: Probe = http_probe,
    lifecycle_dir: str | None = None,
) -> None:
    """The decisions for one managed container (see the module docstring)."""
    x = Ctx(rt, c, st, now, policy, emit, lifecycle_dir)
    t = x.t
    _observe(c, st, now)
    st.serve_until = x.serve_until()
    st.owner = t.owner

    # The end state: cleared by the converge (a changed configuration: a new container; or reset_failed).
    if st.final and lifecycle_dir and lc.failed_for(x.record, t.config_hash) is None:
        st.final, st.final_class, st.failures_in_row, st.blocked = None, None, 0, None
    if st.final:
        st.healthy = False
        return  # started again by hand: the user's call; stopped: stays stopped

    # Serve-for expiry: stop (never remove), and never restart it afterwards.
    if is_expired(st.serve_until, now):
        live = c.running or c.status in LIVE
        if live:
            _stop(rt, c, policy)
            st.up = False
            st.healthy = False
        if live or not st.expired:
            emit(t.event("expired", serve_until=st.serve_until, stopped=live))
        if not x.record.get("expired"):
            x.write(lambda rec: rec.update(expired={"at": now, "serve_until": st.serve_until}))
        st.expired = True
        return
    st.expired = False

    # The engine's own restart policy restarted it since the last tick: record why, and end a futile loop.
    if c.restart_count > st.restart_count_seen:
        n = c.restart_count - st.restart_count_seen
        st.restart_count_seen = c.restart_count
        st.engine_restarts_total += n
        d = x.fail("engine_restart", n=n, count=n)[0]
        if d.failure_class in policy.no_restart:
            rt.stop(c.id, policy.stop_timeout)
            st.up, st.healthy, st.blocked = False, False, d.failure_class
            st.crash_seen = _crash_id(c)
            emit(t.event("stopped_restart_loop", failure_class=d.failure_class, hint=d.hint))
            _give_up(x, "not_restartable", d.failure_class, d.hint, announced=True)
            return
        if over_budget(st.failures_in_row, x.limits):
            st.crash_seen = _crash_id(c)
            _give_up(x, "crash_loop", d.failure_class, d.hint)
            return

    if c.status in ("exited", "dead"):
        _handle_exited(x)
        return

    if c.status != "running" or not c.running:
        st.healthy = False  # paused (on purpose), restarting (the engine's policy is at work), created
        return
    _handle_running(x, probe)


def _handle_exited(x: Ctx) -> None:
    rt, c, st, now, policy, emit, t = x.rt, x.c, x.st, x.now, x.policy, x.emit, x.t
    st.healthy = False
    st.health_failures = 0
    if is_clean_exit(c):
        return  # stopped on purpose: left alone
    crash = _crash_id(c)
    if crash != st.crash_seen:
        st.crash_seen = crash
        d = x.fail("failure", reason="exited", exit_code=c.exit_code)[0]
        if d.failure_class in policy.no_restart:
            st.blocked = d.failure_class
            emit(t.event("not_restarted", failure_class=d.failure_class, hint=d.hint))
            _give_up(x, "not_restartable", d.failure_class, d.hint, announced=True)
            return
        if st.blocked in policy.no_restart:
            st.blocked = None  # started again by hand and failed differently: restartable now
        if over_budget(st.failures_in_row, x.limits):
            _give_up(x, "crash_loop", d.failure_class, d.hint)
            return
    if st.blocked in policy.no_restart:
        return
    why = Cause("exited", st.last_failure_class or "unknown", exit_code=c.exit_code)
    _restart(rt, c, st, now, policy, emit, t, why)


def _handle_running(x: Ctx, probe: Probe) -> None:
    rt, c, st, now, policy, emit, t = x.rt, x.c, x.st, x.now, x.policy, x.emit, x.t
    if t.port is None:
        st.healthy = False
        return
    ok = probe(rd.base_url(t.host, t.port), policy.health_timeout_s)
    st.healthy = ok
    if ok:
        st.healthy_since_start = True
        st.health_failures = 0
        if st.blocked == "budget":
            st.blocked = None
        if is_stable(st, now, policy):
            st.failures_in_row = 0
        idle.tend(x)  # idle pause, wake on demand (_agent/idle.py)
        return
    if start_timed_out(st, now, x.limits.start_timeout_s):
        waited = round(now - (st.running_since or now), 1)
        d, cls = x.fail("failure", unknown_as="start_timeout", reason="start_timeout", waited_s=waited)
        if cls in policy.no_restart or over_budget(st.failures_in_row, x.limits):
            _give_up(x, "start_timeout", cls, d.hint)
            return
        _restart(rt, c, st, now, policy, emit, t, Cause("start_timeout", cls))
        return
    if not health_counts(st):
        return
    st.health_failures += 1
    if st.health_failures < policy.health_failures:
        return
    if st.health_failures == policy.health_failures:
        d = x.fail("failure", reason="health", consecutive_failures=st.health_failures)[0]
        if over_budget(st.failures_in_row, x.limits) and d.failure_class not in policy.no_restart:
            _give_up(x, "crash_loop", d.failure_class, d.hint)
            return
    cls = st.last_failure_class or "unknown"
    if cls in policy.no_restart:
        if st.blocked != cls:
            st.blocked = cls
            emit(t.event("not_restarted", failure_class=cls))
        return
    why = Cause("health", cls, consecutive_failures=st.health_failures)
    _restart(rt, c, st, now, policy, emit, t, why)


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
    lifecycle_dir: str | None = None,
    observe: Callable[[list[ContainerState]], None] | None = None,
) -> AgentState:
    """One pass over the host's managed containers; ``state`` is updated in place (and returned). ``observe``: given
    the containers after the pass (the runner keeps their vLLM logs, logs.LogKeeper).

    ``lifecycle_dir``: the host's gpufleet state directory holding the deployments' lifecycle records (None: the
    agent's defaults and the serve-until label only). An error on one container is recorded (event ``agent_error``,
    tick_errors_total) and the others still get their
    pass; an engine that cannot be listed makes the whole tick an error."""
    t0 = time.monotonic()
    now = time.time() if now is None else now
    errors = 0
    try:
        containers: list[ContainerState] | None = managed_containers(rt, names)
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
                handle(rt, c, st, now, policy, emit, probe, lifecycle_dir)
            except Exception as e:
                errors += 1
                emit({"event": "agent_error", "deployment": name, "error": failures.mask([str(e)])[0]})
        for gone in set(state.deployments) - seen:
            del state.deployments[gone]
        if observe is not None:
            observe(containers)
    state.ticks_total += 1
    state.tick_errors_total += errors
    state.last_tick_at = now
    state.last_tick_duration_s = time.monotonic() - t0
    return state
