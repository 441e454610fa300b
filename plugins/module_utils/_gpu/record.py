# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One GPU as gpu_facts reports it: the keys of its record, an empty record, and selection by index or UUID."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

MIB = 1024 * 1024

# Per GPU, in this order (the module's RETURN documents each).
GPU_KEYS = (
    "index",
    "uuid",
    "name",
    "memory_total_mib",
    "memory_used_mib",
    "memory_free_mib",
    "temperature_c",
    "utilization_gpu_pct",
    "utilization_memory_pct",
    "power_draw_w",
    "power_limit_w",
    "compute_capability",
    "pci_bus_id",
    "mig_mode",
    "processes",
    "ecc_errors_uncorrected",
    "retired_pages_pending",
    "xid_errors",
    "healthy",
    "health_issues",
)


class SourceUnavailable(Exception):
    """A source could not answer; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def empty_gpu(index: int) -> dict[str, Any]:
    gpu: dict[str, Any] = dict.fromkeys(GPU_KEYS)
    gpu["index"] = index
    gpu["healthy"] = True
    gpu["health_issues"] = []
    gpu["xid_errors"] = []
    return gpu


def cuda_version_str(value: int | None) -> str | None:
    """NVML's CUDA driver version integer (12040) as ``"12.4"``."""
    if not value:
        return None
    return f"{value // 1000}.{value % 1000 // 10}"


def normalize_bus_id(bus_id: str | None) -> str | None:
    """``00000000:07:00.0`` in the long, upper-case form both NVML and nvidia-smi print."""
    if not bus_id:
        return None
    bus_id = bus_id.strip()
    if bus_id.count(":") == 2:
        domain, rest = bus_id.split(":", 1)
        bus_id = f"{int(domain, 16):08X}:{rest}"
    elif bus_id.count(":") == 1:
        bus_id = f"00000000:{bus_id}"
    return bus_id.upper()


def is_uuid_selector(ref: str) -> bool:
    return not ref.strip().isdigit()


def select_gpus(gpus: list[dict[str, Any]], selectors: Iterable[str | int] | None) -> list[dict[str, Any]]:
    """The GPUs named by index (``0``) or UUID (``GPU-...``), in the order of ``gpus``; None/empty = all.

    A selector that matches no GPU raises GpufleetError listing what the host has.
    """
    refs = [str(s).strip() for s in (selectors or [])]
    if not refs:
        return list(gpus)
    wanted: set[int] = set()
    for ref in refs:
        hits = [g["index"] for g in gpus if ref == str(g["index"]) or (g.get("uuid") and ref == g["uuid"])]
        if not hits:
            raise GpufleetError(
                f"GPU {ref!r} (option gpus) is not on this host; it has {describe_gpus(gpus)}. "
                "Name GPUs by index (0, 1, ...) or by UUID (GPU-...).",
                failure_class="gpu_not_found",
            )
        wanted.update(hits)
    return [g for g in gpus if g["index"] in wanted]


def describe_gpus(gpus: list[dict[str, Any]]) -> str:
    if not gpus:
        return "no GPU"
    return ", ".join(f"{g['index']} ({g.get('uuid') or 'no UUID'}, {g.get('name') or 'unknown'})" for g in gpus)
