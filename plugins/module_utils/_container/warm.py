# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The warm cache on one host: when a replica needs GPU memory that other replicas hold (a new or replaced container
about to start, a paused replica about to wake), the least recently used pausable ones are put to sleep (vLLM sleep
mode level 1: weights to CPU RAM, GPU memory freed, the container and its port stay) instead of failing.

What a replica holds is what vLLM claims: ``gpu_memory_utilization`` of each of its GPUs (``_gpu/fit.py``:
``share_permille``), for every running replica that is not asleep; the choice is ``fit.to_pause`` (least recently
used first, a pinned or unpausable replica never). Pausable = an ``idle_pause_after`` policy (which needs
``sleep_mode``) and not pinned, from the replicas' lifecycle records (``lifecycle.py``); ``last_active`` there is
written by the node agent from vLLM's request counters. Used by vllm_container (before a start) and the node agent
(before a wake)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState, Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu import fit

Sleep = Callable[[str], bool]  # base URL -> slept


def _gpus(lab: dict[str, Any]) -> list[str]:
    return [str(g) for g in lab["gpus"]]


def awake_holders(
    rt: Runtime, state_dir: str, gpus: list[str], exclude: str
) -> tuple[dict[str, float], list[tuple[fit.Holder, ContainerState]]]:
    """(free share per GPU of ``gpus``, the running replicas not asleep that hold some of them) on this host: those
    with a lifecycle record in ``state_dir``; ``exclude``: the replica that needs the room (its own share is free)."""
    free = {g: float(fit.PERMILLE) for g in gpus}
    holders: list[tuple[fit.Holder, ContainerState]] = []
    for c in rt.list_managed():
        lab = lb.parse(c.labels)
        name = lab["name"]
        if not name or name == exclude or c.name != lb.container_name(name) or not c.running:
            continue
        theirs = [g for g in _gpus(lab) if g in free or g == "all"]
        if not theirs:
            continue
        rec = lc.load(state_dir, name)
        if not rec or lc.paused(rec) is not None:
            continue  # not converged into this state directory; or asleep: holds (almost) nothing
        share = fit.share_permille(rec.get("gpu_memory_utilization"))
        held = {g: float(share) for g in (gpus if "all" in theirs else theirs)}
        for g, s in held.items():
            free[g] -= s
        last = rec.get("last_active", rec.get("since"))
        h = fit.Holder(name, held, float(last) if isinstance(last, (int, float)) else 0.0, lc.pausable(rec))
        holders.append((h, c))
    return free, holders


def make_room(
    rt: Runtime,
    state_dir: str,
    name: str,
    gpus: list[str],
    utilization: float | None,
    now: float,
    *,
    check_mode: bool = False,
    sleep: Sleep | None = None,
) -> list[str]:
    """Put the least recently used pausable replicas on ``gpus`` to sleep until ``name`` fits there; their lifecycle
    records say ``paused`` (reason ``warm_cache``). Returns their names ([] when it fits). Raises GpufleetError,
    touching nothing, when even every pausable replica is not enough (pinned or without an idle policy)."""
    if not gpus or "all" in gpus:
        return []
    need = {g: float(fit.share_permille(utilization)) for g in gpus}
    free, holders = awake_holders(rt, state_dir, gpus, name)
    chosen = fit.to_pause(need, free, [h for h, _c in holders])
    if chosen is None:
        others = ", ".join(sorted(h.name + ("" if h.pausable else " (kept)") for h, _c in holders)) or "none"
        raise GpufleetError(
            f"{name} needs {min(need.values()) / fit.PERMILLE:g} of GPU(s) {','.join(gpus)}; the replicas there "
            f"({others}) leave too little and the warm cache may not put enough of them to sleep (only replicas "
            "with idle_pause_after and not pinned go to sleep)",
            failure_class="gpu_memory",
        )
    if check_mode:
        return chosen
    do_sleep = sleep or (lambda base: rd.sleep(base, None, 1))
    by_name = {h.name: c for h, c in holders}
    for other in chosen:
        lab = lb.parse(by_name[other].labels)
        base = rd.base_url(lab["host"], lab["port"] or 0)
        if not do_sleep(base):
            raise GpufleetError(f"POST {base}/sleep?level=1 failed: {other} could not be put to sleep for {name}")
        lc.update(state_dir, other, lambda r: lc.pause(r, "warm_cache", now))
    return chosen
