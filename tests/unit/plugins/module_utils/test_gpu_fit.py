"""The GPU-fit rule (_gpu/fit.py): GPUs per replica = tensor x pipeline parallel size; a GPU fits when
gpu_memory_utilization x total is free and covers the VRAM estimate (weights x 1.2 + 2 GiB (+ LoRA), split over the
replica's GPUs)."""

from __future__ import annotations

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu import fit as vram

GIB = 1024**3


@pytest.mark.parametrize(
    ("dtype", "per_param"),
    [("bfloat16", 2), ("torch.float16", 2), ("FP16", 2), ("float32", 4), ("fp8", 1), ("awq", 0.5), ("auto", 2)],
)
def test_dtype_bytes(dtype, per_param):
    assert vram.dtype_bytes(dtype) == per_param


def test_unknown_dtype_names_the_choices():
    with pytest.raises(GpufleetError, match=r"unknown dtype 'int3'.*bfloat16"):
        vram.dtype_bytes("int3")


def test_size_on_disk_wins_over_parameters():
    assert vram.weights_bytes(size_bytes=10, num_parameters=10**9, dtype="bf16") == 10


def test_parameters_times_dtype():
    assert vram.weights_bytes(num_parameters=7 * 10**9, dtype="bfloat16") == 14 * 10**9
    assert vram.weights_bytes(num_parameters=10**9, dtype=None) == 2 * 10**9  # auto = 16 bit


def test_nothing_known():
    est = vram.estimate()
    assert est == {"known": False, "source": None, "weights_bytes": None, "total_mib": None, "per_gpu_mib": None}


def test_gpustack_formula():
    # 10 GiB of weights: 10 x 1.2 + 2 = 14 GiB
    est = vram.estimate(size_bytes=10 * GIB)
    assert est["total_mib"] == 14 * 1024
    assert est["per_gpu_mib"] == 14 * 1024
    assert est["source"] == "model_size_bytes"


def test_lora_is_added_and_total_split_over_gpus():
    est = vram.estimate(size_bytes=10 * GIB, lora_bytes=2 * GIB, gpus=4)
    assert est["total_mib"] == 16 * 1024
    assert est["per_gpu_mib"] == 4 * 1024


def test_per_gpu_rounds_up():
    assert vram.per_gpu_mib(10, 3) == 4
    assert vram.per_gpu_mib(10, 0) == 10


def test_7b_bf16_matches_the_published_example():
    # GPUStack documents ~19 GiB for a 7B model in bf16 (Qwen2-7B has 7.6e9 parameters).
    est = vram.estimate(num_parameters=7_615_616_512, dtype="bfloat16")
    assert 18.5 * 1024 < est["total_mib"] < 19.5 * 1024


def test_override():
    est = vram.estimate(size_bytes=100 * GIB, gpus=2, override_mib=1000)
    assert est == {"known": True, "source": "vram_mib", "weights_bytes": None, "total_mib": 1000, "per_gpu_mib": 500}


@pytest.mark.parametrize("kwargs", [{"size_bytes": -1}, {"num_parameters": -5}])
def test_negative_sizes_are_refused(kwargs):
    with pytest.raises(GpufleetError):
        vram.weights_bytes(**kwargs)


# ---------------------------------------------------------------------------------------------------- the fit rule
@pytest.mark.parametrize(("tp", "pp", "gpus"), [(None, None, 1), (2, None, 2), (None, 3, 3), (2, 4, 8), (1, 1, 1)])
def test_gpus_per_replica_is_tensor_times_pipeline(tp, pp, gpus):
    assert vram.gpus_per_replica(tp, pp) == gpus


def test_usable_rounds_down_reserved_rounds_up():
    assert vram.usable_mib(81559, 0.9) == 73403 and vram.reserved_mib(81559, 0.9) == 73404
    assert vram.usable_mib(80000, 0.5) == vram.reserved_mib(80000, 0.5) == 40000


def test_free_memory_must_cover_the_claim():
    assert vram.fits(80000, 72000, 0.9) and not vram.fits(80000, 71999, 0.9)
    # whole MiB: the same as free >= reserved_mib; a fractional free amount is compared with the exact claim
    assert vram.fits(81559, 73404, 0.9) and not vram.fits(81559, 73403, 0.9)
    assert vram.fits(81559, 73403.5, 0.9) and not vram.fits(81559, 73403.0, 0.9)
    assert vram.free_enough(81559, 73403.5, 0.9)


def test_the_claim_must_cover_the_estimate():
    assert vram.fits(80000, 80000, 0.5, need_mib=40000) and not vram.fits(80000, 80000, 0.5, need_mib=40001)
    assert vram.covers_estimate(80000, 0.5, None)  # unknown model size: only the free memory counts
    assert not vram.fits(80000, 80000, 0.1, need_mib=8001)


def test_default_utilization_is_vllms():
    assert vram.DEFAULT_UTILIZATION == 0.9
