"""gpufleet.vllm.vllm_container on the real dockerd with the vLLM stand-in image, run through `ansible`."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
import requests
from fixtures.container import inspect, logs

pytestmark = pytest.mark.integration

CANARY_KEY = "canary-apikey-7f3a9c21"
CANARY_HF = "hf_canaryTokenAbCdEfGhIjKlMnOp"
CANARY_ENV = "canary-secretenv-55d1"


@pytest.fixture
def base(deployment, standin_images, standin_model_dir):
    return {
        **deployment,
        "image": standin_images["0.10.2"],
        "model": str(standin_model_dir),
        "gpus": ["0"],
    }


def cname(b):
    return f"gpufleet-{b['name']}"


def models(b, key=None):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.get(f"http://127.0.0.1:{b['port']}/v1/models", headers=h, timeout=5)


def test_start_ready_then_unchanged(ansible_run, base):
    r = ansible_run.run("vllm_container", base)
    assert r["_rc"] == 0, r["_output"]
    assert r["changed"] and r["ready"] and r["phase"] == "ready"
    assert r["models"] == [base["model"]]
    assert models(base).status_code == 200
    first = inspect("docker", cname(base))
    assert first["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["0"]
    assert first["Config"]["Labels"]["gpufleet.config-hash"] == r["config_hash"]

    again = ansible_run.run("vllm_container", base)
    assert again["_rc"] == 0 and again["changed"] is False and again["actions"] == []
    second = inspect("docker", cname(base))
    assert second["Id"] == first["Id"] and second["State"]["StartedAt"] == first["State"]["StartedAt"]
    with open(r["manifest_path"]) as f:
        assert json.load(f)["config_hash"] == r["config_hash"]


def test_option_change_recreates_with_diff_and_env_removal_recreates(ansible_run, base):
    b = {**base, "env": {"MY_FLAG": "1"}}
    assert ansible_run.run("vllm_container", b)["changed"]
    old_id = inspect("docker", cname(b))["Id"]

    r = ansible_run.run("vllm_container", {**b, "max_model_len": 2048}, diff=True, cli=True)  # the rendered diff
    assert r["_rc"] == 0 and r["changed"] and r["replaced"]
    assert r["changed_keys"] == ["argv"]
    out = r["_output"]
    assert "--- before" in out and "+++ after" in out
    assert '+        "--max-model-len",' in out and '+        "2048"' in out
    new = inspect("docker", cname(b))
    assert new["Id"] != old_id and inspect("docker", old_id) is None
    assert models(b).json()["data"][0]["max_model_len"] == 2048

    r = ansible_run.run("vllm_container", {**base, "max_model_len": 2048})  # MY_FLAG removed
    assert r["changed"] and r["changed_env_keys"] == ["MY_FLAG"]
    assert not any(e.startswith("MY_FLAG=") for e in inspect("docker", cname(b))["Config"]["Env"])


def test_check_mode_predicts_and_touches_nothing(ansible_run, base):
    pred = ansible_run.run("vllm_container", base, check=True)
    assert pred["_rc"] == 0 and pred["changed"] and inspect("docker", cname(base)) is None
    real = ansible_run.run("vllm_container", base)
    assert real["changed"] and real["actions"][: len(pred["actions"])] == pred["actions"]
    cid = inspect("docker", cname(base))["Id"]
    assert ansible_run.run("vllm_container", base, check=True)["changed"] is False
    pred = ansible_run.run("vllm_container", {**base, "seed": 3}, check=True)
    assert pred["changed"] and inspect("docker", cname(base))["Id"] == cid
    assert "--seed" not in inspect("docker", cname(base))["Args"]


FAILURES = [
    ({"env": {"STANDIN_FAIL": "oom"}}, "gpu_oom"),
    ({"env": {"STANDIN_FAIL": "kv_cache"}}, "kv_cache_too_small"),
    ({"env": {"STANDIN_FAIL": "gated"}}, "hf_auth"),
    ({"env": {"STANDIN_FAIL": "not_found"}}, "model_not_found"),
    ({"gpus": []}, "no_gpu"),
    ({"extra_args": ["--no-such-flag"], "validate_args": False}, "bad_args"),
    ({"env": {"STANDIN_START_DELAY": "60"}, "wait_timeout": 3}, "timeout"),
]


@pytest.mark.parametrize("change,cls", FAILURES, ids=[c for _change, c in FAILURES])
def test_failure_classes(ansible_run, base, change, cls):
    r = ansible_run.run("vllm_container", {**base, **change})
    assert r["_rc"] != 0, r["_output"]
    assert r["failure_class"] == cls, r["msg"]
    assert r["msg"].startswith(f"{cls}: ") and "\n" not in r["msg"]
    assert r["rolled_back"] is False
    if cls != "timeout":
        assert r["log_tail"], "a failed start returns the log tail"
    state = inspect("docker", cname(base))["State"]
    assert not state["Running"], "a failed server is stopped, not left restarting"


def test_port_conflict_precheck_and_at_runtime(ansible_run, base):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", base["port"]))
    s.listen()
    try:
        r = ansible_run.run("vllm_container", base)
        assert r["_rc"] != 0 and r["failure_class"] == "port_conflict" and "port_conflict" in r["precheck"]
        assert inspect("docker", cname(base)) is None, "a failed pre-check touches nothing"
        r = ansible_run.run("vllm_container", {**base, "prechecks": False})
        assert r["failure_class"] == "port_conflict", r["msg"]
    finally:
        s.close()


def test_prechecks_tp_model_image(ansible_run, base, tmp_path):
    r = ansible_run.run("vllm_container", {**base, "tensor_parallel_size": 2})
    assert r["_rc"] != 0 and "tp_mismatch" in r["precheck"]
    empty = tmp_path / "empty-model"
    empty.mkdir()
    r = ansible_run.run("vllm_container", {**base, "model": str(empty)})
    assert "model_invalid" in r["precheck"]
    r = ansible_run.run("vllm_container", {**base, "model": str(tmp_path / "nope")})
    assert "model_missing" in r["precheck"]
    r = ansible_run.run("vllm_container", {**base, "image": "vllm/vllm-openai:v9.9.9-absent"})
    assert r["_rc"] != 0 and r["precheck"] == "image_absent"
    assert inspect("docker", cname(base)) is None


def test_unknown_extra_flag_refused_before_anything(ansible_run, base):
    r = ansible_run.run("vllm_container", {**base, "extra_args": ["--no-such-flag"]})
    assert r["_rc"] != 0 and r["failure_class"] == "bad_args", r["msg"]
    assert "--no-such-flag is not a flag of vLLM 0.10.2" in r["msg"] and r["table_version"] == "0.10.2", r["msg"]
    assert inspect("docker", cname(base)) is None


def test_typed_option_removed_in_the_image_version_is_refused_before_anything(ansible_run, base, standin_images):
    """swap_space maps to --swap-space on the 0.10.2 image; the 0.33.0 image has no such flag: a clear bad_args error
    naming the version and what replaced it, in check mode too, before anything is created."""
    ok = ansible_run.run("vllm_container", {**base, "swap_space": 4}, check=True)
    assert ok["_rc"] == 0 and "--swap-space" in ok["argv"], ok["_output"]
    new = {**base, "image": standin_images["0.33.0"], "swap_space": 4}
    for check in (True, False):
        r = ansible_run.run("vllm_container", new, check=check)
        assert r["_rc"] != 0 and r["failure_class"] == "bad_args", r["_output"]
        assert r["msg"].startswith("bad_args: option swap_space (--swap-space) does not exist in vLLM 0.33.0"), r["msg"]
        assert "--gpu-memory-utilization" in r["msg"] and "\n" not in r["msg"]
        assert inspect("docker", cname(base)) is None


def test_rollback_keeps_old_server_answering(ansible_run, base):
    b = {**base, "api_key": CANARY_KEY}
    assert ansible_run.run("vllm_container", b)["ready"]
    old_id = inspect("docker", cname(b))["Id"]
    r = ansible_run.run("vllm_container", {**b, "env": {"STANDIN_FAIL": "oom"}})
    assert r["_rc"] != 0 and r["failure_class"] == "gpu_oom"
    assert r["rolled_back"] is True and r["rollback_ready"] is True
    assert "rolled back" in r["msg"]
    now = inspect("docker", cname(b))
    assert now["Id"] == old_id and now["State"]["Running"]
    assert inspect("docker", f"{cname(b)}-previous") is None
    assert models(b, CANARY_KEY).status_code == 200
    # and the kept one is still the declared one: the next run is a no-op
    assert ansible_run.run("vllm_container", b)["changed"] is False


def test_sleep_mode_paused_and_resumed(ansible_run, base):
    b = {**base, "sleep_mode": True}
    r = ansible_run.run("vllm_container", {**b, "state": "paused"})
    assert r["_rc"] == 0 and r["changed"] and r["state"] == "paused", r.get("msg")
    url = f"http://127.0.0.1:{b['port']}"
    assert requests.get(url + "/is_sleeping", timeout=5).json()["is_sleeping"] is True
    assert ansible_run.run("vllm_container", {**b, "state": "paused"})["changed"] is False
    r = ansible_run.run("vllm_container", b)
    assert r["changed"] and any("wake_up" in a for a in r["actions"])
    assert requests.get(url + "/is_sleeping", timeout=5).json()["is_sleeping"] is False
    assert ansible_run.run("vllm_container", b)["changed"] is False


def test_stopped_restarted_absent(ansible_run, base):
    assert ansible_run.run("vllm_container", base)["changed"]
    assert ansible_run.run("vllm_container", {**base, "state": "stopped"})["changed"]
    assert not inspect("docker", cname(base))["State"]["Running"]
    assert ansible_run.run("vllm_container", {**base, "state": "stopped"})["changed"] is False
    r = ansible_run.run("vllm_container", {**base, "state": "restarted"})
    assert r["changed"] and r["ready"]
    r = ansible_run.run(
        "vllm_container", {"name": base["name"], "state": "absent", "manifest_dir": base["manifest_dir"]}
    )
    assert r["changed"] and inspect("docker", cname(base)) is None
    r = ansible_run.run(
        "vllm_container", {"name": base["name"], "state": "absent", "manifest_dir": base["manifest_dir"]}
    )
    assert r["changed"] is False


def test_stopped_and_restarted_by_name_act_on_the_existing_container(ansible_run, base):
    """Only name + state: the running container is stopped / restarted as it is, never recreated (its options differ
    from the module defaults, which would otherwise mean a new config hash)."""
    b = {**base, "max_model_len": 2048, "env": {"MY_FLAG": "1"}}
    assert ansible_run.run("vllm_container", b)["ready"]
    first = inspect("docker", cname(b))
    by_name = {"name": b["name"], "manifest_dir": b["manifest_dir"], "stop_timeout": 5}
    pred = ansible_run.run("vllm_container", {**by_name, "state": "stopped"}, check=True, diff=True, cli=True)
    assert pred["_rc"] == 0 and pred["changed"] and pred["actions"] == [f"stop {cname(b)}"], pred["_output"]
    assert '-    "state": "started"' in pred["_output"] and '+    "state": "stopped"' in pred["_output"]
    assert inspect("docker", cname(b))["State"]["Running"]
    r = ansible_run.run("vllm_container", {**by_name, "state": "stopped"})
    assert r["_rc"] == 0 and r["actions"] == pred["actions"] and r["endpoint"].endswith(f":{b['port']}")
    stopped = inspect("docker", cname(b))
    assert stopped["Id"] == first["Id"] and not stopped["State"]["Running"]
    assert ansible_run.run("vllm_container", {**by_name, "state": "stopped"})["changed"] is False
    r = ansible_run.run("vllm_container", {**by_name, "state": "restarted"})
    assert r["_rc"] == 0 and r["changed"] and r["ready"], r["_output"]
    assert inspect("docker", cname(b))["Id"] == first["Id"] and models(b).json()["data"][0]["max_model_len"] == 2048
    # The full spec converges again without a recreate (same configuration).
    assert ansible_run.run("vllm_container", b)["changed"] is False
    # A name that has no container: nothing to act on, a clear error.
    r = ansible_run.run("vllm_container", {**by_name, "name": b["name"] + "-none", "state": "stopped"})
    assert r["_rc"] != 0 and "does not exist" in r["_output"]


def test_deployment_info_names_select_deployments_and_replicas(ansible_run, base):
    n = base["name"]
    assert ansible_run.run("vllm_container", {**base, "name": f"{n}-0", "wait": False})["changed"]
    assert ansible_run.run("vllm_container", {**base, "name": f"{n}-1", "port": base["port"] + 1, "wait": False})[
        "changed"
    ]

    def names(sel):
        r = ansible_run.run("vllm_deployment_info", {"names": sel, "probe": False})
        return [d["name"] for d in r["deployments"]]

    try:
        assert names([n]) == [f"{n}-0", f"{n}-1"]
        assert names([f"{n}-1"]) == [f"{n}-1"]
        assert names([n[:-1]]) == []
    finally:
        for name in (f"{n}-0", f"{n}-1"):
            ansible_run.run("vllm_container", {"name": name, "state": "absent", "manifest_dir": base["manifest_dir"]})


def test_secret_canary_never_leaks(ansible_run, base):
    b = {**base, "api_key": CANARY_KEY, "hf_token": CANARY_HF, "secret_env": {"DB_PASSWORD": CANARY_ENV}}
    r = ansible_run.run("vllm_container", b, diff=True)
    assert r["_rc"] == 0 and r["ready"], r["_output"]
    assert models(b).status_code == 401 and models(b, CANARY_KEY).status_code == 200
    # a failing replacement too: its log tail and error go through the same masking
    f = ansible_run.run("vllm_container", {**b, "env": {"STANDIN_FAIL": "oom", "STANDIN_LOG_SECRETS": "1"}})
    assert f["failure_class"] == "gpu_oom"
    info = inspect("docker", cname(b))
    with open(r["manifest_path"]) as fh:
        manifest = fh.read()
    places = {
        "module output": r["_output"] + f["_output"],
        "labels": json.dumps(info["Config"]["Labels"]),
        "argv": json.dumps([info["Path"], *info["Args"], info["Config"]["Cmd"]]),
        "manifest": manifest,
        "logs": logs("docker", cname(b)),
    }
    for where, text in places.items():
        for canary in (CANARY_KEY, CANARY_HF, CANARY_ENV):
            assert canary not in text, f"{canary} leaked into {where}"
    assert "DB_PASSWORD" in manifest and "VLLM_API_KEY" in manifest  # keys are recorded, values are not


def test_deployment_info_from_labels(ansible_run, base):
    assert ansible_run.run("vllm_container", {**base, "served_model_name": ["tiny"]})["ready"]
    r = ansible_run.run("vllm_deployment_info", {"name": base["name"]})
    assert r["_rc"] == 0 and r["changed"] is False
    (d,) = r["deployments"]
    assert d["name"] == base["name"] and d["state"] == "running" and d["health"] == "ok" and d["phase"] == "ready"
    assert d["endpoint"] == f"http://127.0.0.1:{base['port']}" and d["gpus"] == ["0"] and d["model"] == base["model"]
    assert d["manifest"]["engine_args"]["served_model_name"] == ["tiny"] and d["uptime_s"] is not None
    # a failed one reports its failure class
    f = ansible_run.run("vllm_container", {**base, "env": {"STANDIN_FAIL": "kv_cache"}, "max_model_len": 100})
    assert f["rolled_back"] is True
    subprocess.run(["docker", "stop", cname(base)], capture_output=True, check=True)
    (d,) = ansible_run.run("vllm_deployment_info", {"name": base["name"]})["deployments"]
    assert d["state"] == "stopped" and d["health"] == "unknown"


def test_gpu_prechecks_with_fake_nvml(ansible_run, base, container_gpu_env):
    r = ansible_run.run("vllm_container", {**base, "gpus": ["5"]}, extra_env=container_gpu_env)
    assert r["_rc"] != 0 and "gpu_not_found" in r["precheck"], r.get("msg")
    r = ansible_run.run(
        "vllm_container", {**base, "gpus": ["1"], "gpu_memory_utilization": 0.5}, extra_env=container_gpu_env
    )
    assert r["_rc"] != 0 and "gpu_memory" in r["precheck"], r.get("msg")
    assert "lower gpu_memory_utilization" in r["msg"]
    # A hot GPU (the fake NVML's temperature over gpu_facts' 85 C): refused with the reason, nothing created.
    hot = json.loads(Path(container_gpu_env["GPUFLEET_FAKE_GPUS"]).read_text())
    hot["gpus"][1].update(temperature_c=95, memory_used_mib=0)
    hot_cfg = Path(container_gpu_env["GPUFLEET_FAKE_GPUS"]).with_name("hot-gpus.json")
    hot_cfg.write_text(json.dumps(hot))
    r = ansible_run.run(
        "vllm_container",
        {**base, "gpus": ["1"], "gpu_memory_utilization": 0.5},
        extra_env={**container_gpu_env, "GPUFLEET_FAKE_GPUS": str(hot_cfg)},
    )
    assert r["_rc"] != 0 and r["precheck"] == ["gpu_unhealthy"], r.get("msg")
    assert "GPU 1 (GPU-11111111-1111-1111-1111-111111111111) is unhealthy: temperature 95 C" in r["msg"]
    assert inspect("docker", cname(base)) is None
    uuid0 = "GPU-00000000-0000-0000-0000-000000000000"
    r = ansible_run.run(
        "vllm_container", {**base, "gpus": [uuid0], "gpu_memory_utilization": 0.9}, extra_env=container_gpu_env
    )
    assert r["_rc"] == 0 and r["ready"], r.get("msg")
    assert r["manifest"]["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert inspect("docker", cname(base))["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == [uuid0]
