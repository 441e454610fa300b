# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Why a deployment is unschedulable: one reason per host, in the words the operator reads.

``chat-70b: 0/3 hosts fit — gpu-a: 2 GPUs free, needs 4; gpu-b: selector zone=eu1 not matched; gpu-c: unreachable``.
The planner (``placement.py``) asks ``Explainer.unschedulable()`` once a replica cannot be placed; the reasons
describe the planner's state at that moment (``capacity.Host``/``Gpu``), they never change it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.capacity import (
    Gpu,
    Host,
    Requirement,
    dir_allowed,
    selector_miss,
)

GROUP_REASONS_ABOVE = 12  # more hosts than this: the message groups hosts by reason


def port_reason(dep: Mapping[str, Any]) -> str:
    """Why the deployment's port (or port range) has no free port on a host."""
    if dep["port_range"]:
        return f"no free port in {dep['port_range'][0]}-{dep['port_range'][1]}"
    lo = dep["port"]
    hi = lo + max(1, dep["replicas"]) - 1
    return f"port {lo} in use" if lo == hi else f"ports {lo}-{hi} in use"


def gpu_reason(gpu: Gpu, req: Requirement) -> str | None:
    """Why one GPU cannot take a replica of ``req`` (None: it can)."""
    if gpu.reserved:
        return "reserved"
    if gpu.unhealthy:
        return f"unhealthy ({gpu.unhealthy})"
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


def whole_host_count_miss(dep: Mapping[str, Any], count: int) -> str | None:
    """Why a host of ``count`` GPUs cannot take a ``gpus: all`` replica by its GPU count (None: it can)."""
    tp, pp = dep["tensor_parallel_size"], dep["pipeline_parallel_size"] or 1
    if count == 0:
        return "no GPUs"
    if tp is not None and tp * pp != count:
        return (
            f"gpus: all is {count} GPU{'s' if count != 1 else ''} here but tensor_parallel_size x "
            f"pipeline_parallel_size = {tp * pp}"
        )
    if tp is None and count % pp:
        return f"gpus: all is {count} GPUs here, not a multiple of pipeline_parallel_size {pp}"
    return None


def whole_host_reason(dep: Mapping[str, Any], host: Host, req: Requirement) -> str | None:
    """Why ``host`` cannot take a ``gpus: all`` replica (None: it can): every GPU must be free of other replicas,
    reserved by nothing, healthy and fit the replica's share (its VRAM estimate split over the host's GPUs)."""
    miss = whole_host_count_miss(dep, len(host.gpus))
    if miss:
        return miss
    share = Requirement(dep, None, req.total)
    share.need, share.whole_host, share.sharing = req.per_gpu(len(host.gpus)), False, False
    problems = []
    for gpu in host.gpus.values():
        why = gpu_reason(gpu, share)
        if why == "in use":
            why = f"in use by {gpu.claims[0]}"
        if why:
            problems.append(f"GPU {gpu.index} {why}")
    return "gpus: all needs every GPU: " + "; ".join(problems) if problems else None


def gpus_reason(host: Host, req: Requirement, fit: int) -> str:
    """``1 GPU free, needs 2 (3 in use, 1 reserved)``: the host's GPUs counted by reason."""
    why: Counter[str] = Counter()
    for gpu in host.gpus.values():
        reason = gpu_reason(gpu, req)
        if reason:
            why[reason] += 1
    detail = ", ".join(f"{n} {reason}" for reason, n in sorted(why.items(), key=lambda kv: (-kv[1], kv[0])))
    text = f"{fit} GPU{'s' if fit != 1 else ''} free, needs {req.gpr}"
    return f"{text} ({detail})" if detail else text


class Explainer:
    """The reasons of one planner run (hosts in the same GPU state share one computed reason)."""

    def __init__(
        self,
        hosts: Mapping[str, Host],
        order: list[Host],
        reqs: Mapping[str, Requirement],
        fit_count: Callable[[Host, Requirement], int],
    ) -> None:
        self.hosts = hosts
        self.order = order
        self.reqs = reqs
        self.fit_count = fit_count
        self.reason_cache: dict[tuple, str] = {}

    def host_reason(self, dep: Mapping[str, Any], host: Host, skipped: Mapping[str, str], replica: int) -> str:
        """Why ``replica`` of ``dep`` does not fit on ``host`` (``skipped``: hosts the planner tried, with why)."""
        if not host.reachable:
            return "unreachable"
        miss = selector_miss(dep, host)
        if miss:
            return f"selector {miss} not matched"
        if not dir_allowed(dep, host):
            return f"model path {dep['model']['path']} not under gpufleet_allowed_model_dirs"
        req = self.reqs[dep["name"]]
        if not host.gpus:
            return "no GPUs"
        if req.whole_host:
            return whole_host_reason(dep, host, req) or skipped.get(host.name) or port_reason(dep)
        if dep["gpus"] is not None:
            gpr = dep["gpus_per_replica"]
            replica_refs = dep["gpus"][replica * gpr : (replica + 1) * gpr]
            problems = []
            for ref in replica_refs:
                idx = host.resolve(ref)
                if idx is None:
                    problems.append(f"GPU {ref} not on the host")
                    continue
                why = gpu_reason(host.gpus[idx], req)
                if why:
                    problems.append(f"GPU {idx} {why}")
            if problems:
                return "; ".join(dict.fromkeys(problems))
            return skipped.get(host.name) or port_reason(dep)
        fit = self.fit_count(host, req)
        if fit >= req.gpr:
            return skipped.get(host.name) or port_reason(dep)
        if req.sharing and host.has_shared:
            return gpus_reason(host, req, fit)
        # Hosts in the same GPU state give the same reason: computed once per state.
        if host.full_sig is None:
            host.full_sig = tuple(
                (g.total, g.avail, bool(g.reserved), g.unhealthy, 2 if g.claims and g.sharing else bool(g.claims))
                for g in host.gpus.values()
            )
        key = (host.full_sig, req.key, req.gpr, req.sharing)
        text = self.reason_cache.get(key)
        if text is None:
            text = self.reason_cache[key] = gpus_reason(host, req, fit)
        return text

    def unschedulable(
        self, dep: Mapping[str, Any], missing: list[int], skipped: Mapping[str, str]
    ) -> tuple[str, dict[str, str]]:
        """The message (without the ``<deployment>: `` head) and the reason per host for the ``missing`` replicas."""
        if dep["host"] is not None:
            if dep["host"] in self.hosts:
                pool = [self.hosts[dep["host"]]]
            else:
                return f"0/1 hosts fit — {dep['host']}: not in the inventory", {}
        else:
            pool = self.order
        reasons = {h.name: self.host_reason(dep, h, skipped, missing[0]) for h in pool}
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
        return f"{head} — {body}", reasons
