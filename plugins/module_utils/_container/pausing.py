# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_lifecycle's pause, resume, pin and unpin (playbooks/pause.yml, resume.yml, pin.yml) for a deployment's replicas
on this host:

- ``pause``: vLLM sleep level 1 (``POST /sleep?level=1``: weights to CPU RAM, GPU memory freed); the lifecycle record
  says ``paused`` (reason ``manual``). The container, its port and its place in the gateway stay; a converge leaves it
  asleep; the first request wakes it (the node agent, ``_agent/idle.py``), as ``resume`` does;
- ``resume``: room on its GPUs first (the warm cache, ``warm.py``), then ``POST /wake_up``; ``paused`` is cleared;
- ``pin`` / ``unpin``: the host-side flag ``pinned`` over the deployment's ``pin`` (a pinned replica is never put
  to sleep by the idle pause or the warm cache).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import warm
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState, Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

ACTIONS = ("pause", "resume", "pin", "unpin")


def _replicas(rt: Runtime, deployment: str) -> list[tuple[str, ContainerState]]:
    out = []
    for c in rt.list_managed():
        name = lb.parse(c.labels)["name"]
        if name and c.name == lb.container_name(name) and lb.selected(name, [deployment]):
            out.append((name, c))
    return sorted(out, key=lambda nc: nc[0])


def act_host(params: Mapping[str, Any], rt: Runtime, check_mode: bool, now: float | None = None) -> dict[str, Any]:
    """``params["action"]`` (pause, resume, pin, unpin) on every replica of ``params["deployment"]`` on this host."""
    now = time.time() if now is None else now
    action, state_dir = params["action"], params["state_dir"]
    out: list[dict[str, Any]] = []
    for name, c in _replicas(rt, params["deployment"]):
        rec = lc.load(state_dir, name)
        lab = lb.parse(c.labels)
        base = rd.base_url(lab["host"], lab["port"] or 0)
        item: dict[str, Any] = {"name": name, "container_id": c.id, "changed": False}
        if action in ("pin", "unpin"):
            want = action == "pin"
            item["changed"] = rec.get("pinned") is not want
            if item["changed"] and not check_mode:
                lc.update(state_dir, name, lambda r, want=want: r.update(pinned=want))
            item["pinned"] = want
        elif not c.running:
            item["note"] = f"not running ({c.status}): nothing to {action}"
        elif not lab["sleep_mode"]:
            raise GpufleetError(
                f"{c.name} runs without sleep_mode: it cannot be paused (set engine_options.sleep_mode: true)"
            )
        elif action == "pause":
            item.update(_pause(state_dir, name, base, rec, check_mode, now))
        else:
            item.update(_resume(rt, state_dir, name, lab, base, rec, check_mode, now))
        out.append(item)
    return {"changed": any(i["changed"] for i in out), "replicas": out}


def _pause(state_dir: str, name: str, base: str, rec: lc.Record, check_mode: bool, now: float) -> dict[str, Any]:
    asleep = rd.is_sleeping(base, None)
    if asleep and lc.paused(rec) is not None:
        return {"paused": True}
    if not check_mode:
        if not asleep and not rd.sleep(base, None, 1):
            raise GpufleetError(f"POST {base}/sleep?level=1 failed: {name} could not be put to sleep")
        lc.update(state_dir, name, lambda r: lc.pause(r, "manual", now))
    return {"changed": True, "paused": True}


def _resume(
    rt: Runtime, state_dir: str, name: str, lab: dict[str, Any], base: str, rec: lc.Record, check_mode: bool, now: float
) -> dict[str, Any]:
    asleep = rd.is_sleeping(base, None)
    if not asleep and lc.paused(rec) is None:
        return {"paused": False}
    gpus = [str(g) for g in lab["gpus"]]
    util = rec.get("gpu_memory_utilization")
    room = warm.make_room(rt, state_dir, name, gpus, util, now, check_mode=True)  # raises when it cannot
    if not check_mode:
        warm.make_room(rt, state_dir, name, gpus, util, now)
        if asleep and not rd.wake_up(base, None):
            raise GpufleetError(f"POST {base}/wake_up failed: {name} stays asleep")
        lc.update(state_dir, name, lc.resume)
    return {"changed": True, "paused": False, "paused_for_room": room}
