"""module_utils/_gpu (record, health, nvml, smi, facts): pure helpers, and collection through the real nvidia-ml-py / fake nvidia-smi on fake GPUs."""

from __future__ import annotations

import sys
import time

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.facts import gather_gpus
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.health import Thresholds, evaluate_health
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.nvml import nvml_init_reason
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.record import (
    GPU_KEYS,
    SourceUnavailable,
    cuda_version_str,
    empty_gpu,
    normalize_bus_id,
    select_gpus,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.smi import (
    SMI_FIELDS,
    collect_nvidia_smi,
    parse_smi_apps,
    parse_smi_gpus,
    run_bounded,
    smi_value,
)
from fixtures.nvml import SMI_BIN, make_gpu

# ---------------------------------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("value", "text"), [(12040, "12.4"), (11080, "11.8"), (13000, "13.0"), (0, None), (None, None)]
)
def test_cuda_version_str(value, text):
    assert cuda_version_str(value) == text


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("00000000:07:00.0", "00000000:07:00.0"), ("0000:4e:00.0", "00000000:4E:00.0"), ("b5:00.0", "00000000:B5:00.0")],
)
def test_normalize_bus_id(raw, norm):
    assert normalize_bus_id(raw) == norm


@pytest.mark.parametrize(
    "raw", ["[N/A]", "[Not Supported]", "N/A", "[Unknown Error]", "", "  ", "[GPU requires reset]"]
)
def test_smi_value_unavailable(raw):
    assert smi_value(raw) is None


def test_parse_smi_gpus_reads_values_and_markers():
    keys = list(SMI_FIELDS)
    line = (
        "3, GPU-abc, NVIDIA L40S, 46068, 1000, 44630, 51, [Not Supported], [Not Supported], [N/A], 350.00, 8.9, "
        "0000:31:00.0, [N/A], 2, Yes, 550.54.15"
    )
    gpus, driver = parse_smi_gpus(line + "\n\n", keys)
    assert driver == "550.54.15"
    (g,) = gpus
    assert set(g) == set(GPU_KEYS)
    assert g["index"] == 3 and g["uuid"] == "GPU-abc" and g["name"] == "NVIDIA L40S"
    assert (g["memory_total_mib"], g["memory_used_mib"], g["memory_free_mib"]) == (46068, 1000, 44630)
    assert g["utilization_gpu_pct"] is None and g["power_draw_w"] is None and g["mig_mode"] is None
    assert g["power_limit_w"] == 350.0 and g["compute_capability"] == "8.9"
    assert g["pci_bus_id"] == "00000000:31:00.0"
    assert (g["ecc_errors_uncorrected"], g["retired_pages_pending"]) == (2, True)


def test_parse_smi_gpus_mig_and_free_fallback():
    keys = ["index", "memory_total_mib", "memory_used_mib", "mig_mode"]
    gpus, _driver = parse_smi_gpus("0, 100, 40, Enabled\n1, 100, 10, Disabled\n", keys)
    assert [g["mig_mode"] for g in gpus] == [True, False]
    assert [g["memory_free_mib"] for g in gpus] == [60, 90]


def test_parse_smi_gpus_refuses_a_short_line():
    with pytest.raises(SourceUnavailable, match="2 values for 3 fields"):
        parse_smi_gpus("0, GPU-x\n", ["index", "uuid", "name"])


def test_parse_smi_apps_groups_by_uuid():
    text = "GPU-a, 10, 500\nGPU-b, 11, [N/A]\nGPU-a, 12, 100\ngarbage\n"
    assert parse_smi_apps(text) == {
        "GPU-a": [{"pid": 10, "used_memory_mib": 500}, {"pid": 12, "used_memory_mib": 100}],
        "GPU-b": [{"pid": 11, "used_memory_mib": None}],
    }


def _gpus(n):
    out = []
    for i in range(n):
        g = empty_gpu(i)
        g.update(uuid=f"GPU-{i}", name="X")
        out.append(g)
    return out


