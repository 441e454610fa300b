# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the planner sees: each host and its GPUs as a plan claims them, and what one replica needs per GPU.

Mutable state of one ``placement.plan()`` run (never shared between runs). ``placement.py`` decides with these,
``explain.py`` says why a host does not fit.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import (
    ORDERED,
    Problems,
    normalize_reservations,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu import fit
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.layout import is_under


def natural_key(text: str) -> tuple:
    """Sort key that orders ``gpu-2`` before ``gpu-10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


class Gpu:
    __slots__ = ("avail", "claims", "index", "name", "reserved", "sharing", "total", "unhealthy", "used", "uuid")

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
        # gpu_facts' verdict (_gpu/health.py): an unhealthy GPU takes no new replica; its issues say why.
        self.unhealthy: str | None = None
        if facts.get("healthy") is False:
            self.unhealthy = ", ".join(str(i) for i in facts.get("health_issues") or []) or "unhealthy"


class Host:
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
        self.gpus: dict[int, Gpu] = {}
        for facts in info.get("gpus") or []:
            gpu = Gpu(facts)
            self.gpus[gpu.index] = gpu
        self.uuid_index = {g.uuid: g.index for g in self.gpus.values() if g.uuid}
        dirs = info.get("allowed_model_dirs")
        self.allowed_dirs: list[str] | None = [d.rstrip("/") or "/" for d in dirs] if dirs else None
        self.ports: set[int] = set()
        self.deployments: Counter[str] = Counter()
        self.has_shared = False
        self.sig = -1
        self.full_sig: tuple | None = None
        problems = Problems()
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


def whole_host(dep: Mapping[str, Any]) -> bool:
    """``gpus: all``: each replica takes every GPU of one host (the schema's normalized value is ``"all"``)."""
    return dep.get("gpus") == "all"


class Requirement:
    """What one replica of a deployment needs from each of its GPUs.

    ``gpus: all`` (``whole_host``): every GPU of a host, so the GPU count and the VRAM per GPU depend on the host:
    ``need`` is None (placement checks the host as a whole, ``explain.whole_host_reason``) and ``total`` (MiB for
    the replica, None = unknown) is split over the host's GPUs by ``per_gpu``."""

    __slots__ = ("gpr", "key", "name", "need", "reserve_frac", "sharing", "total", "whole_host")

    def __init__(self, dep: Mapping[str, Any], need: int | None, total: int | None = None) -> None:
        self.name: str = dep["name"]
        self.gpr: int = dep["gpus_per_replica"]
        self.whole_host = whole_host(dep)
        self.total = total
        self.need = None if self.whole_host else need  # MiB per GPU, None = unknown
        self.reserve_frac: float = dep["gpu_memory_utilization"]
        self.sharing: bool = bool(dep["gpu_sharing"])
        self.key = (need, self.reserve_frac)

    # The fit rule is _gpu/fit.py's (shared with vllm_container's pre-checks).
    def usable(self, total: int) -> int:
        return fit.usable_mib(total, self.reserve_frac)

    def reserve(self, total: int) -> int:
        return fit.reserved_mib(total, self.reserve_frac)

    def fits_mem(self, total: int, avail: int) -> bool:
        return fit.fits(total, avail, self.reserve_frac, self.need)

    def per_gpu(self, gpus: int) -> int | None:
        """MiB each of a replica's ``gpus`` GPUs needs (None = unknown)."""
        if not self.whole_host:
            return self.need
        return fit.per_gpu_mib(self.total, gpus) if self.total is not None else None


def selector_miss(dep: Mapping[str, Any], host: Host) -> str | None:
    """``zone=eu1`` (the first unmatched selector pair), None when the host matches."""
    for key, values in sorted(dep["selector"].items()):
        if host.labels.get(key) not in values:
            return f"{key}={'|'.join(values)}"
    return None


def local_path(dep: Mapping[str, Any]) -> str | None:
    """The host path a deployment's model can only come from (a local model, or an ordered one whose only source is
    local); None when another source may serve it."""
    model = dep.get("model") or {}
    if model.get("source") == "local" or (model.get("source") == ORDERED and model.get("sources") == ["local"]):
        return model["path"]
    return None


def dir_allowed(dep: Mapping[str, Any], host: Host) -> bool:
    path = local_path(dep)
    if path is None or host.allowed_dirs is None:
        return True
    return any(is_under(path, d) for d in host.allowed_dirs)
