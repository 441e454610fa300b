# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPU inventory and health for gpufleet.vllm.gpu_facts: NVML (nvidia-ml-py), else nvidia-smi, else none.

``gather()`` returns the facts dict (names are part of the collection's interface, see the module's RETURN):
``gpu_count``, ``gpu_source``, ``gpu_source_reason``, ``gpu_driver_version``, ``gpu_cuda_version``, ``gpus``,
``gpu_healthy`` and, from :mod:`gpu_runtime`, ``gpu_container_runtime``. A value a device does not support is
``None``. Small pure functions (parsing, selection, health) are kept apart from the calls that touch the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu import xid
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.health import Thresholds, apply_health
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.nvml import collect_nvml
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.record import SourceUnavailable
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.smi import collect_nvidia_smi
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.xid import XID_FILE

SOURCES = ("auto", "nvml", "nvidia_smi", "none")


def gather_gpus(
    source: str = "auto",
    thresholds: Thresholds | None = None,
    selectors: Sequence[str | int] | None = None,
    nvidia_smi_path: str | None = None,
    timeout: float = 10.0,
    xid_file: str | None = XID_FILE,
) -> dict[str, Any]:
    """The GPU part of the facts: tries the sources ``source`` allows, in order, and says why one was skipped. The
    critical Xids the node agent recorded in ``xid_file`` (None: not read) count in the health (``xid.py``)."""
    if source not in SOURCES:
        raise GpufleetError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    thresholds = thresholds or Thresholds()
    reasons: list[str] = []
    system: dict[str, Any] = {"driver_version": None, "cuda_version": None}
    gpus: list[dict[str, Any]] = []
    answered = "none"
    order = {"auto": ("nvml", "nvidia_smi"), "nvml": ("nvml",), "nvidia_smi": ("nvidia_smi",), "none": ()}[source]
    if source == "none":
        reasons.append("source=none: GPUs were not queried")
    for name in order:
        try:
            if name == "nvml":
                system, gpus = collect_nvml(selectors)
            else:
                system, gpus = collect_nvidia_smi(nvidia_smi_path, timeout, selectors)
        except SourceUnavailable as exc:
            reasons.append(f"{'NVML' if name == 'nvml' else 'nvidia-smi'}: {exc.reason}")
            continue
        answered = name
        break
    if answered == "none" and selectors:
        raise GpufleetError(
            f"GPUs {', '.join(str(s) for s in selectors)} (option gpus) were asked for, but no GPU was found: "
            + "; ".join(reasons),
            failure_class="gpu_not_found",
        )
    xid.attach(gpus, xid_file, thresholds.max_xid_age_s)
    apply_health(gpus, thresholds)
    return {
        "gpu_count": len(gpus),
        "gpu_source": answered,
        "gpu_source_reason": "; ".join(reasons) or None,
        "gpu_driver_version": system.get("driver_version"),
        "gpu_cuda_version": system.get("cuda_version"),
        "gpus": gpus,
        "gpu_healthy": all(g["healthy"] for g in gpus),
    }
