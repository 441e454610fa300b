"""gpu_facts through real ansible: fake libnvidia-ml via LD_LIBRARY_PATH, fake nvidia-smi, the bed's daemons."""

from __future__ import annotations

import ctypes.util
import json
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest
from fixtures.container import run_adhoc, run_module
from fixtures.nvml import EXAMPLES, make_gpu

pytestmark = pytest.mark.integration


def adhoc(
    env: dict[str, str], args: str = "", check_mode: bool = False, module: str = "gpu_facts", cli: bool = False
) -> dict:
    """The module run on this machine with ARGS (``k=v ...``), as Ansible runs it on a host (fixtures.container.run_module:
    its file, the task's arguments; about 1.5 s of CPU less a call than the CLI); with ``cli=True``, through
    `ansible localhost -m gpufleet.vllm.<module> -a ARGS`, the result as the tree callback wrote it."""
    if not cli:
        params = dict(word.split("=", 1) for word in shlex.split(args))
        result, proc = run_module(module, params, env, check=check_mode)
        result["_rc"] = proc.returncode
        return result
    result, _, proc = run_adhoc(module, args, env, check=check_mode, timeout=120)
    assert result is not None, f"no result (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result["_rc"] = proc.returncode  # the tree callback drops "failed"; ansible's exit status tells
    return result


@pytest.fixture
def gpu_env(ansible_env, fake_gpu_env, tmp_path):
    """env_for(config dict or example name) → environment for ansible seeing those fake GPUs."""

    def env_for(config) -> dict[str, str]:
        if isinstance(config, str):
            path = EXAMPLES / f"{config}.json"
        else:
            path = tmp_path / "gpus.json"
            path.write_text(json.dumps(config))
        env = fake_gpu_env(path)
        env.update({k: v for k, v in ansible_env.items() if k.startswith("ANSIBLE_")})
        env["PATH"] = f"{fake_gpu_env(path)['PATH'].split(':', 1)[0]}:{ansible_env['PATH']}"
        return env

    return env_for


def test_eight_gpus_through_ansible_and_pynvml(gpu_env):
    r = adhoc(gpu_env("8x-mixed"), check_mode=True, cli=True)
    assert r["_rc"] == 0 and r["changed"] is False
    facts = r["ansible_facts"]
    assert facts["gpu_source"] == "nvml" and facts["gpu_count"] == 8
    assert [g["index"] for g in facts["gpus"]] == list(range(8))
    expected = json.loads((EXAMPLES / "8x-mixed.json").read_text())["gpus"]
    assert [g["uuid"] for g in facts["gpus"]] == [g["uuid"] for g in expected]
    t4 = facts["gpus"][6]
    assert t4["name"] == "Tesla T4" and t4["utilization_gpu_pct"] is None and t4["processes"] is None
    assert facts["gpus"][3]["memory_used_mib"] == 70000 and len(facts["gpus"][3]["processes"]) == 2


def test_deployment_info_returns_the_same_gpus(gpu_env):
    """The deployments role plans from vllm_deployment_info gpus=true: the same GPU list as gpu_facts."""
    env = gpu_env("8x-mixed")
    facts = adhoc(env, "container_runtime=false")["ansible_facts"]
    info = adhoc(env, "gpus=true probe=false", check_mode=True, module="vllm_deployment_info")
    assert info["_rc"] == 0 and info["changed"] is False and info["gpu_source"] == "nvml"
    strip = ("temperature_c", "utilization_gpu_pct", "utilization_memory_pct", "power_draw_w")  # sampled twice
    assert [{k: v for k, v in g.items() if k not in strip} for g in info["gpus"]] == [
        {k: v for k, v in g.items() if k not in strip} for g in facts["gpus"]
    ]
    assert "gpus" not in adhoc(env, "probe=false", module="vllm_deployment_info")


