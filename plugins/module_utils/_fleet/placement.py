# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Placement: which host, GPUs and port each replica of each declared deployment gets.

``plan(hosts, deployments, existing)`` is a pure function (no I/O), run once on the controller by the
``fleet_plan`` action. Rules, in order:

1. Existing managed placements are kept where they are while they still fit (stable: a re-run moves nothing).
   They are removed when the deployment is ``state: absent`` or undeclared (with ``prune``), scaled down, pinned
   elsewhere, given another GPU count, or no longer fit (selector, reservation, VRAM). Placements on unreachable hosts
   are kept and reported, and moved only with ``move_from_unreachable``.
2. Missing replicas are placed: pinned deployments first, then the largest. A GPU fits when it is healthy
   (gpu_facts' ``healthy``; a replica already on a GPU that turns unhealthy is kept, with a warning), not reserved, not
   used by another deployment (unless both allow ``gpu_sharing``), ``gpu_memory_utilization`` x total covers the
   VRAM estimate per GPU (``_gpu/fit.py``) and at least ``gpu_memory_utilization`` x total is free (memory held by
   placements this plan removes, the deployment's own included, counts as free). ``spread`` puts replicas on the
   hosts with the fewest replicas of the deployment, then the most free GPUs; ``binpack`` on the hosts with the
   fewest free GPUs that still fit. Ties go to the host name, so the output is deterministic.
3. Ports: ``port`` (+1 for each further replica on the same host) or the first free port of ``port_range``.
4. ``distributed: ray``: a replica that no single host fits spans the fewest hosts that do, each giving the same
   number of GPUs (``gpus_per_replica / hosts``); the head (its vLLM server and port) is the first of them by name.
   The replica's Ray cluster gets one block of ports free on all its hosts (``_ray/ports.py``). Such a replica is
   kept or removed as a whole: one part that no longer fits moves all of it (docs/ray.md).

An unschedulable deployment gets one error that says why for each host (``explain.py`` words it):
``chat-70b: 0/3 hosts fit — gpu-a: 2 GPUs free, needs 4; gpu-b: selector zone=eu1 not matched; gpu-c: unreachable``.

The package around it: ``capacity.py`` (the hosts, GPUs and per-replica needs the planner claims), ``explain.py``
(the unschedulable reasons), ``payload.py`` (plan → what the deployments role runs on each host). The planner itself
stays one file on purpose: its two phases share one mutable state (claims, ports, caches) and read as one algorithm.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.capacity import (
    Gpu,
    Host,
    Requirement,
    dir_allowed,
    local_path,
    natural_key,
    selector_miss,
    whole_host,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.explain import (
    Explainer,
    port_reason,
    whole_host_count_miss,
    whole_host_reason,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import gpu_ref, validate_deployments
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu import fit as vram
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import ports as ray_ports

REPLICA_NAME_RE = re.compile(r"^(?P<deployment>.+)-(?P<replica>\d+)$")


def container_name(deployment: str, replica: int) -> str:
    """The vllm_container ``name`` of a replica (the container is ``gpufleet-<this>``)."""
    return f"{deployment}-{replica}"


class _Planner:
    def __init__(
        self,
        hosts: Mapping[str, Mapping[str, Any]],
        deployments: list[dict[str, Any]],
        existing: Iterable[Mapping[str, Any]],
        prune: bool,
        move_from_unreachable: bool,
    ) -> None:
        order = sorted(hosts, key=natural_key)
        self.hosts = {name: Host(name, hosts[name], rank) for rank, name in enumerate(order)}
        self.order = [self.hosts[n] for n in order]
        self.deps = {d["name"]: d for d in deployments}
        self.host_infos = hosts
        self.prune = prune
        self.move_from_unreachable = move_from_unreachable
        self.existing = self._parse_existing(existing)
        self.assignments: dict[tuple[str, int], dict[str, Any]] = {}
        self.removals: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.undeclared: list[dict[str, Any]] = []
        self.estimates: dict[str, dict[str, Any]] = {}
        self.reqs: dict[str, Requirement] = {}
        self.sig_ids: dict[tuple, int] = {}
        self.sig_list: list[tuple] = []
        self.fit_cache: dict[tuple, int] = {}
        self.candidate_cache: dict[tuple, list[Host]] = {}
        for dep in deployments:
            est = _estimate(dep)
            self.estimates[dep["name"]] = est
            self.reqs[dep["name"]] = Requirement(dep, est["per_gpu_mib"], est["total_mib"])
        self.explain = Explainer(self.hosts, self.order, self.reqs, self.fit_count)
        # MiB that kept replicas the warm cache may put to sleep hold per (host, GPU): _warm_place counts it as free.
        self.soft: Counter[tuple[str, int]] = Counter()

    # -- existing placements ---------------------------------------------------------------------------------------

    def _parse_existing(self, existing: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for item in existing or []:
            dep = item.get("deployment")
            replica = item.get("replica")
            name = item.get("name")
            if replica is None:
                # Only a container key like "chat-1" (from the labels): split off the replica index.
                key = name if name is not None else dep
                match = REPLICA_NAME_RE.match(str(key or ""))
                if match and (dep is None or dep == key or dep == match["deployment"]):
                    dep, replica = match["deployment"], int(match["replica"])
                else:
                    dep, replica = dep or key, 0
            host = item.get("host")
            gpus_raw = item.get("gpus") or []
            if isinstance(gpus_raw, str):
                gpus_raw = [g for g in re.split(r"[,\s]+", gpus_raw) if g]
            port = item.get("port")
            ray_port = item.get("ray_port")
            out.append(
                {
                    "deployment": str(dep),
                    "replica": int(replica),
                    "name": container_name(str(dep), int(replica)),
                    "host": host,
                    "gpus_raw": list(gpus_raw),
                    "port": int(port) if port not in (None, "") else None,
                    # A part of a multi-host replica: its Ray role (head serves, worker only gives GPUs) and block.
                    "ray_role": item.get("ray_role") if item.get("ray_role") in ("head", "worker") else None,
                    "ray_port": int(ray_port) if ray_port not in (None, "") else None,
                }
            )

        # For duplicates of one replica, the copy on a reachable host comes first and is the one kept.
        def reachable(name: Any) -> bool:
            host = self.hosts.get(name)
            return bool(host and host.reachable)

        out.sort(
            key=lambda e: (
                e["deployment"],
                e["replica"],
                e["ray_role"] == "worker",
                not reachable(e["host"]),
                natural_key(str(e["host"])),
                e["port"] or 0,
            )
        )
        return out

    def _remove(self, ex: Mapping[str, Any], reason: str) -> None:
        removal = {
            "deployment": ex["deployment"],
            "replica": ex["replica"],
            "name": ex["name"],
            "host": ex["host"],
            "gpus": ex.get("gpus", []),
            "port": ex["port"],
            "reason": reason,
        }
        if ex.get("ray_role"):
            removal.update(ray_role=ex["ray_role"], ray_port=ex["ray_port"])
        self.removals.append(removal)

    def _release(self, host: Host, ex: Mapping[str, Any], held: Mapping[int, int]) -> None:
        for idx in ex.get("gpus", []):
            if idx in host.gpus:
                host.gpus[idx].avail += held.get(idx, 0)

    def phase_existing(self) -> None:
        """Decide for each existing placement: keep it (claims its GPUs and port) or remove it."""
        # Foreign ports: what the host reports in use, minus the ports of our own containers.
        managed_ports: dict[str, set[int]] = {}
        per_gpu: Counter[tuple[str, int]] = Counter()
        for ex in self.existing:
            host = self.hosts.get(ex["host"])
            if host is None:
                continue
            refs = [gpu_ref(g) for g in ex["gpus_raw"]]
            if not host.reachable and not host.gpus:
                # No facts from an unreachable host: keep what the placement says.
                ex["gpus"] = [r for r in refs if isinstance(r, int)]
                ex["gpus_missing"] = False
                continue
            ex["gpus"] = [i for i in (host.resolve(r) for r in refs) if i is not None]
            ex["gpus_missing"] = len(ex["gpus"]) != len(ex["gpus_raw"])
            if ex["port"] is not None:
                managed_ports.setdefault(host.name, set()).add(ex["port"])
            if ex["ray_port"] is not None:
                managed_ports.setdefault(host.name, set()).update(ray_ports.block(ex["ray_port"]))
            for idx in ex["gpus"]:
                per_gpu[(host.name, idx)] += 1
        for name, info in self.host_infos.items():
            used = {int(p) for p in info.get("used_ports") or [] if str(p).isdigit()}
            self.hosts[name].ports = used - managed_ports.get(name, set())

        # Memory an existing placement holds on each of its GPUs: the GPU's used memory, split over the
        # managed placements on it.
        held: dict[int, dict[int, int]] = {}
        for n, ex in enumerate(self.existing):
            host = self.hosts.get(ex["host"])
            if host is None:
                continue
            held[n] = {i: host.gpus[i].used // per_gpu[(host.name, i)] for i in ex["gpus"] if i in host.gpus}

        seen: set[tuple[str, int]] = set()
        candidates: list[list[tuple[int, dict[str, Any]]]] = []
        # The Ray workers of a multi-host replica are decided with its head: kept or removed as a whole.
        workers: dict[tuple[str, int], list[tuple[int, dict[str, Any]]]] = {}
        for n, ex in enumerate(self.existing):
            if ex["ray_role"] == "worker" and ex["host"] in self.hosts:
                workers.setdefault((ex["deployment"], ex["replica"]), []).append((n, ex))
        for n, ex in enumerate(self.existing):
            dep = self.deps.get(ex["deployment"])
            host = self.hosts.get(ex["host"])
            key = (ex["deployment"], ex["replica"])
            ex.setdefault("gpus", [])
            if host is None:
                self.warnings.append(
                    f"{ex['name']}: runs on {ex['host']}, which is not in the inventory; left alone, remove it by hand"
                )
                continue
            if ex["ray_role"] == "worker":
                continue  # with its head (below), or removed after the loop when it has none
            parts = [(n, ex), *workers.pop(key, [])] if ex["ray_role"] == "head" else [(n, ex)]
            if dep is None:
                if self.prune:
                    for pn, part in parts:
                        self._remove(part, "not declared in gpufleet_deployments (prune)")
                        self._release(self.hosts[part["host"]], part, held[pn])
                else:
                    self.undeclared.extend(
                        {k: part[k] for k in ("deployment", "replica", "name", "host", "gpus", "port")}
                        for _pn, part in parts
                    )
                    candidates.append(parts)  # keeps its GPUs
                continue
            reason = self._keep_blocker(dep, host, ex, key in seen, [part for _pn, part in parts])
            if reason == "unreachable":
                move = dep["move_from_unreachable"]
                if move is None:
                    move = self.move_from_unreachable
                if move:
                    for _pn, part in parts:
                        self._remove(part, "moved: host unreachable")
                    continue
                seen.add(key)
                down = [p["host"] for _pn, p in parts if not self.hosts[p["host"]].reachable]  # a Ray worker's too
                self.warnings.append(
                    f"{ex['name']}: {', '.join(down)} {'is' if len(down) == 1 else 'are'} unreachable; "
                    "its placement is kept, not moved"
                )
                ray = self._kept_ray(parts)
                self._hold_reachable_parts(dep, parts, held)
                self._assign(dep, ex["replica"], host, ex["gpus"], ex["port"], ex, claim=False, ray=ray)
                continue
            if reason:
                for pn, part in parts:
                    self._remove(part, reason)
                    self._release(self.hosts[part["host"]], part, held[pn])
                    if not self.hosts[part["host"]].reachable:
                        self.warnings.append(
                            f"{part['name']}: {part['host']} is unreachable; its removal waits until it is back"
                        )
                continue
            seen.add(key)
            candidates.append(parts)
        for orphans in workers.values():  # Ray workers whose head is gone: nothing can use them
            for pn, part in orphans:
                self._remove(part, "its Ray head is gone")
                self._release(self.hosts[part["host"]], part, held[pn])

        # Memory fit of the placements that passed the other checks; released memory counts as free.
        for parts in candidates:
            n, ex = parts[0]
            host = self.hosts[ex["host"]]
            dep = self.deps.get(ex["deployment"])
            if dep is None:  # undeclared, kept: blocks its GPUs and port
                for _pn, part in parts:
                    phost = self.hosts[part["host"]]
                    for idx in part["gpus"]:
                        self._claim(phost.gpus[idx], part["deployment"], sharing=False)
                    phost.ports.update(p for p in [part["port"]] if p is not None)
                    phost.ports.update(ray_ports.block(part["ray_port"]) if part["ray_port"] is not None else ())
                continue
            req = self.reqs[dep["name"]]
            reason = None
            for pn, part in parts:
                reason = self._memory_blocker(req, self.hosts[part["host"]], part, held[pn])
                if reason:
                    break
            if reason:
                for pn, part in parts:
                    self._remove(part, f"no longer fits: {reason}")
                    self._release(self.hosts[part["host"]], part, held[pn])
                continue
            for pn, part in parts:
                phost = self.hosts[part["host"]]
                for idx in part["gpus"]:
                    gpu = phost.gpus[idx]
                    gpu.avail += held[pn].get(idx, 0)  # its memory is now accounted as this plan's claim
                    self._claim(gpu, dep["name"], req.sharing, req.reserve(gpu.total))
                    if dep.get("idle_pause_after") is not None and not dep.get("pin"):
                        self.soft[(phost.name, idx)] += req.reserve(gpu.total)
            port = ex["port"]
            if port is None or not self._port_ok(dep, port) or port in host.ports:
                port = None  # keeps host and GPUs, gets a new port in the next phase
            else:
                host.ports.add(port)
            ray = self._kept_ray(parts)
            if ray is not None:
                for _pn, part in parts:
                    self.hosts[part["host"]].ports.update(ray_ports.block(ray["port"]))
            self._assign(dep, ex["replica"], host, ex["gpus"], port, ex, claim=False, ray=ray)

    def _hold_reachable_parts(
        self, dep: Mapping[str, Any], parts: list[tuple[int, dict[str, Any]]], held: Mapping[int, Mapping[int, int]]
    ) -> None:
        """A multi-host replica kept for its unreachable part still holds the GPUs, port and Ray block of its parts on
        reachable hosts: nothing else is placed there."""
        if len(parts) < 2:
            return
        req = self.reqs[dep["name"]]
        for pn, part in parts:
            phost = self.hosts[part["host"]]
            if not phost.reachable:
                continue
            for idx in part["gpus"]:
                if idx in phost.gpus:
                    phost.gpus[idx].avail += held[pn].get(idx, 0)
                    self._claim(phost.gpus[idx], dep["name"], req.sharing, req.reserve(phost.gpus[idx].total))
            phost.ports.update(p for p in [part["port"]] if p is not None)
            phost.ports.update(ray_ports.block(part["ray_port"]) if part["ray_port"] is not None else ())

    def _memory_blocker(
        self, req: Requirement, host: Host, ex: Mapping[str, Any], held: Mapping[int, int]
    ) -> str | None:
        """Why the GPUs of a kept placement no longer hold it (None: they do); its own memory counts as free."""
        for idx in ex["gpus"]:
            gpu = host.gpus[idx]
            where = f"GPU {idx}" if not ex["ray_role"] else f"GPU {idx} of {host.name}"
            if gpu.claims and not (req.sharing and gpu.sharing):
                return f"{where} also used by {gpu.claims[0]}"
            if req.need is not None and req.usable(gpu.total) < req.need:
                return (
                    f"{where} too small: needs {req.need} MiB, "
                    f"{req.reserve_frac:g} x {gpu.total} MiB = {req.usable(gpu.total)} MiB usable"
                )
            if gpu.avail + held.get(idx, 0) < req.reserve(gpu.total):
                return (
                    f"{where} has {gpu.avail + held.get(idx, 0)} MiB free, "
                    f"needs {req.reserve_frac:g} x {gpu.total} MiB = {req.reserve(gpu.total)} MiB"
                )
        return None

    @staticmethod
    def _kept_ray(parts: list[tuple[int, dict[str, Any]]]) -> dict[str, Any] | None:
        """The ``ray`` field of a kept multi-host replica (None for a one-host replica)."""
        head = parts[0][1]
        if head["ray_role"] != "head":
            return None
        workers = [{"host": p["host"], "gpus": sorted(p["gpus"])} for _pn, p in parts[1:]]
        return {"port": head["ray_port"], "workers": workers}

    def _keep_blocker(
        self,
        dep: Mapping[str, Any],
        host: Host,
        ex: Mapping[str, Any],
        duplicate: bool,
        parts: list[Mapping[str, Any]] | None = None,
    ) -> str | None:
        """Why an existing placement cannot stay (None: it can, if memory still fits). ``parts``: the head and the
        Ray workers of a multi-host replica (checked as one)."""
        if dep["state"] == "absent":
            return "state: absent"
        if ex["replica"] >= dep["replicas"]:
            return f"scaled down to {dep['replicas']} replica{'s' if dep['replicas'] != 1 else ''}"
        if duplicate:
            return "duplicate of a replica kept elsewhere"
        parts = list(parts or [ex])
        if any(not self.hosts[p["host"]].reachable for p in parts):
            return "unreachable"
        if dep["host"] is not None and dep["host"] != host.name:
            return f"pinned to {dep['host']}"
        if len(parts) > 1 and dep.get("distributed") != "ray":
            return "distributed is none: a replica's GPUs must be on one host"
        if ex["ray_role"] == "head" and (len(parts) == 1 or ex["ray_port"] is None):
            return "its Ray workers are gone" if len(parts) == 1 else "its Ray port is unknown"
        if any(p["gpus_missing"] for p in parts):
            return "its GPU is no longer on the host"
        count = sum(len(p["gpus"]) for p in parts)
        if whole_host(dep):  # every GPU of the host, as many as the tensor parallel size asks
            if count != len(host.gpus):
                return f"gpus: all is now {len(host.gpus)} GPUs (was {count})"
            miss = whole_host_count_miss(dep, count)
            if miss:
                return miss
        elif count != dep["gpus_per_replica"]:
            return f"gpus_per_replica is now {dep['gpus_per_replica']} (was {count})"
        if isinstance(dep["gpus"], list):
            pinned = self._pinned_gpus(dep, host, ex["replica"])
            if pinned is None or sorted(pinned) != sorted(ex["gpus"]):
                return "pinned to other GPUs"
        for part in parts:
            phost = self.hosts[part["host"]]
            on = f" on {phost.name}" if len(parts) > 1 else ""
            selector = selector_miss(dep, phost)
            if selector:
                return f"selector {selector} not matched{on}"
            if not dir_allowed(dep, phost):
                return f"model path {dep['model']['path']} not under gpufleet_allowed_model_dirs{on}"
            for idx in part["gpus"]:
                if phost.gpus[idx].reserved:
                    return f"GPU {idx}{on} reserved ({phost.gpus[idx].reserved})"
        return None

    # -- claims and bookkeeping ------------------------------------------------------------------------------------

    def _claim(self, gpu: Gpu, dep: str, sharing: bool, reserve: int = 0) -> None:
        gpu.claims.append(dep)
        gpu.sharing = gpu.sharing and sharing
        gpu.avail -= reserve

    def _assign(
        self,
        dep: Mapping[str, Any],
        replica: int,
        host: Host,
        gpus: list[int],
        port: int | None,
        previous: Mapping[str, Any] | None,
        claim: bool = True,
        ray: Mapping[str, Any] | None = None,
    ) -> None:
        req = self.reqs[dep["name"]]
        if claim:
            for idx in gpus:
                gpu = host.gpus[idx]
                self._claim(gpu, dep["name"], req.sharing, req.reserve(gpu.total))
            if port is not None:
                host.ports.add(port)
        for worker in ray["workers"] if ray else []:
            whost = self.hosts[worker["host"]]
            if claim:
                for idx in worker["gpus"]:
                    self._claim(whost.gpus[idx], dep["name"], req.sharing, req.reserve(whost.gpus[idx].total))
            whost.deployments[dep["name"]] += 1
            whost.sig = -1
            whost.full_sig = None
        host.deployments[dep["name"]] += 1
        if any(i in host.gpus and host.gpus[i].sharing and host.gpus[i].claims for i in gpus):
            host.has_shared = True
        host.sig = -1
        host.full_sig = None
        self.assignments[(dep["name"], replica)] = {
            "deployment": dep["name"],
            "replica": replica,
            "name": container_name(dep["name"], replica),
            "host": host.name,
            "gpus": sorted(gpus),
            "port": port,
            "previous": (
                {"host": previous["host"], "gpus": sorted(previous.get("gpus", [])), "port": previous["port"]}
                if previous
                else None
            ),
            # A multi-host replica (distributed: ray): {port: its Ray block's base, workers: [{host, gpus}]}.
            "ray": {"port": ray["port"], "workers": [dict(w) for w in ray["workers"]]} if ray else None,
        }

    def _port_ok(self, dep: Mapping[str, Any], port: int) -> bool:
        if dep["port_range"]:
            lo, hi = dep["port_range"]
            return lo <= port <= hi
        base = dep["port"]
        return base <= port < base + max(1, dep["replicas"])

    def _free_port(self, dep: Mapping[str, Any], host: Host) -> int | None:
        if dep["port_range"]:
            lo, hi = dep["port_range"]
        else:
            lo, hi = dep["port"], min(65535, dep["port"] + max(1, dep["replicas"]) - 1)
        for port in range(lo, hi + 1):
            if port not in host.ports:
                return port
        return None

    # -- fitting ---------------------------------------------------------------------------------------------------

    def _signature(self, host: Host) -> int:
        if host.sig < 0:
            counts: Counter[tuple[int, int]] = Counter()
            for gpu in host.gpus.values():
                if not gpu.reserved and not gpu.unhealthy and not gpu.claims:
                    counts[(gpu.total, gpu.avail)] += 1
            sig = tuple(sorted(counts.items()))
            sig_id = self.sig_ids.get(sig)
            if sig_id is None:
                sig_id = self.sig_ids[sig] = len(self.sig_list)
                self.sig_list.append(sig)
            host.sig = sig_id
        return host.sig

    def _gpu_fits(self, gpu: Gpu, req: Requirement) -> bool:
        if gpu.reserved or gpu.unhealthy:
            return False
        if gpu.claims and not (req.sharing and gpu.sharing and req.name not in gpu.claims):
            return False
        return req.fits_mem(gpu.total, gpu.avail)

    def fit_count(self, host: Host, req: Requirement) -> int:
        """How many GPUs of the host one more replica of ``req`` could use now."""
        if req.sharing and host.has_shared:
            return sum(1 for g in host.gpus.values() if self._gpu_fits(g, req))
        sig = self._signature(host)
        key = (sig, req.key)
        count = self.fit_cache.get(key)
        if count is None:
            count = sum(n for (total, avail), n in self.sig_list[sig] if req.fits_mem(total, avail))
            self.fit_cache[key] = count
        return count

    def _pinned_gpus(self, dep: Mapping[str, Any], host: Host, replica: int) -> list[int] | None:
        gpr = dep["gpus_per_replica"]
        chunk = dep["gpus"][replica * gpr : (replica + 1) * gpr]
        resolved = [host.resolve(g) for g in chunk]
        if len(resolved) != gpr or any(r is None for r in resolved):
            return None
        return resolved  # type: ignore[return-value]

    def _candidates(self, dep: Mapping[str, Any]) -> list[Host]:
        path = local_path(dep)
        key = (dep["host"], tuple(sorted((k, tuple(v)) for k, v in dep["selector"].items())), path)
        hosts = self.candidate_cache.get(key)
        if hosts is None:
            pool = [self.hosts[dep["host"]]] if dep["host"] in self.hosts else ([] if dep["host"] else self.order)
            hosts = [h for h in pool if h.reachable and not selector_miss(dep, h) and dir_allowed(dep, h)]
            self.candidate_cache[key] = hosts
        return hosts

    def _pick_gpus(
        self, dep: Mapping[str, Any], host: Host, replica: int, prefer: list[int], count: int | None = None
    ) -> list[int] | None:
        req = self.reqs[dep["name"]]
        need = count or req.gpr  # count: this host's share of a multi-host replica
        if dep["gpus"] is not None:
            pinned = self._pinned_gpus(dep, host, replica)
            if pinned is None or not all(self._gpu_fits(host.gpus[i], req) for i in pinned):
                return None
            return pinned
        fitting = [i for i in sorted(host.gpus) if self._gpu_fits(host.gpus[i], req)]
        if len(fitting) < need:
            return None
        preferred = [i for i in prefer if i in fitting]
        if len(preferred) >= need:
            return sorted(preferred[:need])
        if req.sharing and not dep["gpus"]:
            # Shared GPUs first (fill them), then empty ones.
            fitting.sort(key=lambda i: (not host.gpus[i].claims, i))
        return sorted(fitting[:need])

    def _host_key(self, dep: Mapping[str, Any], host: Host, fit: int) -> tuple:
        if dep["placement"] == "binpack":
            return (fit, host.rank)
        return (host.deployments[dep["name"]], -fit, host.rank)

    def phase_place(self) -> None:
        """Place every replica that has no placement yet; give kept placements with a stale port a new one."""
        order = sorted(
            (d for d in self.deps.values() if d["state"] == "present"),
            key=lambda d: (
                d["host"] is None,
                not whole_host(d),  # whole hosts are the hardest to find
                -(d["gpus_per_replica"] or 0),
                -(self.reqs[d["name"]].need or 0),
                d["name"],
            ),
        )
        dropped: dict[tuple[str, int], dict[str, Any]] = {}
        for rem in self.removals:
            dropped.setdefault((rem["deployment"], rem["replica"]), rem)
        # Kept placements with a stale port get a new port on the same host before new replicas take ports.
        for dep in order:
            for replica in range(dep["replicas"]):
                asg = self.assignments.get((dep["name"], replica))
                if asg and asg["port"] is None and self.hosts[asg["host"]].reachable:
                    host = self.hosts[asg["host"]]
                    port = self._free_port(dep, host)
                    if port is None:
                        self._fail(dep, f"{asg['name']} on {host.name}: {port_reason(dep)}")
                    else:
                        host.ports.add(port)
                        asg["port"] = port
        for dep in order:
            missing = [r for r in range(dep["replicas"]) if (dep["name"], r) not in self.assignments]
            if missing:
                self._place_missing(dep, missing, dropped)

    def _place_missing(
        self, dep: Mapping[str, Any], missing: list[int], dropped: Mapping[tuple[str, int], Mapping[str, Any]]
    ) -> None:
        if whole_host(dep):
            self._place_whole_hosts(dep, missing, dropped)
            return
        req = self.reqs[dep["name"]]
        candidates = self._candidates(dep)
        heap: list[tuple] | None = None
        skipped: dict[str, str] = {}
        for pos, replica in enumerate(missing):
            prev = dropped.get((dep["name"], replica))
            placed = False
            # Stability: a replica that had to leave its GPUs first tries its previous host again.
            if prev is not None and prev["host"] in self.hosts:
                host = self.hosts[prev["host"]]
                if host in candidates and self.fit_count(host, req) >= req.gpr:
                    placed = self._try_host(dep, host, replica, prev, prev.get("gpus", []))
            while not placed:
                if heap is None:
                    heap = []
                    for host in candidates:
                        if host.name in skipped:
                            continue
                        fit = self.fit_count(host, req)
                        if fit >= req.gpr:
                            heap.append((self._host_key(dep, host, fit), host.name))
                    heapq.heapify(heap)
                if not heap:
                    break
                key, name = heapq.heappop(heap)
                host = self.hosts[name]
                fit = self.fit_count(host, req)
                if fit < req.gpr:
                    continue
                current = self._host_key(dep, host, fit)
                if current != key:  # stale entry: re-queue with its current key
                    heapq.heappush(heap, (current, name))
                    continue
                placed = self._try_host(dep, host, replica, prev, [])
                if not placed:
                    skipped[name] = port_reason(dep) if dep["gpus"] is None else ""
                    continue
                fit = self.fit_count(host, req)
                if fit >= req.gpr:
                    heapq.heappush(heap, (self._host_key(dep, host, fit), name))
            if not placed:
                placed = self._warm_place(dep, replica, prev, candidates)
            if not placed and dep.get("distributed") == "ray":
                placed = self._place_ray(dep, replica, candidates)
            if not placed:
                self._unschedulable(dep, missing[pos:], skipped)
                return

    def _warm_place(
        self, dep: Mapping[str, Any], replica: int, prev: Mapping[str, Any] | None, candidates: list[Host]
    ) -> bool:
        """The warm cache, when nothing else fits: memory that kept replicas with ``idle_pause_after`` (not pinned)
        hold on shareable GPUs counts as free; on the host the least recently used of them go to sleep before this
        replica starts (``_container/warm.py``). The first candidate host in order with enough such GPUs and a port."""
        req = self.reqs[dep["name"]]
        if dep["gpus"] is not None or not self.soft:
            return False

        def fits(host: Host, idx: int) -> bool:
            gpu, soft = host.gpus[idx], self.soft[(host.name, idx)]
            if not soft or gpu.reserved or gpu.unhealthy:
                return False
            shared = req.sharing and gpu.sharing and req.name not in gpu.claims
            return shared and req.fits_mem(gpu.total, gpu.avail + soft)

        for host in candidates:
            gpus = [i for i in sorted(host.gpus) if fits(host, i)][: req.gpr]
            port = self._free_port(dep, host) if len(gpus) == req.gpr else None
            if port is None:
                continue
            borrowed = {i: max(0, req.reserve(host.gpus[i].total) - host.gpus[i].avail) for i in gpus}
            self._assign(dep, replica, host, gpus, port, prev)
            for i, mib in borrowed.items():
                self.soft[(host.name, i)] -= mib
            self.warnings.append(
                f"{container_name(dep['name'], replica)}: placed on {host.name} GPU {','.join(map(str, gpus))} by the "
                "warm cache: the least recently used replicas there with idle_pause_after go to sleep when it starts"
            )
            return True
        return False

    def _place_ray(self, dep: Mapping[str, Any], replica: int, candidates: list[Host]) -> bool:
        """A replica no single host fits, over the fewest hosts that each give ``gpus_per_replica / n`` GPUs (the
        usual vLLM layout: the same share per node); the hosts in the deployment's spread/binpack order, the head the
        first of them by name. One Ray port block free on all of them."""
        req = self.reqs[dep["name"]]
        for count in range(2, min(req.gpr, len(candidates)) + 1):
            if req.gpr % count:
                continue
            share = req.gpr // count
            fits = [
                (self._host_key(dep, h, fit), h.rank, h) for h in candidates if (fit := self.fit_count(h, req)) >= share
            ]
            if len(fits) < count:
                continue
            chosen = sorted((entry[2] for entry in sorted(fits, key=lambda t: t[:2])[:count]), key=lambda h: h.rank)
            head = chosen[0]
            port = self._free_port(dep, head)
            base = next(
                (b for b in ray_ports.bases() if all(not h.ports & set(ray_ports.block(b)) for h in chosen)), None
            )
            picks = [self._pick_gpus(dep, h, replica, [], count=share) for h in chosen]
            if port is None or base is None or any(p is None for p in picks):
                continue
            for h in chosen:
                h.ports.update(ray_ports.block(base))
            workers = [{"host": h.name, "gpus": p} for h, p in zip(chosen[1:], picks[1:], strict=True)]
            self._assign(dep, replica, head, picks[0], port, None, ray={"port": base, "workers": workers})
            return True
        return False

    def _place_whole_hosts(
        self, dep: Mapping[str, Any], missing: list[int], dropped: Mapping[tuple[str, int], Mapping[str, Any]]
    ) -> None:
        """``gpus: all``: each replica gets every GPU of one host that no other replica uses (its previous host first;
        then ``spread`` takes the hosts with the most GPUs, ``binpack`` those with the fewest; ties by name)."""
        req = self.reqs[dep["name"]]
        sign = 1 if dep["placement"] == "binpack" else -1
        for pos, replica in enumerate(missing):
            prev = dropped.get((dep["name"], replica))
            order = sorted(
                self._candidates(dep),
                key=lambda h: (prev is None or h.name != prev["host"], sign * len(h.gpus), h.rank),
            )
            for host in order:
                port = self._free_port(dep, host)
                if port is not None and whole_host_reason(dep, host, req) is None:
                    self._assign(dep, replica, host, sorted(host.gpus), port, prev)
                    break
            else:
                self._unschedulable(dep, missing[pos:], {})
                return

    def _try_host(
        self, dep: Mapping[str, Any], host: Host, replica: int, prev: Mapping[str, Any] | None, prefer: list[int]
    ) -> bool:
        gpus = self._pick_gpus(dep, host, replica, prefer)
        if gpus is None:
            return False
        port = self._free_port(dep, host)
        if port is None:
            return False
        self._assign(dep, replica, host, gpus, port, prev)
        return True

    # -- errors ----------------------------------------------------------------------------------------------------

    def _unschedulable(self, dep: Mapping[str, Any], missing: list[int], skipped: Mapping[str, str]) -> None:
        text, reasons = self.explain.unschedulable(dep, missing, skipped)
        self._fail(dep, text, missing=missing, hosts=reasons)

    def _fail(self, dep: Mapping[str, Any], text: str, missing: list[int] | None = None, hosts: Any = None) -> None:
        self.errors.append(
            {
                "deployment": dep["name"],
                "message": f"{dep['name']}: {text}",
                "missing_replicas": missing or [],
                "hosts": dict(hosts or {}),
            }
        )

    # -- result ----------------------------------------------------------------------------------------------------

    def _warn_unhealthy(self, asg: Mapping[str, Any]) -> None:
        """A kept replica on a GPU that turned unhealthy stays (moving it is the operator's call), with a warning."""
        parts = [(asg["host"], asg["gpus"])]
        parts += [(w["host"], w["gpus"]) for w in (asg.get("ray") or {}).get("workers") or []]
        for name, idxs in parts:
            host = self.hosts[name]
            for idx in idxs:
                if idx in host.gpus and host.gpus[idx].unhealthy:
                    self.warnings.append(
                        f"{asg['name']}: runs on {name} GPU {idx}, which is unhealthy ({host.gpus[idx].unhealthy}); "
                        "kept there, no new replica goes to that GPU"
                    )

    def result(self) -> dict[str, Any]:
        assignments = []
        for key in sorted(self.assignments):
            asg = self.assignments[key]
            host = self.hosts[asg["host"]]
            prev = asg["previous"]
            if prev is None:
                action = "create"
            elif prev["host"] != asg["host"]:
                action = "move"
            elif prev["gpus"] == asg["gpus"] and prev["port"] == asg["port"]:
                action = "keep"
            else:
                action = "update"
            req = self.reqs[asg["deployment"]]
            asg = dict(asg)
            if asg["ray"] is not None:  # the workers' GPUs by UUID too
                asg["ray"] = {
                    "port": asg["ray"]["port"],
                    "workers": [
                        # (none known for an unreachable host without facts, as for a head there)
                        {
                            **w,
                            "gpu_uuids": [
                                self.hosts[w["host"]].gpus[i].uuid for i in w["gpus"] if i in self.hosts[w["host"]].gpus
                            ],
                        }
                        for w in asg["ray"]["workers"]
                    ],
                }
            asg.update(
                action=action,
                reachable=host.reachable,
                gpu_uuids=[host.gpus[i].uuid for i in asg["gpus"] if i in host.gpus],
                gpu_names=[host.gpus[i].name for i in asg["gpus"] if i in host.gpus],
                vram_per_gpu_mib=req.per_gpu(len(asg["gpus"])),
                gpus_all=req.whole_host,
                hosts=[asg["host"], *(w["host"] for w in (asg["ray"] or {}).get("workers", []))],
            )
            assignments.append(asg)
            self._warn_unhealthy(asg)
        # A replica re-placed on the host it leaves is replaced in place by vllm_container, not removed.
        # The parts of a multi-host replica are always removed first (a Ray head or worker is not updated in place).
        in_place = {(a["name"], a["host"]) for a in self.assignments.values() if a["ray"] is None}
        removals = [r for r in self.removals if "ray_role" in r or (r["name"], r["host"]) not in in_place]
        removals = sorted(removals, key=lambda r: (r["deployment"], r["replica"], natural_key(str(r["host"]))))
        errors = sorted(self.errors, key=lambda e: e["deployment"])
        return {
            "assignments": assignments,
            "removals": removals,
            "undeclared": sorted(self.undeclared, key=lambda u: (u["deployment"], u["replica"])),
            "errors": errors,
            "warnings": sorted(set(self.warnings)),
            "estimates": {k: self.estimates[k] for k in sorted(self.estimates)},
        }


def _estimate(dep: Mapping[str, Any]) -> dict[str, Any]:
    engine = dep.get("engine_options") or {}
    dtype = dep.get("model_dtype")
    for candidate in (dtype, engine.get("quantization"), engine.get("dtype")):
        if candidate is not None and str(candidate).lower().removeprefix("torch.") in vram.DTYPE_BYTES:
            dtype = candidate
            break
    lora = sum(int(m.get("size_bytes") or 0) for m in dep.get("lora_modules") or [])
    return vram.estimate(
        size_bytes=dep.get("model_size_bytes"),
        num_parameters=dep.get("num_parameters"),
        dtype=dtype,
        lora_bytes=lora,
        gpus=dep.get("gpus_per_replica") or 1,
        override_mib=dep.get("vram_mib"),
    )


def plan(
    hosts: Mapping[str, Mapping[str, Any]],
    deployments: Any,
    existing: Iterable[Mapping[str, Any]] = (),
    *,
    prune: bool = False,
    move_from_unreachable: bool = False,
) -> dict[str, Any]:
    """Place every replica of ``deployments`` on ``hosts``, keeping ``existing`` placements that still fit.

    ``hosts``: ``{name: {reachable, labels, gpus: [gpu_facts entries], reservations, used_ports,
    allowed_model_dirs}}``. ``deployments``: ``gpufleet_deployments`` (validated here; a schema problem raises
    GpufleetError). ``existing``: managed placements on the hosts: ``{deployment, replica, host, gpus, port}`` or
    ``{name: "<deployment>-<replica>", host, gpus, port}``.

    Returns ``{"assignments": [...], "removals": [...], "undeclared": [...], "errors": [...], "warnings": [...],
    "estimates": {...}}``, every list sorted. An assignment is ``{deployment, replica, name, host, gpus, gpu_uuids,
    gpu_names, port, action: keep|update|move|create, previous, reachable, vram_per_gpu_mib}``; an error
    ``{deployment, message, missing_replicas, hosts: {host: reason}}``.
    """
    return place_validated(hosts, validate_deployments(list(deployments or [])), existing, prune, move_from_unreachable)


def place_validated(
    hosts: Mapping[str, Mapping[str, Any]],
    deps: list[dict[str, Any]],
    existing: Iterable[Mapping[str, Any]],
    prune: bool,
    move_from_unreachable: bool,
) -> dict[str, Any]:
    """``plan()`` over deployments ``validate_deployments`` already normalized (``fleet_plan`` validates once)."""
    planner = _Planner(hosts, deps, existing, prune, move_from_unreachable)
    planner.phase_existing()
    planner.phase_place()
    return planner.result()
