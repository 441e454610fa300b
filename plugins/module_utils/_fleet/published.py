# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan published to the hosts, for applies sliced by host (AWX job slicing, ``--limit`` batches).

The plan is global (placement looks at every host), so it is made once over the whole inventory
(``playbooks/plan.yml``) and each host keeps its part in ``<state dir>/fleet/plan.json`` (beside the fleet's
placements, ``state.py``): the replicas it runs, its removals, its replicas' rollout waves, its Ray nodes of
multi-host replicas (``plan.ray``, docs/ray.md) with the hosts of each such replica, and the whole fleet's placements
after the plan. An apply job of any subset of the hosts (``playbooks/apply_planned.yml``) reads the parts
back from its hosts and runs exactly them: a replica is placed by the one host the plan gave it to, and a host
removes only what the plan removes there, so slices never place twice nor prune each other's replicas.

The apply refuses, before anything changes, when a host has no plan, when its hosts hold different plans, when the
plan is not the one the workflow's plan job published (``plan_id``), when ``gpufleet_deployments`` changed since,
or when the fleet's placements kept on a host are newer than the plan's (another converge ran since), or when the
apply has only some of a multi-host replica's hosts (its Ray play needs the head and every worker at once).

Plain functions over plain data: ``fleet_plan`` (``publish`` / ``planned_var``) calls them on the controller.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import state as fleet_state
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import SECRET_FIELDS

VERSION = 1
PLAN_FILE = os.path.join("fleet", "plan.json")
RERUN = "run the plan job again (playbooks/plan.yml over the whole inventory), then the apply"
TOGETHER = (
    "apply every host of a multi-host replica in the same job (one --limit; with AWX job slicing, a slice that holds "
    "them all, or those hosts unsliced)"
)


def plan_path(manifest_dir: str) -> str:
    """``<manifest_dir's parent>/fleet/plan.json``, beside the fleet's placements."""
    return os.path.join(os.path.dirname(os.path.normpath(manifest_dir)) or "/", PLAN_FILE)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def deployments_digest(deployments: Iterable[Mapping[str, Any]]) -> str:
    """What the declaration was when the plan was made (secret fields left out: a plan never depends on them)."""
    return _digest([{k: v for k, v in dict(d).items() if k not in SECRET_FIELDS} for d in deployments or []])


