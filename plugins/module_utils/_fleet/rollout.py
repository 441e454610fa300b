# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rolling updates per deployment: which replicas must be replaced, and in which waves (docs/rollouts.md).

A replica *rolls* when it keeps its place (host, GPUs, port) but what it was declared with changed: its container's
``gpufleet.plan-digest`` label differs from the plan's ``digest`` (``plan_digest()``: everything the deployment
declares for the container, secrets as a salted hash). Creates, moves and in-place updates are applied before the
waves, as before; replicas whose container the controller cannot compare (no label yet) roll too.

Each wave replaces, per deployment, at most ``max_surge`` replicas by *surge* (a temporary copy of the new
configuration, ``<replica>-surge``, started on free GPUs of the replica's host and a free port, gated, serves while the
replica is replaced in place, then removed) plus at most ``max_unavailable`` replicas in place (stopped, replaced,
gated). Kubernetes' rounding: a percentage of ``max_surge`` rounds up, of ``max_unavailable`` down. Different
deployments share a wave (they roll in parallel); a surge's GPUs return to the pool after its wave.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.capacity import Host, Requirement, natural_key
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import image_build
from ansible_collections.gpufleet.vllm.plugins.module_utils._labels import OWNER

SURGE_SUFFIX = "-surge"
# Container args that say where a replica runs, not what it is: never part of the digest.
WHERE_KEYS = ("name", "port", "gpus", "labels")
# The replica's lifecycle on its host (_container/lifecycle.py): changed in place, never a roll (issue #17). serve_for
# enters the digest as the constant "infinite" (what it was for most replicas), so their digests did not change.
LIFECYCLE_KEYS = ("serve_for", "max_failed_restarts", "start_timeout", "idle_pause_after", "pin")


def plan_digest(container: Mapping[str, Any], dep: Mapping[str, Any]) -> str:
    """A digest of what one replica is declared with (not where): container args less name/port/GPUs, image, vLLM
    version, model source and the secrets as a hash salted with the deployment name (never a value)."""
    secrets = {k: dep.get(k) for k in ("api_key", "hf_token", "secret_env") if dep.get(k)}
    salted = hashlib.sha256(json.dumps([dep["name"], secrets], sort_keys=True, default=str).encode()).hexdigest()
    user_labels = {
        k: v for k, v in (container.get("labels") or {}).items() if not str(k).startswith("gpufleet.") or k == OWNER
    }
    what = {
        "container": {
            **{k: v for k, v in container.items() if k not in WHERE_KEYS + LIFECYCLE_KEYS},
            **({"serve_for": "infinite"} if "serve_for" in container else {}),
        },
        "labels": user_labels,
        "image": dep.get("image"),
        "vllm_version": dep.get("vllm_version"),
        "model": dep.get("model"),
        "secrets": salted,
    }
    build = image_build(dep)
    if build:  # a derived image (only when asked for: other replicas keep their digest)
        what["image_build"] = build
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_amount(value: int | str | None, total: int, round_up: bool) -> int:
    """An int or ``"N%"`` of ``total`` replicas (percentages: up for surge, down for unavailable, as Kubernetes)."""
    if value is None:
        return 0
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def rolling_names(specs: Iterable[Mapping[str, Any]], existing: Iterable[Mapping[str, Any]]) -> set[str]:
    """Names of the planned replicas that must roll: kept in place, running, and declared differently now."""
    now = {(str(e.get("host")), str(e.get("name"))): e for e in existing or []}
    out = set()
    for spec in specs:
        if spec.get("action") != "keep":
            continue
        ex = now.get((str(spec.get("host")), str(spec.get("name"))))
        if ex is None or ex.get("state") != "running":  # a placement without a container state: nothing to roll
            continue
        if ex.get("plan_digest") != spec.get("digest"):
            out.add(str(spec["name"]))
    return out


class _Pool:
    """Free GPUs and ports of one host for surges: GPUs no planned or existing container uses and not reserved."""

    def __init__(self, name: str, info: Mapping[str, Any], used_gpus: Iterable[Any], used_ports: set[int]) -> None:
        self.host = Host(name, info, 0)
        used = {self.host.resolve(g if isinstance(g, int) else str(g)) for g in used_gpus}
        self.free = sorted(i for i, g in self.host.gpus.items() if i not in used and not g.reserved and not g.unhealthy)
        self.used_ports = set(used_ports)
        self.taken: set[int] = set()
        self.ports: set[int] = set()

    def reset(self) -> None:
        self.taken, self.ports = set(), set()

    def fitting(self, req: Requirement, gpr: int, exclude: set[int]) -> list[int] | None:
        ok = [
            i for i in self.free if i not in exclude and req.fits_mem(self.host.gpus[i].total, self.host.gpus[i].avail)
        ]
        return ok[:gpr] if len(ok) >= gpr else None

    def port_after(self, start: int) -> int | None:
        for port in range(max(1024, start), 65536):
            if port not in self.used_ports and port not in self.ports:
                return port
        return None


