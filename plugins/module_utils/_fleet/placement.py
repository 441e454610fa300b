# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Placement: which host, GPUs and port each replica of each declared deployment gets.

``plan(hosts, deployments, existing)`` is a pure function (no I/O), run once on the controller by the
``fleet_plan`` action. Rules, in order:

1. Existing managed placements are kept where they are while they still fit (stable: a re-run moves nothing).
   They are removed when the deployment is ``state: absent`` or undeclared (with ``prune``), scaled down, pinned
   elsewhere, given another GPU count, or no longer fit (selector, reservation, VRAM). Placements on unreachable hosts
   are kept and reported, and moved only with ``move_from_unreachable``.
2. Missing replicas are placed: pinned deployments first, then the largest. A GPU fits when it is not reserved, not
   used by another deployment (unless both allow ``gpu_sharing``), ``gpu_memory_utilization`` x total covers the
   VRAM estimate per GPU (``vram.py``) and at least ``gpu_memory_utilization`` x total is free (memory held by
   placements this plan removes, the deployment's own included, counts as free). ``spread`` puts replicas on the
   hosts with the fewest replicas of the deployment, then the most free GPUs; ``binpack`` on the hosts with the
   fewest free GPUs that still fit. Ties go to the host name, so the output is deterministic.
3. Ports: ``port`` (+1 for each further replica on the same host) or the first free port of ``port_range``.

An unschedulable deployment gets one error that says why for each host:
``chat-70b: 0/3 hosts fit — gpu-a: 2 GPUs free, needs 4; gpu-b: selector zone=eu1 not matched; gpu-c: unreachable``.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._duration import INFINITE, format_duration
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import (
    DEFAULT_MODELS_ROOT,
    _gpu_ref,
    _Problems,
    normalize_reservations,
    validate_deployments,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu import fit as vram
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.sync import model_path

GROUP_REASONS_ABOVE = 12  # more hosts than this: the message groups hosts by reason
REPLICA_NAME_RE = re.compile(r"^(?P<deployment>.+)-(?P<replica>\d+)$")


def container_name(deployment: str, replica: int) -> str:
    """The vllm_container ``name`` of a replica (the container is ``gpufleet-<this>``)."""
    return f"{deployment}-{replica}"


def _natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


class _Gpu:
    __slots__ = ("avail", "claims", "index", "name", "reserved", "sharing", "total", "used", "uuid")

    def __init__(self, facts: Mapping[str, Any]) -> None:
        self.index = int(facts["index"])
        self.uuid = facts.get("uuid")
        self.name = facts.get("name")
        self.total = int(facts.get("memory_total_mib") or 0)
        free = facts.get("memory_free_mib")
        used = facts.get("memory_used_mib")
        self.avail = int(free) if free is not None else max(0, self.total - int(used or 0))
        self.used = int(used) if used is not None else max(0, self.total - self.avail)
        self.reserved: str | None = None  # reason when the whole GPU is reserved
        self.claims: list[str] = []  # deployments planned on this GPU (kept or new)
        self.sharing = True  # every claim allows sharing


class _Host:
    __slots__ = (
        "allowed_dirs",
        "deployments",
        "full_sig",
        "gpus",
        "has_shared",
        "labels",
        "name",
        "ports",
        "rank",
        "reachable",
        "sig",
        "uuid_index",
    )

    def __init__(self, name: str, info: Mapping[str, Any], rank: int) -> None:
        self.name = name
        self.rank = rank
        self.reachable = bool(info.get("reachable", True))
        self.labels = {str(k): _label(v) for k, v in (info.get("labels") or {}).items()}
        self.gpus: dict[int, _Gpu] = {}
        for facts in info.get("gpus") or []:
            gpu = _Gpu(facts)
            self.gpus[gpu.index] = gpu
        self.uuid_index = {g.uuid: g.index for g in self.gpus.values() if g.uuid}
        dirs = info.get("allowed_model_dirs")
        self.allowed_dirs: list[str] | None = [d.rstrip("/") or "/" for d in dirs] if dirs else None
        self.ports: set[int] = set()
        self.deployments: Counter[str] = Counter()
        self.has_shared = False
        self.sig = -1
        self.full_sig: tuple | None = None
        problems = _Problems()
        for res in normalize_reservations(info.get("reservations"), name, problems):
            idx = self.resolve(res["gpu"])
            if idx is None:
                continue
            gpu = self.gpus[idx]
            if res["memory_mib"] is None:
                gpu.reserved = res["reason"] or "reserved"
            else:
                gpu.avail = max(0, gpu.avail - res["memory_mib"])

    def resolve(self, ref: int | str | None) -> int | None:
        """A GPU index or UUID → the index on this host; None if the host has no such GPU."""
        if isinstance(ref, int):
            return ref if ref in self.gpus else None
        if isinstance(ref, str):
            if ref.isdigit():
                return self.resolve(int(ref))
            return self.uuid_index.get(ref)
        return None


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Req:
    """What one replica of a deployment needs from each of its GPUs."""

    __slots__ = ("gpr", "key", "name", "need", "reserve_frac", "sharing")

    def __init__(self, dep: Mapping[str, Any], need: int | None) -> None:
        self.name: str = dep["name"]
        self.gpr: int = dep["gpus_per_replica"]
        self.need = need  # MiB per GPU, None = unknown
        self.reserve_frac: float = dep["gpu_memory_utilization"]
        self.sharing: bool = bool(dep["gpu_sharing"])
        self.key = (need, self.reserve_frac)

    def usable(self, total: int) -> int:
        return int(total * self.reserve_frac)

    def reserve(self, total: int) -> int:
        return math.ceil(total * self.reserve_frac)

    def fits_mem(self, total: int, avail: int) -> bool:
        if self.need is not None and self.usable(total) < self.need:
            return False
        return avail >= self.reserve(total)


class _Planner:
    def __init__(
        self,
        hosts: Mapping[str, Mapping[str, Any]],
        deployments: list[dict[str, Any]],
        existing: Iterable[Mapping[str, Any]],
        prune: bool,
        move_from_unreachable: bool,
    ) -> None:
        order = sorted(hosts, key=_natural_key)
        self.hosts = {name: _Host(name, hosts[name], rank) for rank, name in enumerate(order)}
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
        self.reqs: dict[str, _Req] = {}
        self.sig_ids: dict[tuple, int] = {}
        self.sig_list: list[tuple] = []
        self.fit_cache: dict[tuple, int] = {}
        self.candidate_cache: dict[tuple, list[_Host]] = {}
        self.reason_cache: dict[tuple, str] = {}
        for dep in deployments:
            est = _estimate(dep)
            self.estimates[dep["name"]] = est
            self.reqs[dep["name"]] = _Req(dep, est["per_gpu_mib"])

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
            out.append(
                {
                    "deployment": str(dep),
                    "replica": int(replica),
                    "name": container_name(str(dep), int(replica)),
                    "host": host,
                    "gpus_raw": list(gpus_raw),
                    "port": int(port) if port not in (None, "") else None,
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
                not reachable(e["host"]),
                _natural_key(str(e["host"])),
                e["port"] or 0,
            )
        )
        return out

    def _remove(self, ex: Mapping[str, Any], reason: str) -> None:
        self.removals.append(
            {
                "deployment": ex["deployment"],
                "replica": ex["replica"],
                "name": ex["name"],
                "host": ex["host"],
                "gpus": ex.get("gpus", []),
                "port": ex["port"],
                "reason": reason,
            }
        )

    def _release(self, host: _Host, ex: Mapping[str, Any], held: Mapping[int, int]) -> None:
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
            refs = [_gpu_ref(g) for g in ex["gpus_raw"]]
            if not host.reachable and not host.gpus:
                # No facts from an unreachable host: keep what the placement says.
                ex["gpus"] = [r for r in refs if isinstance(r, int)]
                ex["gpus_missing"] = False
                continue
            ex["gpus"] = [i for i in (host.resolve(r) for r in refs) if i is not None]
            ex["gpus_missing"] = len(ex["gpus"]) != len(ex["gpus_raw"])
            if ex["port"] is not None:
                managed_ports.setdefault(host.name, set()).add(ex["port"])
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
        candidates: list[tuple[int, dict[str, Any]]] = []
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
            if dep is None:
                if self.prune:
                    self._remove(ex, "not declared in gpufleet_deployments (prune)")
                    self._release(host, ex, held[n])
                else:
                    self.undeclared.append(
                        {k: ex[k] for k in ("deployment", "replica", "name", "host", "gpus", "port")}
                    )
                    candidates.append((n, ex))  # keeps its GPUs
                continue
            reason = self._keep_blocker(dep, host, ex, key in seen)
            if reason == "unreachable":
                move = dep["move_from_unreachable"]
                if move is None:
                    move = self.move_from_unreachable
                if move:
                    self._remove(ex, "moved: host unreachable")
                    continue
                seen.add(key)
                self.warnings.append(f"{ex['name']}: {ex['host']} is unreachable; its placement is kept, not moved")
                self._assign(dep, ex["replica"], host, ex["gpus"], ex["port"], ex, claim=False)
                continue
            if reason:
                self._remove(ex, reason)
                self._release(host, ex, held[n])
                if not host.reachable:
                    self.warnings.append(
                        f"{ex['name']}: {ex['host']} is unreachable; its removal waits until it is back"
                    )
                continue
            seen.add(key)
            candidates.append((n, ex))

        # Memory fit of the placements that passed the other checks; released memory counts as free.
        for n, ex in candidates:
            host = self.hosts[ex["host"]]
            dep = self.deps.get(ex["deployment"])
            if dep is None:  # undeclared, kept: blocks its GPUs and port
                for idx in ex["gpus"]:
                    self._claim(host.gpus[idx], ex["deployment"], sharing=False)
                if ex["port"] is not None:
                    host.ports.add(ex["port"])
                continue
            req = self.reqs[dep["name"]]
            reason = None
            for idx in ex["gpus"]:
                gpu = host.gpus[idx]
                if gpu.claims and not (req.sharing and gpu.sharing):
                    reason = f"GPU {idx} also used by {gpu.claims[0]}"
                    break
                if req.need is not None and req.usable(gpu.total) < req.need:
                    reason = (
                        f"GPU {idx} too small: needs {req.need} MiB, "
                        f"{req.reserve_frac:g} x {gpu.total} MiB = {req.usable(gpu.total)} MiB usable"
                    )
                    break
                if gpu.avail + held[n].get(idx, 0) < req.reserve(gpu.total):
                    reason = (
                        f"GPU {idx} has {gpu.avail + held[n].get(idx, 0)} MiB free, "
                        f"needs {req.reserve_frac:g} x {gpu.total} MiB = {req.reserve(gpu.total)} MiB"
                    )
                    break
            if reason:
                self._remove(ex, f"no longer fits: {reason}")
                self._release(host, ex, held[n])
                continue
            for idx in ex["gpus"]:
                gpu = host.gpus[idx]
                gpu.avail += held[n].get(idx, 0)  # its memory is now accounted as this plan's claim
                self._claim(gpu, dep["name"], req.sharing, req.reserve(gpu.total))
            port = ex["port"]
            if port is None or not self._port_ok(dep, port) or port in host.ports:
                port = None  # keeps host and GPUs, gets a new port in the next phase
            else:
                host.ports.add(port)
            self._assign(dep, ex["replica"], host, ex["gpus"], port, ex, claim=False)

    def _keep_blocker(self, dep: Mapping[str, Any], host: _Host, ex: Mapping[str, Any], duplicate: bool) -> str | None:
        """Why an existing placement cannot stay (None: it can, if memory still fits)."""
        if dep["state"] == "absent":
            return "state: absent"
        if ex["replica"] >= dep["replicas"]:
            return f"scaled down to {dep['replicas']} replica{'s' if dep['replicas'] != 1 else ''}"
        if duplicate:
            return "duplicate of a replica kept elsewhere"
        if not host.reachable:
            return "unreachable"
        if dep["host"] is not None and dep["host"] != host.name:
            return f"pinned to {dep['host']}"
        if ex["gpus_missing"]:
            return "its GPU is no longer on the host"
        if len(ex["gpus"]) != dep["gpus_per_replica"]:
            return f"gpus_per_replica is now {dep['gpus_per_replica']} (was {len(ex['gpus'])})"
        if dep["gpus"] is not None:
            pinned = self._pinned_gpus(dep, host, ex["replica"])
            if pinned is None or sorted(pinned) != sorted(ex["gpus"]):
                return "pinned to other GPUs"
        selector = _selector_miss(dep, host)
        if selector:
            return f"selector {selector} not matched"
        if not _dir_allowed(dep, host):
            return f"model path {dep['model']['path']} not under gpufleet_allowed_model_dirs"
        for idx in ex["gpus"]:
            if host.gpus[idx].reserved:
                return f"GPU {idx} reserved ({host.gpus[idx].reserved})"
        return None

    # -- claims and bookkeeping ------------------------------------------------------------------------------------

    def _claim(self, gpu: _Gpu, dep: str, sharing: bool, reserve: int = 0) -> None:
        gpu.claims.append(dep)
        gpu.sharing = gpu.sharing and sharing
        gpu.avail -= reserve

    def _assign(
        self,
        dep: Mapping[str, Any],
        replica: int,
        host: _Host,
        gpus: list[int],
        port: int | None,
        previous: Mapping[str, Any] | None,
        claim: bool = True,
    ) -> None:
        req = self.reqs[dep["name"]]
        if claim:
            for idx in gpus:
                gpu = host.gpus[idx]
                self._claim(gpu, dep["name"], req.sharing, req.reserve(gpu.total))
            if port is not None:
                host.ports.add(port)
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
        }

    def _port_ok(self, dep: Mapping[str, Any], port: int) -> bool:
        if dep["port_range"]:
            lo, hi = dep["port_range"]
            return lo <= port <= hi
        base = dep["port"]
        return base <= port < base + max(1, dep["replicas"])

    def _free_port(self, dep: Mapping[str, Any], host: _Host) -> int | None:
        if dep["port_range"]:
            lo, hi = dep["port_range"]
        else:
            lo, hi = dep["port"], min(65535, dep["port"] + max(1, dep["replicas"]) - 1)
        for port in range(lo, hi + 1):
            if port not in host.ports:
                return port
        return None

    # -- fitting ---------------------------------------------------------------------------------------------------

    def _signature(self, host: _Host) -> int:
        if host.sig < 0:
            counts: Counter[tuple[int, int]] = Counter()
            for gpu in host.gpus.values():
                if not gpu.reserved and not gpu.claims:
                    counts[(gpu.total, gpu.avail)] += 1
            sig = tuple(sorted(counts.items()))
            sig_id = self.sig_ids.get(sig)
            if sig_id is None:
                sig_id = self.sig_ids[sig] = len(self.sig_list)
                self.sig_list.append(sig)
            host.sig = sig_id
        return host.sig

    def _gpu_fits(self, gpu: _Gpu, req: _Req) -> bool:
        if gpu.reserved:
            return False
        if gpu.claims and not (req.sharing and gpu.sharing and req.name not in gpu.claims):
            return False
        return req.fits_mem(gpu.total, gpu.avail)

    def fit_count(self, host: _Host, req: _Req) -> int:
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

    def _pinned_gpus(self, dep: Mapping[str, Any], host: _Host, replica: int) -> list[int] | None:
        gpr = dep["gpus_per_replica"]
        chunk = dep["gpus"][replica * gpr : (replica + 1) * gpr]
        resolved = [host.resolve(g) for g in chunk]
        if len(resolved) != gpr or any(r is None for r in resolved):
            return None
        return resolved  # type: ignore[return-value]

    def _candidates(self, dep: Mapping[str, Any]) -> list[_Host]:
        path = dep["model"]["path"] if dep["model"] and dep["model"]["source"] == "local" else None
        key = (dep["host"], tuple(sorted((k, tuple(v)) for k, v in dep["selector"].items())), path)
        hosts = self.candidate_cache.get(key)
        if hosts is None:
            pool = [self.hosts[dep["host"]]] if dep["host"] in self.hosts else ([] if dep["host"] else self.order)
            hosts = [h for h in pool if h.reachable and not _selector_miss(dep, h) and _dir_allowed(dep, h)]
            self.candidate_cache[key] = hosts
        return hosts

    def _pick_gpus(self, dep: Mapping[str, Any], host: _Host, replica: int, prefer: list[int]) -> list[int] | None:
        req = self.reqs[dep["name"]]
        if dep["gpus"] is not None:
            pinned = self._pinned_gpus(dep, host, replica)
            if pinned is None or not all(self._gpu_fits(host.gpus[i], req) for i in pinned):
                return None
            return pinned
        fitting = [i for i in sorted(host.gpus) if self._gpu_fits(host.gpus[i], req)]
        if len(fitting) < req.gpr:
            return None
        preferred = [i for i in prefer if i in fitting]
        if len(preferred) >= req.gpr:
            return sorted(preferred[: req.gpr])
        if req.sharing and not dep["gpus"]:
            # Shared GPUs first (fill them), then empty ones.
            fitting.sort(key=lambda i: (not host.gpus[i].claims, i))
        return sorted(fitting[: req.gpr])

    def _host_key(self, dep: Mapping[str, Any], host: _Host, fit: int) -> tuple:
        if dep["placement"] == "binpack":
            return (fit, host.rank)
        return (host.deployments[dep["name"]], -fit, host.rank)

    def phase_place(self) -> None:
        """Place every replica that has no placement yet; give kept placements with a stale port a new one."""
        order = sorted(
            (d for d in self.deps.values() if d["state"] == "present"),
            key=lambda d: (
                d["host"] is None,
                -d["gpus_per_replica"],
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
                        self._fail(dep, f"{asg['name']} on {host.name}: {self._port_reason(dep, host)}")
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
                    skipped[name] = self._port_reason(dep, host) if dep["gpus"] is None else ""
                    continue
                fit = self.fit_count(host, req)
                if fit >= req.gpr:
                    heapq.heappush(heap, (self._host_key(dep, host, fit), name))
            if not placed:
                self._unschedulable(dep, missing[pos:], skipped)
                return

    def _try_host(
        self, dep: Mapping[str, Any], host: _Host, replica: int, prev: Mapping[str, Any] | None, prefer: list[int]
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

    def _port_reason(self, dep: Mapping[str, Any], host: _Host) -> str:
        if dep["port_range"]:
            return f"no free port in {dep['port_range'][0]}-{dep['port_range'][1]}"
        lo = dep["port"]
        hi = lo + max(1, dep["replicas"]) - 1
        return f"port {lo} in use" if lo == hi else f"ports {lo}-{hi} in use"

    def _host_reason(self, dep: Mapping[str, Any], host: _Host, skipped: Mapping[str, str], replica: int) -> str:
        if not host.reachable:
            return "unreachable"
        miss = _selector_miss(dep, host)
        if miss:
            return f"selector {miss} not matched"
        if not _dir_allowed(dep, host):
            return f"model path {dep['model']['path']} not under gpufleet_allowed_model_dirs"
        req = self.reqs[dep["name"]]
        if not host.gpus:
            return "no GPUs"
        if dep["gpus"] is not None:
            gpr = dep["gpus_per_replica"]
            replica_refs = dep["gpus"][replica * gpr : (replica + 1) * gpr]
            problems = []
            for ref in replica_refs:
                idx = host.resolve(ref)
                if idx is None:
                    problems.append(f"GPU {ref} not on the host")
                    continue
                why = self._gpu_reason(host.gpus[idx], req)
                if why:
                    problems.append(f"GPU {idx} {why}")
            if problems:
                return "; ".join(dict.fromkeys(problems))
            return skipped.get(host.name) or self._port_reason(dep, host)
        fit = self.fit_count(host, req)
        if fit >= req.gpr:
            return skipped.get(host.name) or self._port_reason(dep, host)
        if req.sharing and host.has_shared:
            return self._gpus_reason(host, req, fit)
        # Hosts in the same GPU state give the same reason: computed once per state.
        if host.full_sig is None:
            host.full_sig = tuple(
                (g.total, g.avail, bool(g.reserved), 2 if g.claims and g.sharing else bool(g.claims))
                for g in host.gpus.values()
            )
        key = (host.full_sig, req.key, req.gpr, req.sharing)
        text = self.reason_cache.get(key)
        if text is None:
            text = self.reason_cache[key] = self._gpus_reason(host, req, fit)
        return text

    def _gpus_reason(self, host: _Host, req: _Req, fit: int) -> str:
        why: Counter[str] = Counter()
        for gpu in host.gpus.values():
            reason = self._gpu_reason(gpu, req)
            if reason:
                why[reason] += 1
        detail = ", ".join(f"{n} {reason}" for reason, n in sorted(why.items(), key=lambda kv: (-kv[1], kv[0])))
        text = f"{fit} GPU{'s' if fit != 1 else ''} free, needs {req.gpr}"
        return f"{text} ({detail})" if detail else text

    def _gpu_reason(self, gpu: _Gpu, req: _Req) -> str | None:
        if gpu.reserved:
            return "reserved"
        if gpu.claims and not (req.sharing and gpu.sharing and req.name not in gpu.claims):
            return "in use"
        if req.need is not None and req.usable(gpu.total) < req.need:
            return (
                f"too small: needs {req.need} MiB, {req.reserve_frac:g} x {gpu.total} MiB = "
                f"{req.usable(gpu.total)} MiB usable"
            )
        if gpu.avail < req.reserve(gpu.total):
            return f"low on free memory: needs {req.reserve(gpu.total)} MiB"
        return None

    def _unschedulable(self, dep: Mapping[str, Any], missing: list[int], skipped: Mapping[str, str]) -> None:
        if dep["host"] is not None:
            if dep["host"] in self.hosts:
                pool = [self.hosts[dep["host"]]]
            else:
                self._fail(dep, f"0/1 hosts fit — {dep['host']}: not in the inventory", missing=missing)
                return
        else:
            pool = self.order
        reasons = {h.name: self._host_reason(dep, h, skipped, missing[0]) for h in pool}
        placed = dep["replicas"] - len(missing)
        head = f"0/{len(pool)} hosts fit"
        if dep["replicas"] > 1:
            head = f"{placed}/{dep['replicas']} replicas placed, {head} the rest"
        if len(reasons) <= GROUP_REASONS_ABOVE:
            body = "; ".join(f"{h}: {r}" for h, r in reasons.items()) or "no hosts in the inventory"
        else:
            # A large fleet: one clause per distinct reason, naming a few of its hosts.
            groups: dict[str, list[str]] = {}
            for name, reason in reasons.items():
                groups.setdefault(reason, []).append(name)
            clauses = []
            for reason, names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                shown = ", ".join(names[:3])
                more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                clauses.append(f"{shown}{more}: {reason}")
            body = "; ".join(clauses)
        self._fail(dep, f"{head} — {body}", missing=missing, hosts=reasons)

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
            asg.update(
                action=action,
                reachable=host.reachable,
                gpu_uuids=[host.gpus[i].uuid for i in asg["gpus"] if i in host.gpus],
                gpu_names=[host.gpus[i].name for i in asg["gpus"] if i in host.gpus],
                vram_per_gpu_mib=req.need,
            )
            assignments.append(asg)
        # A replica re-placed on the host it leaves is replaced in place by vllm_container, not removed.
        in_place = {(a["name"], a["host"]) for a in self.assignments.values()}
        removals = [r for r in self.removals if (r["name"], r["host"]) not in in_place]
        removals = sorted(removals, key=lambda r: (r["deployment"], r["replica"], _natural_key(str(r["host"]))))
        errors = sorted(self.errors, key=lambda e: e["deployment"])
        return {
            "assignments": assignments,
            "removals": removals,
            "undeclared": sorted(self.undeclared, key=lambda u: (u["deployment"], u["replica"])),
            "errors": errors,
            "warnings": sorted(set(self.warnings)),
            "estimates": {k: self.estimates[k] for k in sorted(self.estimates)},
        }


def _selector_miss(dep: Mapping[str, Any], host: _Host) -> str | None:
    """``zone=eu1`` (the first unmatched selector pair), None when the host matches."""
    for key, values in sorted(dep["selector"].items()):
        if host.labels.get(key) not in values:
            return f"{key}={'|'.join(values)}"
    return None


def _dir_allowed(dep: Mapping[str, Any], host: _Host) -> bool:
    model = dep.get("model")
    if not model or model["source"] != "local" or host.allowed_dirs is None:
        return True
    path = model["path"]
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in host.allowed_dirs)


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
    return _place(hosts, validate_deployments(list(deployments or [])), existing, prune, move_from_unreachable)


def _place(
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


def container_spec(assignment: Mapping[str, Any], dep: Mapping[str, Any], host: Mapping[str, Any]) -> dict[str, Any]:
    """What the deployments role needs for one replica: placement metadata, ``model_sync`` (the
    ``gpufleet.vllm.model_sync`` arguments for the model, into ``<models_root>/<deployment>``) and ``container`` (the
    ``gpufleet.vllm.vllm_container`` arguments). Neither holds secrets (``secret_env``, ``api_key`` and ``hf_token``
    stay in ``gpufleet_deployments``; the role looks them up by ``deployment``).
    """
    model = dep["model"] or {}
    models_root = host.get("models_root") or DEFAULT_MODELS_ROOT
    # hf and url models are brought onto the host by model_sync, at the path it computes: the container serves that
    # path (no hub id, no revision: model_sync pinned the revision). Local models are served from where they are.
    synced_here = model.get("source") in ("hf", "url")
    model_arg = model.get("path") if model.get("source") == "local" else model_path(models_root, dep["name"])
    container: dict[str, Any] = dict(dep["engine_options"])
    container.update(
        name=assignment["name"],
        state="started",
        runtime=host.get("runtime") or "docker",
        model=model_arg,
        served_model_name=list(dep["served_model_name"] or [dep["name"]]),
        port=assignment["port"],
        gpus=list(assignment["gpus"]),
        tensor_parallel_size=dep["tensor_parallel_size"],
        pipeline_parallel_size=dep["pipeline_parallel_size"],
        gpu_memory_utilization=dep["gpu_memory_utilization"],
        extra_args=list(dep["extra_args"]),
        lora_modules=[{"name": m["name"], "path": m["path"]} for m in dep["lora_modules"]],
        env=dict(dep["env"]),
    )
    # One duration format for the inventory and vllm_container (module_utils/_duration.py): passed as is.
    serve_for = dep["serve_for"]
    container["serve_for"] = format_duration(None if serve_for == INFINITE else serve_for)
    # The image is vllm_image's business (it resolves vllm_version to an image); vllm_container reads the version
    # from the image's label, so the deployment's vllm_version (e.g. "latest") is never a container argument.
    if dep["image"]:
        container["image"] = dep["image"]
    if synced_here:
        container.pop("revision", None)
    sync: dict[str, Any] = {"name": dep["name"], "source": model.get("source"), "models_root": models_root}
    if model.get("source") == "hf":
        sync.update(repo_id=model["repo_id"], revision=model["revision"])
    elif model.get("source") == "local":
        sync.update(src=model["path"], allowed_dirs=list(host.get("allowed_model_dirs") or []), link=True)
    elif model.get("source") == "url":
        sync.update(url=model["url"])
    return {
        "name": assignment["name"],
        "deployment": dep["name"],
        "replica": assignment["replica"],
        "action": assignment["action"],
        "previous": assignment["previous"],
        "host": assignment["host"],
        "gpus": list(assignment["gpus"]),
        "gpu_uuids": list(assignment["gpu_uuids"]),
        "port": assignment["port"],
        "vllm_version": dep["vllm_version"],
        "image": dep["image"],
        "model_source": dict(model),
        "model_sync": sync,
        "model_path": model_arg,
        "serve_for": dep["serve_for"],
        "secret_env_keys": sorted(dep["secret_env"]),
        "api_key_set": dep["api_key"] is not None,
        "hf_token_set": dep["hf_token"] is not None,
        "vram_per_gpu_mib": assignment["vram_per_gpu_mib"],
        "container": container,
    }


def fleet_plan(
    hosts: Mapping[str, Mapping[str, Any]],
    deployments: Any,
    existing: Iterable[Mapping[str, Any]] = (),
    *,
    prune: bool = False,
    move_from_unreachable: bool = False,
) -> dict[str, Any]:
    """``plan()`` plus what the deployments role consumes: ``hosts[<host>]`` = container specs to run there (every
    host of the inventory has a key, sorted by name), ``remove[<host>]`` = managed containers to remove there,
    ``images[<host>]`` = the ``[image, vllm_version]`` pairs its specs need (each once) and a ``summary`` of counts.
    Hosts carry ``runtime`` and ``models_root`` (from ``validate_host_vars``) for the specs.
    """
    deps = {d["name"]: d for d in validate_deployments(list(deployments or []))}
    result = _place(hosts, list(deps.values()), existing, prune, move_from_unreachable)
    per_host: dict[str, list[dict[str, Any]]] = {h: [] for h in sorted(hosts, key=_natural_key)}
    remove: dict[str, list[dict[str, Any]]] = {h: [] for h in per_host}
    for asg in result["assignments"]:
        per_host.setdefault(asg["host"], []).append(
            container_spec(asg, deps[asg["deployment"]], hosts.get(asg["host"], {}))
        )
    for rem in result["removals"]:
        remove.setdefault(rem["host"], []).append(dict(rem))
    # The images each host resolves (gpufleet.vllm.vllm_image), once per [image, vllm_version], in spec order.
    images = {
        h: [list(pair) for pair in dict.fromkeys((s["image"], s["vllm_version"]) for s in specs)]
        for h, specs in per_host.items()
    }
    actions = Counter(a["action"] for a in result["assignments"])
    result.update(
        hosts=per_host,
        remove=remove,
        images=images,
        summary={
            "create": actions["create"],
            "keep": actions["keep"],
            "update": actions["update"],
            "move": actions["move"],
            "remove": len(result["removals"]),
            "undeclared": len(result["undeclared"]),
            "unschedulable": len(result["errors"]),
        },
    )
    return result