def ray_hosts(ray: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{replica name: its hosts, head first}`` of the multi-host replicas in ``plan.ray`` (``{host: [node]}``)."""
    out: dict[str, list[str]] = {}
    for host, nodes in sorted((ray or {}).items()):
        for n in nodes or []:
            hosts = out.setdefault(f"{n['deployment']}-{n['replica']}", [])
            if n.get("role") == "head":
                hosts.insert(0, host)
            else:
                hosts.append(host)
    return out


def host_part(plan: Mapping[str, Any], host: str) -> dict[str, Any]:
    """One host's part of ``fleet_plan``'s plan: its replicas, removals, deferred and held replicas, its entries of
    each rollout wave (waves keep their index), the undeclared containers seen there, and its Ray nodes (``ray``)
    with the hosts of each multi-host replica it has a part of (``ray_hosts``)."""
    rollout = plan.get("rollout") or {}
    nodes = [dict(n) for n in (plan.get("ray") or {}).get(host) or []]
    mine = {f"{n['deployment']}-{n['replica']}" for n in nodes}
    waves = []
    for wave in rollout.get("waves") or []:
        mine = [dict(e) for e in wave.get("replicas") or [] if e.get("host") == host]
        if mine:
            waves.append({"index": wave["index"], "replicas": mine})
    return {
        "replicas": [dict(s) for s in (plan.get("hosts") or {}).get(host) or []],
        "remove": [dict(r) for r in (plan.get("remove") or {}).get(host) or []],
        "deferred": list((rollout.get("deferred") or {}).get(host) or []),
        "held": list((rollout.get("held") or {}).get(host) or []),
        "waves": waves,
        "undeclared": [dict(u) for u in plan.get("undeclared") or [] if u.get("host") == host],
        "ray": nodes,
        "ray_hosts": {k: v for k, v in ray_hosts(plan.get("ray") or {}).items() if k in mine},
    }


def publish(
    plan: Mapping[str, Any],
    fleet: Mapping[str, Any],
    deployments: Iterable[Mapping[str, Any]],
    hosts: Iterable[str],
) -> tuple[str, dict[str, str]]:
    """``(plan_id, {host: the text of its plan file})`` for each of ``hosts`` (every reachable host of the plan, also
    those with nothing to run: an apply refuses a host without a plan). The id is a digest of the whole plan and the
    declaration, so the same plan gives the same files (a re-run of the plan job writes nothing)."""
    declared = deployments_digest(deployments)
    keys = ("hosts", "remove", "rollout") + (("ray",) if any((plan.get("ray") or {}).values()) else ())
    plan_id = _digest({"plan": {k: plan.get(k) for k in keys}, "deployments": declared})
    files = {}
    for host in hosts:
        record = {
            "version": VERSION,
            "plan_id": plan_id,
            "host": host,
            "deployments_digest": declared,
            "part": host_part(plan, host),
            "fleet_state": dict(fleet),
        }
        files[host] = json.dumps(record, indent=1, sort_keys=True) + "\n"
    return plan_id, files


def parse(raw: Any) -> dict[str, Any] | None:
    """A host's plan record from what the play read: the registered result of ``ansible.builtin.slurp`` of its plan
    file (base64 ``content``), the file's text, or the record itself; None when the host has no (readable) plan."""
    if isinstance(raw, Mapping) and "content" in raw:
        if raw.get("failed"):
            return None
        try:
            raw = base64.b64decode(str(raw["content"])).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(raw, Mapping) or raw.get("version") != VERSION or not raw.get("plan_id"):
        return None
    return dict(raw)


def split_replicas(good: Mapping[str, Mapping[str, Any]], records: Mapping[str, Any]) -> list[str]:
    """The multi-host replicas that this apply (``records``' hosts) has only some hosts of, one line each: its Ray play
    must start the head and every worker together, before the batches (docs/ray.md)."""
    out = []
    whole: dict[str, list[str]] = {}
    for host in sorted(good):
        whole.update((good[host].get("part") or {}).get("ray_hosts") or {})
    for name, hosts in sorted(whole.items()):
        missing = [h for h in hosts if h not in records]
        if missing:
            out.append(
                f"the multi-host replica {name} runs on {', '.join(hosts)}: {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not in this apply"
            )
    return out


def assemble(
    records: Mapping[str, Any],
    deployments: Iterable[Mapping[str, Any]],
    kept: Mapping[str, Any],
    expected_id: str = "",
    unreachable: Iterable[str] = (),
) -> dict[str, Any]:
    """The plan of an apply over ``records``' hosts (``{host: record or None}``), in ``fleet_plan``'s result shape
    (``plan.hosts/remove/rollout/undeclared``, ``fleet_state``, ``unreachable_hosts``, ``errors``, ``plan_id``), or
    one GpufleetError that lists every reason to refuse. ``kept``: ``{host: the fleet's placements it keeps}``."""
    problems: list[str] = []
    missing = sorted(h for h, r in records.items() if r is None)
    if missing:
        problems.append(f"no plan on {', '.join(missing)} (no readable fleet/plan.json)")
    good = {h: r for h, r in records.items() if r is not None}
    wrong_host = sorted(h for h, r in good.items() if r.get("host") != h)
    if wrong_host:
        problems.append(f"the plan file on {', '.join(wrong_host)} was written for another host")
    ids = sorted({str(r["plan_id"]) for r in good.values()})
    if len(ids) > 1:
        held = ", ".join(
            f"{pid[:12]} ({', '.join(sorted(h for h, r in good.items() if r['plan_id'] == pid))})" for pid in ids
        )
        problems.append(f"the hosts hold different plans: {held}")
    if expected_id and ids and ids != [expected_id]:
        problems.append(
            f"the hosts' plan {', '.join(i[:12] for i in ids)} is not the plan {expected_id[:12]} asked for"
        )
    declared = deployments_digest(deployments)
    changed = sorted(h for h, r in good.items() if r.get("deployments_digest") != declared)
    if changed:
        problems.append("gpufleet_deployments changed since the plan was made")
    planned_state = next((r.get("fleet_state") for r in good.values()), None)
    if fleet_state.valid(planned_state):
        newer = []
        for host in sorted(good):
            have = kept.get(host)
            if not fleet_state.valid(have):
                continue
            if have["generation"] > planned_state["generation"] or (
                have["generation"] == planned_state["generation"]
                and fleet_state.placements(have["placements"]) != fleet_state.placements(planned_state["placements"])
            ):
                newer.append(f"{host} (generation {have['generation']})")
        if newer:
            problems.append(
                "the fleet's placements changed since the plan (generation "
                f"{planned_state['generation']}): newer on {', '.join(newer)}"
            )
    split = split_replicas(good, records)
    if problems or split:
        hints = ([RERUN] if problems else []) + ([TOGETHER] if split else [])
        raise GpufleetError("refusing to apply: " + "; ".join(problems + split) + ". " + "; ".join(hints) + ".")

    plan: dict[str, Any] = {
        "hosts": {},
        "remove": {},
        "rollout": {"waves": [], "deferred": {}, "held": {}},
        "undeclared": [],
        "ray": {},
    }
    waves: dict[int, list[dict[str, Any]]] = {}
    for host in sorted(good):
        part = good[host].get("part") or {}
        plan["hosts"][host] = list(part.get("replicas") or [])
        plan["remove"][host] = list(part.get("remove") or [])
        plan["rollout"]["deferred"][host] = list(part.get("deferred") or [])
        plan["rollout"]["held"][host] = list(part.get("held") or [])
        plan["undeclared"].extend(part.get("undeclared") or [])
        plan["ray"][host] = list(part.get("ray") or [])
        for wave in part.get("waves") or []:
            waves.setdefault(int(wave["index"]), []).extend(wave.get("replicas") or [])
    plan["rollout"]["waves"] = [{"index": i, "replicas": waves[i]} for i in sorted(waves)]
    return {
        "plan": plan,
        "plan_id": ids[0] if ids else expected_id,
        "fleet_state": planned_state,
        "unreachable_hosts": sorted(set(unreachable)),
        "errors": [],
    }