def test_select_gpus_by_index_and_uuid_keeps_host_order():
    gpus = _gpus(4)
    assert [g["index"] for g in select_gpus(gpus, ["GPU-3", "1"])] == [1, 3]
    assert [g["index"] for g in select_gpus(gpus, [])] == [0, 1, 2, 3]
    assert [g["index"] for g in select_gpus(gpus, None)] == [0, 1, 2, 3]


def test_select_gpus_unknown_names_what_the_host_has():
    with pytest.raises(GpufleetError, match=r"'GPU-9' \(option gpus\) is not on this host; it has 0 \(GPU-0, X\)"):
        select_gpus(_gpus(1), ["GPU-9"])


def test_health_thresholds():
    g = empty_gpu(0)
    g.update(temperature_c=91, memory_free_mib=1000, utilization_gpu_pct=100)
    assert evaluate_health(g, Thresholds()) == ["temperature 91 C is above max_temperature_c (85 C)"]
    issues = evaluate_health(g, Thresholds(95, 2000, 90))
    assert issues == [
        "free memory 1000 MiB is below min_free_memory_mib (2000 MiB)",
        "utilization 100% is above max_utilization_pct (90%)",
    ]


def test_health_unknown_values_break_no_threshold_but_read_errors_stay():
    g = empty_gpu(0)
    g["health_issues"] = ["cannot read temperature_c: GPU is lost"]
    assert evaluate_health(g, Thresholds(10, 10**9, 0)) == ["cannot read temperature_c: GPU is lost"]


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (9, "kernel driver is not loaded"),
        (18, "driver/library version mismatch"),
        (12, "libnvidia-ml.so.1 was not found"),
        (4, "no permission"),
        (999, "NVML failed to initialise: Unknown Error (NVML error 999)"),
    ],
)
def test_nvml_init_reason(code, words):
    assert words in nvml_init_reason(code, "Unknown Error")


def test_run_bounded_kills_the_whole_group():
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"did not answer within 0\.3 s"):
        run_bounded(["sh", "-c", "sleep 30 & sleep 30"], 0.3)  # the background child must not keep us waiting
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------------------------------------------- on fake GPUs


def test_nvml_zero_gpus_is_a_normal_answer(fake_gpus):
    fake_gpus("0-gpus")
    facts = gather_gpus("auto")
    assert facts == {
        "gpu_count": 0,
        "gpu_source": "nvml",
        "gpu_source_reason": None,
        "gpu_driver_version": "550.54.15",
        "gpu_cuda_version": "12.4",
        "gpus": [],
        "gpu_healthy": True,
    }


def test_nvml_one_gpu_every_field(fake_gpus):
    fake_gpus(
        {
            "driver_version": "535.104.05",
            "cuda_version": 12020,
            "gpus": [
                make_gpu(
                    0,
                    name="NVIDIA H100 80GB HBM3",
                    uuid="GPU-11111111-2222-3333-4444-555555555555",
                    pci_bus_id="00000000:18:00.0",
                    memory_total_mib=81559,
                    memory_reserved_mib=559,
                    memory_used_mib=1000,
                    temperature_c=33,
                    utilization_gpu_pct=12,
                    utilization_memory_pct=3,
                    power_draw_w=105.25,
                    power_limit_w=700,
                    compute_capability="9.0",
                    processes=[{"pid": 77, "used_memory_mib": 1000}],
                )
            ],
        }
    )
    facts = gather_gpus("nvml")
    assert (facts["gpu_driver_version"], facts["gpu_cuda_version"], facts["gpu_source"]) == (
        "535.104.05",
        "12.2",
        "nvml",
    )
    assert facts["gpus"] == [
        {
            "index": 0,
            "uuid": "GPU-11111111-2222-3333-4444-555555555555",
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total_mib": 81559,
            "memory_used_mib": 1000,
            "memory_free_mib": 80000,  # total - reserved - used, as nvidia-smi shows it
            "temperature_c": 33,
            "utilization_gpu_pct": 12,
            "utilization_memory_pct": 3,
            "power_draw_w": 105.25,
            "power_limit_w": 700.0,
            "compute_capability": "9.0",
            "pci_bus_id": "00000000:18:00.0",
            "mig_mode": False,
            "processes": [{"pid": 77, "used_memory_mib": 1000}],
            "ecc_errors_uncorrected": 0,
            "retired_pages_pending": False,
            "xid_errors": [],
            "healthy": True,
            "health_issues": [],
        }
    ]