def test_no_library_falls_back_to_nvidia_smi(gpu_env):
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("a real libnvidia-ml is installed here: NVML would not be missing")
    env = gpu_env("1x-h100")
    env.pop("LD_LIBRARY_PATH")  # pynvml finds no libnvidia-ml.so.1 at all
    facts = adhoc(env, "container_runtime=false")["ansible_facts"]
    assert facts["gpu_source"] == "nvidia_smi"
    assert facts["gpu_source_reason"].startswith("NVML: the NVML library libnvidia-ml.so.1 was not found")
    assert facts["gpu_count"] == 1 and facts["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert facts["gpus"][0]["compute_capability"] == "9.0" and facts["gpus"][0]["processes"] == []


def test_version_mismatch_and_hanging_nvidia_smi_give_none(gpu_env):
    env = gpu_env({"init_error": "LIB_RM_VERSION_MISMATCH", "nvidia_smi": {"hang_s": 120}, "gpus": [make_gpu(0)]})
    r = adhoc(env, "timeout=1 container_runtime=false")
    facts = r["ansible_facts"]
    assert (facts["gpu_source"], facts["gpu_count"]) == ("none", 0)
    assert "NVML: the NVML library and the loaded kernel driver are different versions" in facts["gpu_source_reason"]
    assert "nvidia-smi: nvidia-smi hung" in facts["gpu_source_reason"]


def test_min_gpus_and_unhealthy_fail_the_task(gpu_env):
    env = gpu_env({"gpus": [make_gpu(0, temperature_c=92), make_gpu(1)]})
    r = adhoc(env, "min_gpus=3 container_runtime=false")
    assert r["_rc"] != 0 and r["failure_class"] == "not_enough_gpus"
    assert r["msg"] == "found 2 GPU(s) through nvml, min_gpus is 3"
    r = adhoc(env, "fail_on_unhealthy=true container_runtime=false")
    assert r["_rc"] != 0 and r["failure_class"] == "gpu_unhealthy"
    assert "GPU 0" in r["msg"] and "temperature 92 C" in r["msg"]
    uuid = make_gpu(1)["uuid"]
    r = adhoc(env, f"fail_on_unhealthy=true gpus={uuid} container_runtime=false")
    assert r["_rc"] == 0 and [g["uuid"] for g in r["ansible_facts"]["gpus"]] == [uuid]


def test_playbook_uses_the_facts(gpu_env, tmp_path):
    play = tmp_path / "play.yml"
    play.write_text(
        textwrap.dedent(
            """\
            - hosts: localhost
              gather_facts: false
              tasks:
                - gpufleet.vllm.gpu_facts:
                    container_runtime: false
                - ansible.builtin.assert:
                    that:
                      - ansible_facts.gpu_count == 4
                      - gpus | map(attribute='name') | unique == ['NVIDIA L40S']
                      - gpus | map(attribute='memory_free_mib') | min > 40000
                      - gpu_healthy
            """
        )
    )
    env = gpu_env("4x-l40s")
    for extra in ([], ["--check"]):
        proc = subprocess.run(
            ["ansible-playbook", "-i", "localhost,", "-c", "local", str(play), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "changed=0" in proc.stdout and "failed=0" in proc.stdout


def test_container_runtime_on_the_bed(gpu_env):
    """The bed's dockerd has the fake hook on its PATH and podman has a CDI spec: both must read as ready."""
    root = Path(__file__).resolve().parents[2]
    subprocess.run(["bash", str(root / "sim" / "steps.d" / "10-engine.sh"), "up"], check=True)  # idempotent, fast
    facts = adhoc(gpu_env("2x-a100-80gb"))["ansible_facts"]
    runtime = facts["gpu_container_runtime"]
    docker = runtime["docker"]
    assert docker["reachable"] is True and docker["gpu_ready"] is True, docker
    assert docker["gpu_device_driver_evidence"].startswith("nvidia-container-runtime-hook is on dockerd's PATH")
    podman = runtime["podman"]
    assert "nvidia.com/gpu=0" in podman["cdi_devices"] and podman["gpu_ready"] is True, podman
    assert runtime["ready"] is True


@pytest.mark.multihost
def test_each_simulated_host_sees_its_own_gpus(sim_hosts, fake_nvml_dir):
    results = sim_hosts.ansible("all", "gpufleet.vllm.gpu_facts", "container_runtime=false")
    names = {h: [g["name"] for g in r["ansible_facts"]["gpus"]] for h, r in results.items()}
    assert names.get("gpu-a") == ["NVIDIA A100-SXM4-80GB"] * 2, names
    assert names.get("gpu-b") == ["NVIDIA L40S"] * 4, names
    assert names.get("gpu-c") == ["NVIDIA H100 80GB HBM3"], names
    uuids = [g["uuid"] for r in results.values() for g in r["ansible_facts"]["gpus"]]
    assert len(uuids) == len(set(uuids))
    assert all(r["ansible_facts"]["gpu_source"] == "nvml" for r in results.values())
