# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet's placements, kept on the managed hosts (no state that lives only on the controller).

Every converge hands the whole plan's placements to every host it applies on (``fleet_apply`` option
``fleet_state``), which keeps them in ``<state dir>/fleet/placements.json`` (the state dir is ``manifest_dir``'s
parent, ``/var/lib/gpufleet`` by default). The next run, from any controller or a fresh execution-environment
container, reads them back with the facts (``fleet_apply state=gathered`` returns ``fleet_state``) and takes the
newest copy (highest ``generation``) for the hosts that cannot report their own containers: unreachable hosts keep
their replicas in the plan. ``generation`` grows only when the placements change, so a converged fleet writes nothing.

A multi-host replica (``distributed: ray``, docs/ray.md) is kept whole: its head (``ray_role: head``, ``ray_port``,
the vLLM port) and one placement per Ray worker (``ray_role: worker``, its host and GPUs, no port), the form the
hosts' facts give (``_fleet/ray.existing_parts``), so with any of its hosts unreachable the planner still sees every
part and keeps or moves the replica as a whole.

Plain functions over plain data: the action plugin ``fleet_plan`` chooses and builds the state, the module writes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_if_changed

VERSION = 1
STATE_FILE = os.path.join("fleet", "placements.json")
FIELDS = ("deployment", "replica", "host", "gpus", "gpu_uuids", "port")
RAY_FIELDS = ("ray_role", "ray_port")


def state_path(manifest_dir: str) -> str:
    """``<manifest_dir's parent>/fleet/placements.json`` (the state dir of ``_container/lock.py``)."""
    return os.path.join(os.path.dirname(os.path.normpath(manifest_dir)) or "/", STATE_FILE)


def parts(assignment: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The placements of one assignment of the plan (or of one kept placement, unchanged): a one-host replica is one;
    a multi-host one (its ``ray``) is its head and one per Ray worker, each with ``ray_role`` and ``ray_port``."""
    head = {k: assignment.get(k) for k in FIELDS}
    ray = assignment.get("ray")
    if not isinstance(ray, Mapping):
        if assignment.get("ray_role") in ("head", "worker"):  # already a kept part
            head.update({k: assignment.get(k) for k in RAY_FIELDS})
        return [head]
    head.update(ray_role="head", ray_port=ray.get("port"))
    out = [head]
    for w in ray.get("workers") or []:
        out.append(
            {
                "deployment": assignment.get("deployment"),
                "replica": assignment.get("replica"),
                "host": w.get("host"),
                "gpus": list(w.get("gpus") or []),
                "gpu_uuids": list(w.get("gpu_uuids") or []),
                "port": None,
                "ray_role": "worker",
                "ray_port": ray.get("port"),
            }
        )
    return out


def placements(assignments: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The placements of the plan's assignments (``parts``), sorted by (deployment, replica, head before workers,
    host): a stable form to compare."""
    out = [p for a in assignments for p in parts(a)]
    return sorted(
        out,
        key=lambda p: (str(p["deployment"]), int(p["replica"] or 0), p.get("ray_role") == "worker", str(p["host"])),
    )


def valid(state: Any) -> bool:
    return (
        isinstance(state, Mapping)
        and state.get("version") == VERSION
        and isinstance(state.get("generation"), int)
        and isinstance(state.get("placements"), list)
    )


def newest(states: Iterable[Any]) -> dict[str, Any] | None:
    """The copy with the highest generation (ties: the same text wins whichever host sent it); None when no host
    has a valid one."""
    good = [dict(s) for s in states if valid(s)]
    if not good:
        return None
    return max(good, key=lambda s: (s["generation"], json.dumps(s, sort_keys=True)))


def next_state(previous: Mapping[str, Any] | None, assignments: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The state to keep after this plan: the previous generation when the placements are the same, else one more."""
    now = placements(assignments)
    if previous and valid(previous) and placements(previous["placements"]) == now:
        return {"version": VERSION, "generation": previous["generation"], "placements": now}
    generation = (previous["generation"] + 1) if previous and valid(previous) else 1
    return {"version": VERSION, "generation": generation, "placements": now}


def read(manifest_dir: str) -> dict[str, Any] | None:
    """The host's copy (None when there is none, or an unreadable or foreign file: the other hosts have one)."""
    path = state_path(manifest_dir)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if valid(data) else None


def render(state: Mapping[str, Any]) -> str:
    return json.dumps(dict(state), indent=2, sort_keys=True) + "\n"


def write(manifest_dir: str, state: Mapping[str, Any], check_mode: bool = False) -> bool:
    """Keep ``state`` on this host; True when the file changed (or would, in check mode)."""
    if not valid(state):
        raise GpufleetError(
            f"fleet_state: not a gpufleet placement state (version {VERSION}, generation, placements); pass the "
            "fleet_state that gpufleet.vllm.fleet_plan returns"
        )
    path = state_path(manifest_dir)
    text = render(state)
    if check_mode:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read() != text
        except OSError:
            return True
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        return write_if_changed(path, text, mode=0o644)
    except OSError as e:
        raise GpufleetError(
            f"cannot write the fleet placements {path}: {e.strerror}; make the directory writable"
        ) from None


def _replica(p: Mapping[str, Any]) -> str:
    if p.get("deployment") is not None and p.get("replica") is not None:
        return f"{p['deployment']}-{p['replica']}"
    return str(p.get("name"))


def restore(
    kept: Iterable[Mapping[str, Any]],
    existing: Iterable[Mapping[str, Any]],
    unreachable: Iterable[str],
    reachable: Iterable[str],
) -> list[dict[str, Any]]:
    """The kept placements to add to the ``existing`` ones the reachable hosts reported: every replica with a part on
    an unreachable host comes back whole - its parts there, and the parts of a multi-host replica on reachable hosts
    that no longer report them (so the planner keeps or moves the replica as a whole, never half of it)."""
    down, up = set(unreachable), set(reachable)
    reported = {(e.get("host"), _replica(e)) for e in existing}
    hosts_reporting = {e.get("host") for e in existing}
    lost = {_replica(p) for p in kept if p.get("host") in down and p.get("host") not in hosts_reporting}
    out = []
    for p in kept:
        if _replica(p) not in lost:
            continue
        host = p.get("host")
        if (host in down and host not in hosts_reporting) or (host in up and (host, _replica(p)) not in reported):
            out.append(dict(p))
    return out
