# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A replica's lifecycle on its host: one JSON file per deployment name, ``<state_dir>/lifecycle/<name>.json``
(``state_dir`` = the parent of manifest_dir, /var/lib/gpufleet by default), shared by the converge and the node agent.

Mutable, unlike a label, so the deadline can move without a restart. Who writes what:

- the converge (vllm_container, and fleet_apply through it): ``container_id``, ``config_hash``, the serve window
  (``since``, ``serve_for_h``), the crash-loop budget (``max_failed_restarts``, ``start_timeout_s``), the warm cache
  (``idle_pause_after_s``: None = never paused for idleness; ``pin``: never paused by the agent;
  ``gpu_memory_utilization``: its claim on its GPUs); it clears
  ``failed`` when the configuration changed or the user asked (``reset_failed``) and ``expired`` when the deadline
  moved past now;
- vllm_container's stop on request (state=stopped: stop.yml, a multi-host replica's server before its Ray nodes):
  ``stopped`` (``{"at", "container_id"}``), so status reads that exit as stopped whatever its code;
- ``playbooks/extend.yml`` (vllm_lifecycle): ``extra_h`` / ``extra_infinite``; ``pause.yml`` / ``resume.yml`` /
  ``pin.yml``: ``paused`` and ``pinned`` (the host-side pin, over the deployment's ``pin``);
- the node agent: ``last_active`` and ``served_seen`` (vLLM's request counters, ``_agent/idle.py``), ``failed``
  (the end state of a crash loop or hung start, with its cause), ``expired``, ``wake_blocked`` and ``paused``
  (``{"at", "reason": idle|warm_cache|manual}``: asleep on purpose, vLLM sleep level 1; cleared when it wakes;
  vllm_lifecycle's pause/resume too). A paused replica keeps its container, port and serve window (serve_for counts on while it sleeps).

The deadline is ``since + serve_for_h + extra_h`` hours: a converge with the same ``serve_for`` keeps it (and any
extension), a changed ``serve_for`` recomputes it from ``since`` and drops the extension, a new container (a changed
configuration) starts a new window. Every read-modify-write holds an flock on ``<name>.lock`` beside the file.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._container.validate import name_problem
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_atomic

LIFECYCLE_DIR = "lifecycle"
DEFAULT_STATE_DIR = "/var/lib/gpufleet"
DEFAULT_MAX_FAILED_RESTARTS = 3
DEFAULT_START_TIMEOUT_S = 1800

Record = dict[str, Any]


def path(state_dir: str, name: str) -> str:
    problem = name_problem(name)
    if problem:
        raise GpufleetError(problem, failure_class="bad_args")
    return os.path.join(state_dir, LIFECYCLE_DIR, f"{name}.json")


def load(state_dir: str, name: str) -> Record:
    """The record of ``name`` ({} when there is none or it cannot be read)."""
    try:
        with open(path(state_dir, name), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextmanager
def _locked(state_dir: str, name: str) -> Iterator[None]:
    lock = path(state_dir, name)[: -len(".json")] + ".lock"
    os.makedirs(os.path.dirname(lock), mode=0o755, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update(state_dir: str, name: str, change: Callable[[Record], None]) -> Record:
    """Apply ``change`` to the record under its lock and write it when it changed; returns the new record."""
    with _locked(state_dir, name):
        rec = load(state_dir, name)
        before = json.dumps(rec, sort_keys=True)
        change(rec)
        text = json.dumps(rec, sort_keys=True)
        if text != before:
            write_atomic(path(state_dir, name), text + "\n", 0o644, makedirs=True)
        return rec


def remove(state_dir: str, name: str) -> None:
    for p in (path(state_dir, name), path(state_dir, name)[: -len(".json")] + ".lock"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------------------------------------ pure decisions
def deadline(rec: Record) -> float | None:
    """When the replica stops serving (Unix time), None = no limit."""
    if rec.get("serve_for_h") is None or rec.get("extra_infinite") or rec.get("since") is None:
        return None
    return float(rec["since"]) + (float(rec["serve_for_h"]) + float(rec.get("extra_h") or 0.0)) * 3600.0


def failed_for(rec: Record, config_hash: str | None) -> Record | None:
    """The agent's ``failed`` record when it is about this configuration (a changed configuration is a new start)."""
    failed = rec.get("failed")
    if not isinstance(failed, dict):
        return None
    return failed if failed.get("config_hash") in (None, config_hash) else None


def converge(
    rec: Record,
    *,
    container_id: str,
    config_hash: str | None,
    serve_for_h: float | None,
    max_failed_restarts: int,
    start_timeout_s: int,
    now: float,
    since: float | None = None,
    idle_pause_after_s: int | None = None,
    pin: bool = False,
    gpu_memory_utilization: float | None = None,
) -> None:
    """What a converge writes: a new container starts a new serve window and a fresh budget; the same container
    keeps its window (and extension) unless ``serve_for`` changed. ``since`` seeds the window of a container that
    had no record yet (its creation, or the old ``gpufleet.serve-until`` label minus serve_for)."""
    new = rec.get("container_id") != container_id
    if new:
        had = bool(rec.get("container_id"))
        rec.update(container_id=container_id, since=now if had or since is None else since, extra_h=0.0)
        rec.update(extra_infinite=False, serve_for_h=serve_for_h)
        rec.pop("expired", None)
        rec.pop("paused", None)  # a new container starts awake
    elif rec.get("serve_for_h") != serve_for_h:
        rec.update(serve_for_h=serve_for_h, extra_h=0.0, extra_infinite=False)
    if failed_for(rec, config_hash) is None:
        rec.pop("failed", None)
    rec.update(config_hash=config_hash, max_failed_restarts=max_failed_restarts, start_timeout_s=start_timeout_s)
    rec.update(idle_pause_after_s=idle_pause_after_s, pin=bool(pin), gpu_memory_utilization=gpu_memory_utilization)
    until = deadline(rec)
    if until is None or until > now:
        rec.pop("expired", None)


def extend(rec: Record, hours: float | None, now: float) -> None:
    """``extend.yml``: ``hours`` more from the current deadline (from now when already past); None = no limit until
    ``serve_for`` changes in the inventory."""
    if hours is None:
        rec["extra_infinite"] = True
        rec.pop("expired", None)
        return
    until = deadline(rec)
    if until is None:
        if rec.get("serve_for_h") is None or rec.get("since") is None:
            return  # no limit to extend
        rec["extra_infinite"] = False
        until = deadline(rec) or now
    target = max(until, now) + hours * 3600.0
    rec["extra_h"] = (target - float(rec["since"])) / 3600.0 - float(rec["serve_for_h"])
    rec.pop("expired", None)


def paused(rec: Record) -> Record | None:
    """``{"at", "reason"}`` while the replica is asleep on purpose (idle, warm cache, pause.yml), else None."""
    p = rec.get("paused")
    return p if isinstance(p, dict) else None


def pause(rec: Record, reason: str, now: float) -> None:
    """Record the replica as asleep on purpose (the first pause's time and reason stay while it sleeps)."""
    if paused(rec) is None:
        rec["paused"] = {"at": now, "reason": reason}


def resume(rec: Record) -> None:
    rec.pop("paused", None)


def is_pinned(rec: Record) -> bool:
    """Never paused by the agent: the host-side flag (pin.yml) when set, else the deployment's ``pin``."""
    flag = rec.get("pinned")
    return bool(flag) if isinstance(flag, bool) else bool(rec.get("pin"))


def pausable(rec: Record) -> bool:
    """The warm cache may put it to sleep: it has a (sleep-mode) idle policy and is not pinned."""
    return rec.get("idle_pause_after_s") is not None and not is_pinned(rec)


def stopped_on_request(rec: Record, container_id: str, now: float) -> None:
    """vllm_container stopped the container because a task asked (state=stopped: stop.yml, a multi-host replica's
    server before its Ray nodes): status reads its exit as ``stopped``, whatever the code (a Ray driver exits 15 on
    SIGTERM), until the container runs again."""
    rec["stopped"] = {"at": now, "container_id": container_id}


def stopped_by_request(rec: Record, container_id: str, started_at: float | None) -> bool:
    """The exited container ``container_id`` was stopped on request and has not been started since (a start after
    the request, then an exit, is the container's own exit)."""
    stopped = rec.get("stopped")
    if not isinstance(stopped, dict) or stopped.get("container_id") != container_id:
        return False
    try:
        at = float(stopped["at"])
    except (KeyError, TypeError, ValueError):
        return False
    return started_at is None or started_at <= at


def summary(rec: Record, now: float) -> dict[str, Any]:
    """What status shows: ``lifecycle`` (failed, expired, paused or None), the deadline, the failure, and for a
    paused replica since when (``paused_for_s``) and why."""
    until = deadline(rec)
    failed = rec.get("failed") if isinstance(rec.get("failed"), dict) else None
    asleep = paused(rec)
    state = "failed" if failed else ("expired" if until is not None and until <= now else None)
    if state is None and asleep is not None:
        state = "paused"
    return {
        "lifecycle": state,
        "serve_until_ts": until,
        "failed": failed,
        "max_failed_restarts": rec.get("max_failed_restarts"),
        "start_timeout_s": rec.get("start_timeout_s"),
        "paused_for_s": round(max(0.0, now - float(asleep["at"])), 1) if asleep and state == "paused" else None,
        "paused_reason": asleep.get("reason") if asleep and state == "paused" else None,
        "pinned": is_pinned(rec),
    }
