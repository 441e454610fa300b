"""gpufleet.vllm.vllm_container on podman (CLI adapter, CDI GPUs) with the vLLM stand-in image."""

from __future__ import annotations

import json

import pytest
import requests
from fixtures.container import inspect, logs

pytestmark = [pytest.mark.integration, pytest.mark.podman]

CANARY_KEY = "canary-podman-key-2b8e"
CANARY_ENV = "canary-podman-env-91c0"


@pytest.fixture
def base(deployment, podman_bed, standin_model_dir):
    return {
        **deployment,
        "runtime": "podman",
        "image": podman_bed["0.10.2"],
        "model": str(standin_model_dir),
        "gpus": ["1"],
    }


def cname(b):
    return f"gpufleet-{b['name']}"


def test_podman_start_unchanged_change_absent(ansible_run, base):
    r = ansible_run.run("vllm_container", base)
    assert r["_rc"] == 0 and r["changed"] and r["ready"], r.get("msg")
    first = inspect("podman", cname(base))
    assert "nvidia.com/gpu=1" in json.dumps(first["HostConfig"].get("Devices")) or "/dev/nvidia1" in json.dumps(
        first["HostConfig"].get("Devices")
    )
    again = ansible_run.run("vllm_container", base)
    assert again["changed"] is False and inspect("podman", cname(base))["Id"] == first["Id"]

    r = ansible_run.run("vllm_container", {**base, "max_model_len": 1024}, diff=True)
    assert r["changed"] and r["replaced"] and r["changed_keys"] == ["argv"]
    assert inspect("podman", cname(base))["Id"] != first["Id"] and inspect("podman", first["Id"]) is None
    resp = requests.get(f"http://127.0.0.1:{base['port']}/v1/models", timeout=5).json()
    assert resp["data"][0]["max_model_len"] == 1024

    r = ansible_run.run("vllm_container", {**base, "state": "absent"})
    assert r["changed"] and inspect("podman", cname(base)) is None


def test_podman_check_mode(ansible_run, base):
    pred = ansible_run.run("vllm_container", base, check=True)
    assert pred["changed"] and inspect("podman", cname(base)) is None
    assert ansible_run.run("vllm_container", base)["changed"]
    assert ansible_run.run("vllm_container", base, check=True)["changed"] is False


@pytest.mark.parametrize(
    "change,cls",
    [
        ({"env": {"STANDIN_FAIL": "oom"}}, "gpu_oom"),
        ({"gpus": []}, "no_gpu"),
        ({"env": {"STANDIN_FAIL": "gated"}}, "hf_auth"),
    ],
)
def test_podman_failure_classes(ansible_run, base, change, cls):
    r = ansible_run.run("vllm_container", {**base, **change})
    assert r["_rc"] != 0 and r["failure_class"] == cls, r.get("msg")


def test_podman_rollback_and_secrets(ansible_run, base):
    b = {**base, "api_key": CANARY_KEY, "secret_env": {"TOKEN_X": CANARY_ENV}}
    r = ansible_run.run("vllm_container", b)
    assert r["ready"], r.get("msg")
    old_id = inspect("podman", cname(b))["Id"]
    f = ansible_run.run("vllm_container", {**b, "env": {"STANDIN_FAIL": "kv_cache"}})
    assert f["failure_class"] == "kv_cache_too_small" and f["rolled_back"] and f["rollback_ready"]
    assert inspect("podman", cname(b))["Id"] == old_id
    h = {"Authorization": f"Bearer {CANARY_KEY}"}
    assert requests.get(f"http://127.0.0.1:{b['port']}/v1/models", headers=h, timeout=5).status_code == 200
    info = inspect("podman", cname(b))
    with open(r["manifest_path"]) as fh:
        manifest = fh.read()
    places = {
        "module output": r["_output"] + f["_output"],
        "labels": json.dumps(info["Config"]["Labels"]),
        "argv": json.dumps([info.get("Path"), info.get("Args"), info["Config"].get("Cmd")]),
        "manifest": manifest,
        "logs": logs("podman", cname(b)),
    }
    for where, text in places.items():
        for canary in (CANARY_KEY, CANARY_ENV):
            assert canary not in text, f"{canary} leaked into {where}"


def test_podman_sleep_mode_and_info(ansible_run, base):
    b = {**base, "sleep_mode": True}
    r = ansible_run.run("vllm_container", {**b, "state": "paused"})
    assert r["_rc"] == 0 and r["state"] == "paused", r.get("msg")
    (d,) = ansible_run.run("vllm_deployment_info", {"runtime": "podman", "name": b["name"]})["deployments"]
    assert d["state"] == "paused" and d["health"] == "sleeping"
    assert ansible_run.run("vllm_container", b)["changed"]
    (d,) = ansible_run.run("vllm_deployment_info", {"runtime": "podman", "name": b["name"]})["deployments"]
    assert d["health"] == "ok" and d["gpus"] == ["1"]