def test_eight_mixed_gpus_nvml_and_nvidia_smi_agree(fake_gpus):
    fake_gpus("8x-mixed")
    nvml = gather_gpus("nvml")
    smi = gather_gpus("nvidia_smi")
    assert nvml["gpu_count"] == smi["gpu_count"] == 8
    assert {g["name"] for g in nvml["gpus"]} == {
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA H100 80GB HBM3",
        "NVIDIA L40S",
        "Tesla T4",
        "NVIDIA GeForce RTX 4090",
    }
    by_index = {g["index"]: g for g in nvml["gpus"]}
    # NOT_SUPPORTED fields are null, never a crash, and not a health issue
    assert by_index[5]["power_draw_w"] is None
    assert by_index[6]["utilization_gpu_pct"] is None and by_index[6]["processes"] is None
    assert by_index[7]["power_limit_w"] is None and by_index[7]["mig_mode"] is None
    assert by_index[1]["mig_mode"] is True and by_index[0]["mig_mode"] is False
    assert all(g["healthy"] for g in nvml["gpus"])
    assert by_index[3]["processes"] == [
        {"pid": 5151, "used_memory_mib": 52000},
        {"pid": 5152, "used_memory_mib": 18000},
    ]
    for a, b in zip(nvml["gpus"], smi["gpus"], strict=True):
        if a["index"] == 6:  # nvidia-smi lists no processes (not null) for a GPU that cannot report them
            assert b["processes"] == []
            a, b = {**a, "processes": None}, {**b, "processes": None}
        assert a == b
    assert smi["gpu_driver_version"] == nvml["gpu_driver_version"]
    assert smi["gpu_cuda_version"] is None


def test_init_failure_falls_back_to_nvidia_smi_and_says_why(fake_gpus):
    fake_gpus({"init_error": "LIB_RM_VERSION_MISMATCH", "nvidia_smi": {"init_error": None}, "gpus": [make_gpu(0)]})
    facts = gather_gpus("auto")
    assert facts["gpu_source"] == "nvidia_smi"
    assert facts["gpu_count"] == 1 and facts["gpus"][0]["uuid"] == make_gpu(0)["uuid"]
    assert facts["gpu_source_reason"].startswith("NVML: the NVML library and the loaded kernel driver are different")


def test_driver_not_loaded_gives_none_with_both_reasons(fake_gpus):
    fake_gpus("no-driver")
    facts = gather_gpus("auto")
    assert (facts["gpu_source"], facts["gpu_count"], facts["gpus"]) == ("none", 0, [])
    reason = facts["gpu_source_reason"]
    assert "NVML: the NVIDIA kernel driver is not loaded" in reason
    assert "nvidia-smi: nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate" in reason


def test_source_nvml_only_does_not_fall_back(fake_gpus):
    fake_gpus({"init_error": "NO_PERMISSION", "nvidia_smi": {"init_error": None}, "gpus": [make_gpu(0)]})
    facts = gather_gpus("nvml")
    assert facts["gpu_source"] == "none" and "no permission to open the NVIDIA devices" in facts["gpu_source_reason"]


def test_nvidia_smi_absent(fake_gpus, tmp_path):
    fake_gpus({"init_error": "DRIVER_NOT_LOADED", "gpus": []})
    facts = gather_gpus("auto", nvidia_smi_path=str(tmp_path / "nvidia-smi"))
    assert facts["gpu_source"] == "none"
    assert f"nvidia-smi: nvidia-smi was not found at {tmp_path / 'nvidia-smi'}" in facts["gpu_source_reason"]


