# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Idle pause and wake on demand, for the replicas with an ``idle_pause_after`` policy (their lifecycle record,
``_container/lifecycle.py``):

- **activity** comes from vLLM's own request counters in its ``/metrics`` (read with prometheus-client's parser):
  ``vllm:request_success_total`` (summed over its labels), ``vllm:num_requests_running`` and
  ``vllm:num_requests_waiting``. A change of the first, or any request running or waiting, is activity; the time of
  the last one is ``last_active`` in the lifecycle record (the warm cache's least-recently-used order reads it);
- **idle pause**: no activity for ``idle_pause_after`` seconds, and not pinned → ``POST /sleep?level=1`` (weights to
  CPU RAM, GPU memory freed; the container, its port and its place in the gateway stay); the record says ``paused``
  (reason ``idle``); serve_for keeps counting;
- **wake on demand**: a request sent to a sleeping vLLM (0.16 and later) waits in its paused scheduler's queue
  (``vllm:num_requests_waiting`` > 0) until the engine wakes. The agent sees it, makes room on the replica's GPUs
  (the warm cache, ``_container/warm.py``: the least recently used unpinned replicas there go to sleep), calls
  ``/wake_up`` and the waiting request is served. The request waits up to one tick plus the wake-up time.

The decisions are pure functions of a driven clock (unit-tested); ``tend`` is the one action, called by the loop for a
running replica that answered ``/health``."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import warm
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import metrics

SERVED = metrics.REQUEST_SUCCESS
RUNNING = metrics.RUNNING
WAITING = metrics.WAITING


class Activity(NamedTuple):
    """What vLLM's ``/metrics`` says about requests: served so far (all finish reasons), running, waiting."""

    served: float
    running: float
    waiting: float


def read_activity(text: str) -> Activity | None:
    """The request counters of a vLLM ``/metrics`` page; None when it has no ``vllm:request_success_total``."""
    sums = metrics.sums(text, (SERVED, RUNNING, WAITING))
    if SERVED not in sums:
        return None
    return Activity(sums[SERVED], sums.get(RUNNING, 0.0), sums.get(WAITING, 0.0))


def active(act: Activity, served_seen: float | None) -> bool:
    """Activity since the last look: requests finished since (or the server restarted: the counter went back), or
    requests running or waiting now."""
    return served_seen is None or act.served != served_seen or act.running > 0 or act.waiting > 0


def idle_due(last_active: float | None, idle_pause_after_s: float | None, now: float) -> bool:
    """No activity for ``idle_pause_after_s`` seconds (never without a policy or before activity was first seen)."""
    return idle_pause_after_s is not None and last_active is not None and now - last_active >= idle_pause_after_s


def wake_due(act: Activity) -> bool:
    """A sleeping vLLM holds requests in its waiting queue: someone wants it."""
    return act.waiting > 0


class Replica(Protocol):
    """What ``tend`` needs of the loop's context (``loop.Ctx``)."""

    rt: Any
    c: Any
    now: float
    emit: Any
    t: Any
    st: Any
    record: lc.Record
    lifecycle_dir: str | None

    def write(self, change: Any) -> None: ...


def tend(x: Replica) -> None:
    """Idle pause / wake on demand for one running replica that answered /health (see the module docstring); the
    agent's state then says whether it sleeps on purpose (the metric gpufleet_agent_deployment_paused_seconds)."""
    try:
        _tend(x)
    finally:
        asleep = lc.paused(x.record) or {}
        x.st.paused, x.st.paused_at = asleep.get("reason"), asleep.get("at")


def _tend(x: Replica) -> None:
    rec, t = x.record, x.t
    if not x.lifecycle_dir or t.port is None or (rec.get("idle_pause_after_s") is None and not lc.paused(rec)):
        return
    base = rd.base_url(t.host, t.port)
    status, body = rd.http(base + "/metrics", timeout=2.0)
    act = read_activity(body.decode("utf-8", "replace")) if status == 200 else None
    if act is None:
        return
    if lc.paused(rec) is not None:
        if rd.is_sleeping(base, None) is False:  # restarted (a new start is awake) or woken by hand
            x.write(lc.resume)
        elif wake_due(act):
            _wake(x, base, act)
        return
    if active(act, rec.get("served_seen")):
        now = x.now
        x.write(lambda r: r.update(last_active=now, served_seen=act.served))
        return
    last = rec.get("last_active")
    if lc.is_pinned(rec) or not idle_due(last, rec.get("idle_pause_after_s"), x.now):
        return
    if not rd.sleep(base, None, 1):
        x.emit(t.event("pause_failed", reason="idle", hint=f"POST {base}/sleep?level=1 failed"))
        return
    now = x.now
    x.write(lambda r: lc.pause(r, "idle", now))
    x.emit(t.event("paused", reason="idle", idle_s=round(now - float(last), 1)))


def _wake(x: Replica, base: str, act: Activity) -> None:
    rec, t, now = x.record, x.t, x.now
    gpus = [str(g) for g in lb.parse(x.c.labels)["gpus"]]
    try:
        chosen = warm.make_room(x.rt, str(x.lifecycle_dir), t.deployment, gpus, rec.get("gpu_memory_utilization"), now)
    except GpufleetError as e:
        why = str(e)
        if rec.get("wake_blocked") != why:
            x.write(lambda r: r.update(wake_blocked=why))
            x.emit(t.event("wake_blocked", waiting=act.waiting, hint=why))
        return
    for other in chosen:
        x.emit({"event": "paused", "deployment": other, "reason": "warm_cache", "for": t.deployment})
    if not rd.wake_up(base, None):
        x.emit(t.event("wake_failed", hint=f"POST {base}/wake_up failed"))
        return
    asleep = lc.paused(rec) or {}

    def woke(r: lc.Record) -> None:
        lc.resume(r)
        r.pop("wake_blocked", None)
        r.update(last_active=now)

    x.write(woke)
    slept = round(now - float(asleep.get("at") or now), 1)
    x.emit(t.event("woken", reason="request", waiting=act.waiting, slept_s=slept, paused_for_room=chosen))
