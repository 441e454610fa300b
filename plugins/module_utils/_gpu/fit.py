# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VRAM estimate for one vLLM deployment, the heuristic GPUStack uses for its scheduler.

    total = weights x 1.2 + 2 GiB (+ LoRA adapters)        per GPU = total / (tensor x pipeline parallel size)

The 20 % covers activations and allocator overhead (https://blog.eleuther.ai/transformer-math/), the 2 GiB the CUDA
graphs and the CUDA context. Weights come from the model's size on disk (safetensors / bin files) or, when only hub
metadata is known, from its parameter count x the bytes per parameter of its dtype. The estimate is the *minimum* a
replica needs; what vLLM actually takes is ``gpu_memory_utilization`` x the GPU's total, checked separately by the
placement.
"""

from __future__ import annotations

import math
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

MIB = 1024**2
GIB = 1024**3
OVERHEAD_FACTOR = 1.2
RESERVED_FOOTPRINT_BYTES = 2 * GIB

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