def test_nvidia_smi_hanging_is_cut_off(fake_gpus):
    fake_gpus({"init_error": "DRIVER_NOT_LOADED", "nvidia_smi": {"init_error": None, "hang_s": 60}, "gpus": []})
    t0 = time.monotonic()
    facts = gather_gpus("auto", timeout=0.5)
    assert time.monotonic() - t0 < 30
    assert facts["gpu_source"] == "none"
    assert "nvidia-smi: nvidia-smi hung" in facts["gpu_source_reason"] and "within 0.5 s" in facts["gpu_source_reason"]


def test_hot_gpu_is_unhealthy(fake_gpus):
    fake_gpus({"gpus": [make_gpu(0), make_gpu(1, temperature_c=93)]})
    facts = gather_gpus("nvml", Thresholds(max_temperature_c=85))
    assert [g["healthy"] for g in facts["gpus"]] == [True, False]
    assert facts["gpus"][1]["health_issues"] == ["temperature 93 C is above max_temperature_c (85 C)"]
    assert facts["gpu_healthy"] is False
    assert gather_gpus("nvml", Thresholds(max_temperature_c=95))["gpu_healthy"] is True


def test_uncorrectable_ecc_and_pending_page_retirement_are_unhealthy_from_nvml_and_nvidia_smi(fake_gpus):
    fake_gpus(
        {
            "gpus": [
                make_gpu(0),
                make_gpu(1, ecc_errors_uncorrected=3),
                make_gpu(2, retired_pages_pending=True, not_supported=["ecc_errors_uncorrected"]),
            ]
        }
    )
    for source in ("nvml", "nvidia_smi"):
        gpus = gather_gpus(source)["gpus"]
        assert [(g["ecc_errors_uncorrected"], g["retired_pages_pending"]) for g in gpus] == [
            (0, False),
            (3, False),
            (None, True),  # not supported: cannot be judged
        ], source
        assert [g["health_issues"] for g in gpus] == [
            [],
            ["3 uncorrectable ECC errors (volatile; more than 0)"],
            ["retired memory pages pending: the GPU needs a reset"],
        ], source


def test_lost_gpu_is_unhealthy_not_a_crash(fake_gpus):
    fake_gpus({"gpus": [make_gpu(0, lost=True)]})
    (g,) = gather_gpus("nvml")["gpus"]
    assert g["temperature_c"] is None and g["memory_total_mib"] is None
    assert not g["healthy"] and "cannot read temperature_c: GPU is lost" in g["health_issues"]


@pytest.mark.parametrize("source", ["nvml", "nvidia_smi"])
def test_selection_by_uuid(fake_gpus, source):
    fake_gpus({"gpus": [make_gpu(i) for i in range(4)]})
    facts = gather_gpus(source, selectors=[make_gpu(2)["uuid"], "0"])
    assert [g["index"] for g in facts["gpus"]] == [0, 2]
    assert facts["gpus"][1]["uuid"] == make_gpu(2)["uuid"] and facts["gpu_count"] == 2


@pytest.mark.parametrize("source", ["nvml", "nvidia_smi"])
@pytest.mark.parametrize("ref", ["GPU-deadbeef", "7"])
def test_selection_of_an_absent_gpu_fails(fake_gpus, source, ref):
    fake_gpus({"gpus": [make_gpu(0)]})
    with pytest.raises(GpufleetError, match=f"'{ref}' \\(option gpus\\) is not on this host; it has 0 \\(GPU-"):
        gather_gpus(source, selectors=[ref])


def test_selection_when_no_gpu_answers(fake_gpus):
    fake_gpus("no-driver")
    with pytest.raises(GpufleetError, match="GPUs 0 \\(option gpus\\) were asked for, but no GPU was found: NVML"):
        gather_gpus("auto", selectors=["0"])


