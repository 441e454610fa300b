# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a vLLM replica fits its GPUs: the one home of the rule, used by the fleet (schema, placement) and by
vllm_container's pre-checks.

GPUs per replica = tensor_parallel_size x pipeline_parallel_size (``gpus_per_replica``).

Memory: vLLM takes ``gpu_memory_utilization`` x the GPU's total when it starts, so a GPU fits when that much is free
and, when the model's size is known, that share covers the VRAM estimate below (``fits``).

The VRAM estimate for one deployment is the heuristic GPUStack uses for its scheduler:

    total = weights x 1.2 + 2 GiB (+ LoRA adapters)        per GPU = total / (tensor x pipeline parallel size)

The 20 % covers activations and allocator overhead (https://blog.eleuther.ai/transformer-math/), the 2 GiB the CUDA
graphs and the CUDA context. Weights come from the model's size on disk (safetensors / bin files) or, when only hub
metadata is known, from its parameter count x the bytes per parameter of its dtype. The estimate is the *minimum* a
replica needs; what vLLM actually takes is ``gpu_memory_utilization`` x the GPU's total (``fits``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

MIB = 1024**2
GIB = 1024**3
OVERHEAD_FACTOR = 1.2
RESERVED_FOOTPRINT_BYTES = 2 * GIB
DEFAULT_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization

# Bytes per parameter. Quantization names are included because `quantization` decides the weight size of a
# quantized checkpoint regardless of the activation dtype.
DTYPE_BYTES: dict[str, float] = {
    "float32": 4.0,
    "fp32": 4.0,
    "float": 4.0,
    "f32": 4.0,
    "float16": 2.0,
    "fp16": 2.0,
    "half": 2.0,
    "f16": 2.0,
    "bfloat16": 2.0,
    "bf16": 2.0,
    "auto": 2.0,
    "float8": 1.0,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
    "float8_e4m3fn": 1.0,
    "float8_e5m2": 1.0,
    "int8": 1.0,
    "i8": 1.0,
    # safetensors' dtype names the hub counts parameters by (safetensors.parameters), beside those above
    "f64": 8.0,
    "i64": 8.0,
    "i32": 4.0,
    "i16": 2.0,
    "f8_e4m3": 1.0,
    "f8_e5m2": 1.0,
    "bool": 1.0,
    "u8": 1.0,
    "uint8": 1.0,
    "bitsandbytes": 1.0,
    "int4": 0.5,
    "fp4": 0.5,
    "mxfp4": 0.5,
    "nvfp4": 0.5,
    "awq": 0.5,
    "awq_marlin": 0.5,
    "gptq": 0.5,
    "gptq_marlin": 0.5,
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per parameter for a dtype or quantization name (case-insensitive, ``torch.`` prefix allowed)."""
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in DTYPE_BYTES:
        raise GpufleetError(
            f"unknown dtype {dtype!r} for the VRAM estimate; use one of {', '.join(sorted(DTYPE_BYTES))}",
            dtype=dtype,
        )
    return DTYPE_BYTES[key]


def weights_bytes(
    size_bytes: int | None = None,
    num_parameters: int | None = None,
    dtype: str | None = None,
) -> int | None:
    """Size of the weights: the size on disk when known, else parameters x dtype bytes; None when neither is known."""
    if size_bytes is not None:
        if size_bytes < 0:
            raise GpufleetError(f"model size must be >= 0 bytes, got {size_bytes}")
        return int(size_bytes)
    if num_parameters is not None:
        if num_parameters < 0:
            raise GpufleetError(f"parameter count must be >= 0, got {num_parameters}")
        return math.ceil(num_parameters * dtype_bytes(dtype or "auto"))
    return None


def estimate_total_mib(weights: int, lora_bytes: int = 0) -> int:
    """Total VRAM (MiB, rounded up) for weights of ``weights`` bytes plus LoRA adapters of ``lora_bytes`` bytes."""
    total = weights * OVERHEAD_FACTOR + RESERVED_FOOTPRINT_BYTES + max(0, lora_bytes)
    return math.ceil(total / MIB)


def per_gpu_mib(total_mib: int, gpus: int) -> int:
    """VRAM each GPU of a replica needs: the total split evenly over its GPUs (tensor x pipeline parallel)."""
    return math.ceil(total_mib / max(1, gpus))


def estimate(
    *,
    size_bytes: int | None = None,
    num_parameters: int | None = None,
    dtype: str | None = None,
    lora_bytes: int = 0,
    gpus: int = 1,
    override_mib: int | None = None,
) -> dict[str, Any]:
    """The full estimate for one replica.

    Returns ``{"known": bool, "weights_bytes", "total_mib", "per_gpu_mib", "source"}``; when nothing is known about
    the model (no size, no parameter count, no override) ``known`` is False and the sizes are None: the placement then
    checks only ``gpu_memory_utilization`` x total against free memory.
    """
    if override_mib is not None:
        total = int(override_mib)
        return {
            "known": True,
            "source": "vram_mib",
            "weights_bytes": None,
            "total_mib": total,
            "per_gpu_mib": per_gpu_mib(total, gpus),
        }
    weights = weights_bytes(size_bytes, num_parameters, dtype)
    if weights is None:
        return {"known": False, "source": None, "weights_bytes": None, "total_mib": None, "per_gpu_mib": None}
    total = estimate_total_mib(weights, lora_bytes)
    return {
        "known": True,
        "source": "model_size_bytes" if size_bytes is not None else "num_parameters",
        "weights_bytes": weights,
        "total_mib": total,
        "per_gpu_mib": per_gpu_mib(total, gpus),
    }


# ---------------------------------------------------------------------------------------------------- the fit rule
def gpus_per_replica(tensor_parallel_size: int | None, pipeline_parallel_size: int | None) -> int:
    """GPUs one replica runs on: tensor x pipeline parallel size (an unset size counts as 1)."""
    return (tensor_parallel_size or 1) * (pipeline_parallel_size or 1)


def usable_mib(total_mib: int, utilization: float) -> int:
    """MiB vLLM may use on a GPU of ``total_mib`` (whole MiB, rounded down): what must cover the estimate."""
    return int(total_mib * utilization)


def reserved_mib(total_mib: int, utilization: float) -> int:
    """MiB vLLM claims on a GPU of ``total_mib`` when it starts (whole MiB, rounded up)."""
    return math.ceil(total_mib * utilization)


def covers_estimate(total_mib: int, utilization: float, need_mib: int | None) -> bool:
    """The share vLLM may use covers the per-GPU estimate (True when the estimate is unknown)."""
    return need_mib is None or usable_mib(total_mib, utilization) >= need_mib


def free_enough(total_mib: float, free_mib: float, utilization: float) -> bool:
    """At least ``utilization`` x total is free (for whole MiB the same as free >= reserved_mib)."""
    return free_mib >= utilization * total_mib


def fits(total_mib: int, free_mib: float, utilization: float, need_mib: int | None = None) -> bool:
    """One GPU fits one replica's share: enough free memory for vLLM's claim, and that claim covers the estimate."""
    return covers_estimate(total_mib, utilization, need_mib) and free_enough(total_mib, free_mib, utilization)


# ---------------------------------------------------------------------------------------------------- warm cache
PERMILLE = 1000  # a host without memory facts counts what replicas claim in thousandths of a GPU


def share_permille(utilization: float | None) -> int:
    """What one replica claims of each of its GPUs, in thousandths: vLLM takes ``gpu_memory_utilization`` x total
    (``reserved_mib``), so its share does not depend on the GPU's size."""
    return round((DEFAULT_UTILIZATION if utilization is None else utilization) * PERMILLE)


class Holder(NamedTuple):
    """A replica holding GPU memory that the warm cache may put to sleep (vLLM sleep level 1: weights to RAM)."""

    name: str
    held: Mapping[str, float]  # GPU id -> what it holds there (MiB, or a share of the GPU: the unit of ``need``)
    last_active: float  # when it last served a request (Unix time): the least recently used goes first
    pausable: bool  # has an idle policy (sleep mode) and is not pinned


def to_pause(need: Mapping[str, float], free: Mapping[str, float], holders: Iterable[Holder]) -> list[str] | None:
    """Which replicas to put to sleep so that ``need`` (GPU id -> what must be free there) fits in ``free``: the least
    recently used pausable holders first (ties by name), only those that hold some of a GPU still short, until every
    GPU fits. ``[]`` when it fits already; None when even every pausable holder is not enough (nothing is chosen, a
    pinned or unpausable holder is never chosen)."""
    room = {g: float(free.get(g, 0.0)) for g in need}
    short = {g for g, n in need.items() if room[g] < n}
    chosen: list[str] = []
    for h in sorted((h for h in holders if h.pausable), key=lambda h: (h.last_active, h.name)):
        if not short:
            break
        if not any(h.held.get(g) for g in short):
            continue
        chosen.append(h.name)
        for g in need:
            room[g] += float(h.held.get(g, 0.0))
        short = {g for g in short if room[g] < need[g]}
    return None if short else chosen
