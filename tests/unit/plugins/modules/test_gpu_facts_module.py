"""gpu_facts module: options to facts, failures (min_gpus, fail_on_unhealthy, unknown GPU), check mode, warnings."""

from __future__ import annotations

import json

import pytest
from ansible_collections.gpufleet.vllm.plugins.modules import gpu_facts
from fixtures.module_args import patch_module_args
from fixtures.nvml import make_gpu

FACT_NAMES = {
    "gpu_count",
    "gpu_source",
    "gpu_source_reason",
    "gpu_driver_version",
    "gpu_cuda_version",
    "gpus",
    "gpu_healthy",
    "gpu_container_runtime",
}


def run_module(capsys, **args):
    with patch_module_args(args), pytest.raises(SystemExit) as exc:
        gpu_facts.main()
    result = json.loads(capsys.readouterr().out)
    result["rc"] = exc.value.code
    return result


def test_facts_and_never_changed_in_check_mode(fake_gpus, capsys, tmp_path):
    fake_gpus("2x-a100-80gb")
    r = run_module(capsys, _ansible_check_mode=True, docker_host=f"unix://{tmp_path}/none.sock")
    assert r["rc"] == 0 and r["changed"] is False and "failed" not in r
    facts = r["ansible_facts"]
    assert set(facts) == FACT_NAMES
    assert facts["gpu_count"] == 2 and facts["gpu_source"] == "nvml"
    assert [g["name"] for g in facts["gpus"]] == ["NVIDIA A100-SXM4-80GB"] * 2
    assert facts["gpu_container_runtime"]["docker"]["reachable"] is False


def test_gpus_without_container_runtime_warn(fake_gpus, capsys, tmp_path, monkeypatch):
    # captured at the call: where ansible's controller code was imported in this process, warnings go to Display
    warnings: list[str] = []
    monkeypatch.setattr(gpu_facts.AnsibleModule, "warn", lambda self, msg: warnings.append(msg))
    fake_gpus("1x-h100")
    r = run_module(capsys, docker_host=f"unix://{tmp_path}/none.sock", cdi_spec_dirs=[str(tmp_path)])
    assert r["rc"] == 0
    assert r["ansible_facts"]["gpu_container_runtime"]["ready"] is False
    assert len(warnings) == 1 and warnings[0].startswith("this host cannot run GPU containers: docker: "), warnings
    fake_gpus("0-gpus")  # no GPU: nothing to warn about
    run_module(capsys, docker_host=f"unix://{tmp_path}/none.sock", cdi_spec_dirs=[str(tmp_path)])
    assert len(warnings) == 1


def test_container_runtime_can_be_skipped(fake_gpus, capsys):
    fake_gpus("0-gpus")
    r = run_module(capsys, container_runtime=False)
    assert r["ansible_facts"]["gpu_container_runtime"] is None and r["ansible_facts"]["gpu_count"] == 0


def test_min_gpus_fails_with_the_reason(fake_gpus, capsys):
    fake_gpus("no-driver")
    r = run_module(capsys, min_gpus=1, container_runtime=False, nvidia_smi_path="/nonexistent/nvidia-smi")
    assert r["rc"] == 1 and r["failed"] is True and r["failure_class"] == "not_enough_gpus"
    assert r["msg"].startswith("found 0 GPU(s) through none (NVML: the NVIDIA kernel driver is not loaded")
    assert "nvidia-smi was not found at /nonexistent/nvidia-smi" in r["msg"] and r["msg"].endswith("min_gpus is 1")


def test_fail_on_unhealthy(fake_gpus, capsys):
    fake_gpus({"gpus": [make_gpu(0), make_gpu(1, temperature_c=90)]})
    ok = run_module(capsys, container_runtime=False)
    assert ok["rc"] == 0 and ok["ansible_facts"]["gpu_healthy"] is False
    r = run_module(capsys, container_runtime=False, fail_on_unhealthy=True)
    assert r["rc"] == 1 and r["failure_class"] == "gpu_unhealthy"
    assert r["msg"] == (
        f"unhealthy GPU(s): GPU 1 ({make_gpu(1)['uuid']}): temperature 90 C is above max_temperature_c (85 C)"
    )
    # only GPU 0 selected: healthy, so no failure
    r = run_module(capsys, container_runtime=False, fail_on_unhealthy=True, gpus=["0"])
    assert r["rc"] == 0 and r["ansible_facts"]["gpu_count"] == 1


def test_unknown_gpu_fails(fake_gpus, capsys):
    fake_gpus({"gpus": [make_gpu(0)]})
    r = run_module(capsys, container_runtime=False, gpus=["GPU-nope"])
    assert r["rc"] == 1 and r["failure_class"] == "gpu_not_found"
    assert "'GPU-nope' (option gpus) is not on this host" in r["msg"]


def test_source_none_queries_nothing(fake_gpus, capsys):
    fake_gpus({"gpus": [make_gpu(0)]})
    r = run_module(capsys, source="none", container_runtime=False)
    facts = r["ansible_facts"]
    assert (facts["gpu_source"], facts["gpu_count"]) == ("none", 0)
    assert facts["gpu_source_reason"] == "source=none: GPUs were not queried"