def test_nvidia_smi_without_compute_cap_field(tmp_path, fake_gpus):
    """An older nvidia-smi refuses compute_cap: we ask again without it."""
    cfg = fake_gpus({"gpus": [make_gpu(0)]})
    wrapper = tmp_path / "nvidia-smi"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$*" in *compute_cap*) echo \'Field "compute_cap" is not a valid field to query.\'; exit 2;; esac\n'
        f'exec {SMI_BIN}/nvidia-smi "$@"\n'
    )
    wrapper.chmod(0o755)
    _system, gpus = collect_nvidia_smi(str(wrapper), 10)
    assert cfg.exists() and gpus[0]["compute_capability"] is None and gpus[0]["name"] == "NVIDIA A100-SXM4-80GB"


def test_without_pynvml_the_reason_says_what_to_install(fake_gpus, monkeypatch):
    fake_gpus({"gpus": [make_gpu(0)]})
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml → ImportError
    facts = gather_gpus("auto")
    assert facts["gpu_source"] == "nvidia_smi" and facts["gpu_count"] == 1
    assert facts["gpu_source_reason"].startswith(
        "NVML: the Python package nvidia-ml-py (module pynvml) is not installed"
    )
    assert "pip install nvidia-ml-py" in facts["gpu_source_reason"]


def test_process_memory_not_available_is_null(fake_gpus):
    fake_gpus(
        {"gpus": [make_gpu(0, processes=[{"pid": 9, "used_memory_mib": None}, {"pid": 10, "used_memory_mib": 5}])]}
    )
    for source in ("nvml", "nvidia_smi"):
        (g,) = gather_gpus(source)["gpus"]
        assert g["processes"] == [{"pid": 9, "used_memory_mib": None}, {"pid": 10, "used_memory_mib": 5}], source


def test_old_driver_functions_fall_back_and_are_no_health_issue():
    """Against a stand-in pynvml: an old library lacks the unversioned/new calls; we use the older ones."""
    from types import SimpleNamespace

    from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.nvml import _nvml_gpu

    class NVMLError(Exception):
        def __init__(self, value):
            super().__init__(value)
            self.value = value

    class Mismatch(Exception):
        pass

    def missing(*_args, **_kwargs):
        raise NVMLError(13)  # FUNCTION_NOT_FOUND

    def mismatch(*_args):
        raise Mismatch("use _v2")

    mem = SimpleNamespace(total=16 * 2**30, used=2**30, free=15 * 2**30)
    nv = SimpleNamespace(
        NVMLError=NVMLError,
        NVMLLibraryMismatchError=Mismatch,
        nvmlMemory_v2=0x02000028,
        nvmlDeviceGetUUID=lambda h: "GPU-old",
        nvmlDeviceGetName=lambda h: "Tesla V100",
        nvmlDeviceGetMemoryInfo=lambda h, version=None: missing() if version else mem,
        nvmlDeviceGetTemperature=missing,
        nvmlDeviceGetTemperatureV=lambda h, sensor: 50,
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=1, memory=2),
        nvmlDeviceGetPowerUsage=lambda h: 50000,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 250000,
        nvmlDeviceGetCudaComputeCapability=lambda h: (7, 0),
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(busId=b"00000000:3B:00.0"),
        nvmlDeviceGetMigMode=missing,
        nvmlDeviceGetComputeRunningProcesses=mismatch,
        nvmlDeviceGetComputeRunningProcesses_v2=lambda h: [SimpleNamespace(pid=5, usedGpuMemory=2**30)],
    )
    g = _nvml_gpu(nv, 0, object())
    assert (g["memory_total_mib"], g["memory_used_mib"], g["memory_free_mib"]) == (16384, 1024, 15360)
    assert g["temperature_c"] == 50 and g["mig_mode"] is None and g["pci_bus_id"] == "00000000:3B:00.0"
    assert g["processes"] == [{"pid": 5, "used_memory_mib": 1024}]
    assert g["health_issues"] == []