def _range_end(dep: Mapping[str, Any]) -> int:
    if dep.get("port_range"):
        return int(dep["port_range"][1])
    return int(dep.get("port") or 8000) + max(1, int(dep.get("replicas") or 1)) - 1


def compute(
    hosts: Mapping[str, Mapping[str, Any]],
    deps: Mapping[str, Mapping[str, Any]],
    specs_by_host: Mapping[str, list[dict[str, Any]]],
    existing: Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    """The rollout of a plan: ``{waves: [{index, replicas: [{name, deployment, host, mode, surge_port,
    surge_gpus}]}], deferred: {host: [names]}, strategy: {deployment: {max_unavailable, max_surge, rolling}},
    errors: [...]}``. Rolling specs get ``rollout`` (wave, mode, surge port and GPUs) set in place; a deployment
    that cannot roll (max_unavailable 0 and no free GPU for a surge) is an error and its replicas are left as they
    are (not in ``deferred``: fleet_apply does not touch them this run)."""
    existing = list(existing or [])
    specs = [s for h in specs_by_host.values() for s in h]
    rolling = rolling_names(specs, existing)
    used_gpus: dict[str, list[Any]] = {h: [] for h in hosts}
    used_ports: dict[str, set[int]] = {h: set((hosts[h] or {}).get("used_ports") or []) for h in hosts}
    for item in [*specs, *existing]:
        host = str(item.get("host"))
        used_gpus.setdefault(host, []).extend(item.get("gpus") or [])
        if item.get("port") is not None:
            used_ports.setdefault(host, set()).add(int(item["port"]))
    pools = {h: _Pool(h, hosts[h], used_gpus.get(h, []), used_ports.get(h, set())) for h in hosts}

    by_dep: dict[str, list[dict[str, Any]]] = {}
    for spec in sorted(specs, key=lambda s: (s["deployment"], s["replica"])):
        if spec["name"] in rolling:
            by_dep.setdefault(spec["deployment"], []).append(spec)

    strategy: dict[str, dict[str, Any]] = {}
    errors: list[dict[str, Any]] = []
    reqs: dict[str, Requirement] = {}
    surgeable: dict[str, bool] = {}
    for name, items in sorted(by_dep.items()):
        dep = deps[name]
        total = max(1, int(dep.get("replicas") or len(items)))
        reqs[name] = Requirement(dep, items[0].get("vram_per_gpu_mib"))
        surge = resolve_amount(dep.get("max_surge"), total, round_up=True)
        pinned = dep.get("gpus") is not None
        for s in items:  # can it ever surge: enough free GPUs on its host when no other surge runs there
            pool = pools.get(s["host"])
            # A multi-host replica (its spec's ray, _fleet/ray.py) is replaced in place in its wave, cluster and server
            # (_fleet/ray_wave.py): a surge on its head's host alone could not serve, and a second cluster on every
            # host is more GPUs than a multi-host replica's fleet usually has free.
            fits = surge > 0 and not pinned and pool is not None and not s.get("ray")
            surgeable[s["name"]] = fits and pool.fitting(reqs[name], len(s["gpus"]) or 1, set()) is not None
        all_fit = all(surgeable[s["name"]] for s in items)
        if dep.get("max_unavailable") is None:
            unavailable = 0 if all_fit else 1
        else:
            unavailable = min(total, resolve_amount(dep["max_unavailable"], total, round_up=False))
        if not any(surgeable[s["name"]] for s in items):
            surge = 0
        strategy[name] = {"max_unavailable": unavailable, "max_surge": surge, "rolling": [s["name"] for s in items]}
        if unavailable == 0 and not all_fit:
            why = (
                "its GPUs are pinned (gpus)"
                if pinned
                else "a multi-host replica (distributed: ray) is replaced in place, never by a surge"
                if any(s.get("ray") for s in items)
                else "no free GPUs for a surge on "
                + ", ".join(sorted({s["host"] for s in items if not surgeable[s["name"]]}, key=natural_key))
            )
            errors.append(
                {
                    "deployment": name,
                    "message": f"{name}: cannot roll with max_unavailable 0: {why}; set max_unavailable to 1 or more "
                    "(replicas are then replaced in place, that many at a time) or free GPUs",
                    "missing_replicas": [],
                    "hosts": {},
                }
            )
            del by_dep[name]

    waves: list[dict[str, Any]] = []
    while any(by_dep.values()):
        for pool in pools.values():
            pool.reset()
        wave: list[dict[str, Any]] = []
        for name in sorted(by_dep):
            todo, plan = by_dep[name], strategy[name]
            surged = in_place = 0
            for spec in list(todo):
                entry = {"name": spec["name"], "deployment": name, "host": spec["host"], "mode": "in_place"}
                pool = pools.get(spec["host"])
                gpus = None
                if surged < plan["max_surge"] and pool is not None and surgeable[spec["name"]]:
                    gpus = pool.fitting(reqs[name], len(spec["gpus"]) or 1, pool.taken)
                if gpus is not None and pool is not None:
                    port = pool.port_after(_range_end(deps[name]) + 1)
                    if port is not None:
                        pool.taken.update(gpus)
                        pool.ports.add(port)
                        entry.update(mode="surge", surge_port=port, surge_gpus=gpus)
                        surged += 1
                if entry["mode"] == "in_place":
                    if in_place >= plan["max_unavailable"]:
                        continue
                    in_place += 1
                todo.remove(spec)
                wave.append(entry)
        if not wave:  # cannot happen with the checks above; never loop forever
            break
        index = len(waves) + 1
        for entry in wave:
            entry["wave"] = index
        waves.append({"index": index, "replicas": wave})

    by_name = {s["name"]: s for s in specs}
    for wave in waves:
        for entry in wave["replicas"]:
            spec = by_name[entry["name"]]
            spec["rollout"] = {k: entry.get(k) for k in ("wave", "mode", "surge_port", "surge_gpus")}
    in_waves = {e["name"] for w in waves for e in w["replicas"]}
    deferred = {h: [s["name"] for s in items if s["name"] in in_waves] for h, items in specs_by_host.items()}
    stuck = {s["name"] for s in specs if s["name"] in rolling and s["name"] not in in_waves}
    return {
        "waves": waves,
        "deferred": deferred,
        "held": {h: [s["name"] for s in items if s["name"] in stuck] for h, items in specs_by_host.items()},
        "strategy": strategy,
        "errors": errors,
    }


def wave_lines(rollout: Mapping[str, Any]) -> list[str]:
    """The rollout order, one line per wave (``wave 1: chat-0 on gpu-a (surge :8002 gpus=3), tp-0 on gpu-b``)."""
    lines = []
    for wave in rollout.get("waves") or []:
        parts = []
        for e in sorted(wave["replicas"], key=lambda e: (e["deployment"], natural_key(e["name"]))):
            how = (
                f"surge :{e['surge_port']} gpus={','.join(str(g) for g in e['surge_gpus'])}"
                if e["mode"] == "surge"
                else "in place"
            )
            parts.append(f"{e['name']} on {e['host']} ({how})")
        lines.append(f"wave {wave['index']}: " + ", ".join(parts))
    return lines


def wave_replicas(wave: Mapping[str, Any], host: str, halted: Iterable[str]) -> list[str]:
    """The replicas of ``wave`` on ``host`` whose deployment has not failed (``halted``) so far."""
    stop = set(halted or [])
    return [
        str(e["name"]) for e in wave.get("replicas") or [] if e.get("host") == host and e.get("deployment") not in stop
    ]


def failed_deployments(results: Iterable[Any]) -> list[str]:
    """Deployments with a failed replica record in any of the hosts' registered fleet_apply results."""
    out: set[str] = set()
    for res in results or []:
        if not isinstance(res, Mapping):
            continue
        for rec in res.get("records") or []:
            if isinstance(rec, Mapping) and rec.get("failed") and rec.get("deployment"):
                out.add(str(rec["deployment"]))
    return sorted(out)


def merge_results(before: Any, after: Any) -> dict[str, Any]:
    """One host's fleet_apply results of a run, as one (its records in order): what the summary reads."""
    runs = [r for r in (before, after) if isinstance(r, Mapping) and not r.get("skipped")]
    if not runs:
        return dict(before) if isinstance(before, Mapping) else {}
    records = [rec for r in runs for rec in r.get("records") or []]
    msgs = [str(r["msg"]) for r in runs if r.get("failed") and r.get("msg")]
    out: dict[str, Any] = {
        "changed": any(bool(r.get("changed")) for r in runs),
        "failed": any(bool(r.get("failed")) for r in runs),
        "records": records,
        "failed_count": sum(1 for rec in records if isinstance(rec, Mapping) and rec.get("failed")),
    }
    if msgs:
        out["msg"] = "; ".join(msgs)
    return out
