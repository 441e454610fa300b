"""vllm_container on real engines: the start-up phases (pulling, downloading, ...) and feeding a manifest back.

Ports 18700-18799. The pulled images live in a repository of their own on the loopback registry
(127.0.0.1:5000/gpufleet-test/pull-<hex>), so nothing another test uses is removed from the engine.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from fixtures.container import free_port, inspect, logs

pytestmark = pytest.mark.integration

LOCAL_PHASES = ["starting", "loading_weights", "compiling", "capturing_graphs", "ready"]
HUB_PHASES = ["starting", "downloading", "loading_weights", "compiling", "capturing_graphs", "ready"]
CANARY_KEY = "canary-manifest-key-4d2e"


def port() -> int:
    return free_port(18700, 18799)


@pytest.fixture
def base(deployment, standin_images, standin_model_dir):
    return {**deployment, "port": port(), "image": standin_images["0.10.2"], "model": str(standin_model_dir),
            "gpus": ["0"]}  # fmt: skip


def cname(b):
    return f"gpufleet-{b['name']}"


# ---------------------------------------------------------------------------------------------------- phases
def test_phases_of_a_local_model_and_of_a_hub_model(ansible_run, base, fake_hub):
    r = ansible_run.run("vllm_container", base)
    assert r["_rc"] == 0 and r["ready"], r["_output"]
    assert r["phases"] == LOCAL_PHASES and r["readiness"]["phases"] == LOCAL_PHASES
    assert "Using model weights format" not in logs("docker", cname(base))  # vLLM logs it for hub ids only

    repo = f"org/tiny-{uuid.uuid4().hex[:6]}"
    fake_hub.make_repo(repo, shards=1)
    hub = {**base, "model": repo, "env": {"HF_ENDPOINT": fake_hub.url, "STANDIN_DOWNLOAD_DELAY": "1"}}
    r = ansible_run.run("vllm_container", hub)
    assert r["_rc"] == 0 and r["ready"] and r["models"] == [repo], r["_output"]
    assert r["phases"] == HUB_PHASES and r["phase"] == "ready"
    text = logs("docker", cname(base))
    assert "Using model weights format ['*.safetensors']" in text
    assert f"Time spent downloading weights for {repo}:" in text
    # the weights went into hf_cache_dir on the host
    assert list((Path(base["hf_cache_dir"]) / "hub").glob(f"models--{repo.replace('/', '--')}"))
    # no-op: nothing waited for, no phases
    again = ansible_run.run("vllm_container", hub)
    assert again["changed"] is False and "phases" not in again
    # a restart finds the snapshot in the cache: checked, not downloaded (no "Time spent" line)
    r = ansible_run.run("vllm_container", {**hub, "state": "restarted"})
    assert r["_rc"] == 0 and r["phases"] == HUB_PHASES, r["_output"]
    # by name as well (the container as it is)
    by_name = {"name": base["name"], "state": "restarted", "manifest_dir": base["manifest_dir"], "stop_timeout": 5}
    r = ansible_run.run("vllm_container", by_name)
    assert r["_rc"] == 0 and r["phases"] == HUB_PHASES, r["_output"]


def test_failure_reports_the_phases_it_went_through(ansible_run, base):
    r = ansible_run.run("vllm_container", {**base, "env": {"STANDIN_FAIL": "kv_cache"}})
    assert r["_rc"] != 0 and r["failure_class"] == "kv_cache_too_small", r["_output"]
    assert r["phases"] == ["starting", "loading_weights", "compiling"] and r["phase"] == "compiling"


# ---------------------------------------------------------------------------------------------------- pulling
@pytest.fixture
def pushed(registry, standin_images):
    """The 0.10.2 stand-in pushed to a repository of its own; absent from the local engine."""
    ref = f"{registry['open']}/gpufleet-test/pull-{uuid.uuid4().hex[:8]}:v0.10.2"
    subprocess.run(["docker", "tag", standin_images["0.10.2"], ref], check=True, capture_output=True)
    r = subprocess.run(["docker", "push", ref], capture_output=True, text=True, check=False)
    subprocess.run(["docker", "rmi", ref], check=True, capture_output=True)
    assert r.returncode == 0, r.stderr
    yield ref
    subprocess.run(["docker", "rmi", "-f", ref], capture_output=True, check=False)


def test_pull_never_missing_and_check_mode(ansible_run, base, pushed):
    b = {**base, "image": pushed}
    try:
        r = ansible_run.run("vllm_container", b)
        assert r["_rc"] != 0 and r["precheck"] == "image_absent" and "gpufleet.vllm.vllm_image" in r["msg"]
        assert inspect("docker", cname(b)) is None

        b["pull"] = "missing"
        pred = ansible_run.run("vllm_container", b, check=True)
        assert pred["_rc"] == 0 and pred["changed"] and pred["actions"][0] == f"pull {pushed}", pred["_output"]
        assert pred["phases"] == ["pulling"] and pred["vllm_version"] == "0.10.2"
        absent = subprocess.run(["docker", "image", "inspect", pushed], capture_output=True, check=False)
        assert absent.returncode != 0, "check mode pulled the image"

        r = ansible_run.run("vllm_container", b)
        assert r["_rc"] == 0 and r["ready"], r["_output"]
        assert r["actions"][: len(pred["actions"])] == pred["actions"] and r["argv"] == pred["argv"]
        assert r["phases"] == ["pulling", *LOCAL_PHASES]
        assert inspect("docker", cname(b))["Config"]["Image"] == pushed
        # issue #19 item 6: the pull's last numbers (the image's layers are here already: dockerd streams none of
        # them; test_vllm_image pulls a fresh layer and checks the bytes)
        pulled = r["pull_progress"]
        assert pulled["phase"] == "done" and pulled["layers_done"] == pulled["layers_total"], pulled

        again = ansible_run.run("vllm_container", b)
        assert again["changed"] is False and "phases" not in again

        missing = {**b, "name": b["name"] + "-x", "port": port(), "image": pushed.rsplit(":", 1)[0] + ":v9.9.9"}
        r = ansible_run.run("vllm_container", missing)
        assert r["_rc"] != 0 and r["failure_class"] == "not_found" and r["phase"] == "pulling", r["_output"]
        assert r["pull_progress"]["phase"] == "pulling"  # not done
        assert inspect("docker", cname(missing)) is None
    finally:
        subprocess.run(["docker", "rm", "-f", cname(b)], capture_output=True, check=False)


# ---------------------------------------------------------------------------------------------------- manifests
def _manifest(path):
    with open(path) as f:
        return json.load(f)


def _without(d, keys):
    return {k: v for k, v in d.items() if k not in keys}


def _argv_without_port(argv, p):
    return [a for a in argv if a != str(p)]


@pytest.fixture
def deployed_a(ansible_run, base):
    a = {
        **base, "max_model_len": 2048, "seed": 7, "served_model_name": ["tiny", "tiny-alias"],
        "enable_prefix_caching": False, "extra_args": ["--max-num-seqs", "16"], "env": {"MY_FLAG": "1"},
        "api_key": CANARY_KEY,
    }  # fmt: skip
    r = ansible_run.run("vllm_container", a)
    assert r["_rc"] == 0 and r["ready"], r["_output"]
    return a, r


def test_deploy_b_from_a_manifest(ansible_run, deployed_a):
    a, ra = deployed_a
    b_name, b_port = a["name"] + "-b", port()
    b = {
        "from_manifest": ra["manifest_path"], "name": b_name, "port": b_port, "manifest_dir": a["manifest_dir"],
        "hf_cache_dir": a["hf_cache_dir"], "compile_cache_dir": a["compile_cache_dir"], "wait_timeout": 60,
        "stop_timeout": 5, "env": {"MY_FLAG": "1"}, "api_key": CANARY_KEY,
    }  # fmt: skip
    try:
        pred = ansible_run.run("vllm_container", b, check=True)
        assert pred["_rc"] == 0 and pred["changed"] and inspect("docker", f"gpufleet-{b_name}") is None
        rb = ansible_run.run("vllm_container", b, cli=True)  # the controller's output: its warnings
        assert rb["_rc"] == 0 and rb["ready"] and rb["models"] == ["tiny", "tiny-alias"], rb["_output"]
        assert "[WARNING]" not in rb["_output"] or "from_manifest" not in rb["_output"]
        ia, ib = inspect("docker", cname(a)), inspect("docker", f"gpufleet-{b_name}")
        assert ib["Image"] == ia["Image"] and ib["Config"]["Image"] == ia["Config"]["Image"]
        assert _argv_without_port(ib["Args"], b_port) == _argv_without_port(ia["Args"], a["port"])
        assert f"--port {b_port}" in " ".join(ib["Args"])
        ma, mb = _manifest(ra["manifest_path"]), _manifest(rb["manifest_path"])
        assert ma["name"] == a["name"] and mb["name"] == b_name and mb["port"] == b_port
        # equal apart from name/port/created_at/hostname, and what follows from the port: argv and config hash
        keys = {"name", "port", "created_at", "hostname", "config_hash", "argv"}
        assert _without(mb, keys) == _without(ma, keys)
        assert _argv_without_port(mb["argv"], b_port) == _argv_without_port(ma["argv"], a["port"])
        assert CANARY_KEY not in json.dumps(mb) and CANARY_KEY not in rb["_output"]
        h = {"Authorization": f"Bearer {CANARY_KEY}"}
        got = requests.get(f"http://127.0.0.1:{b_port}/v1/models", headers=h, timeout=5).json()["data"][0]
        assert got["max_model_len"] == 2048

        again = ansible_run.run("vllm_container", b)
        assert again["_rc"] == 0 and again["changed"] is False, again["_output"]
        # an option given with its default value still wins over the manifest (the module knows what the task set)
        r = ansible_run.run("vllm_container", {**b, "port": 8000, "prechecks": False}, check=True)
        assert r["_rc"] == 0 and r["endpoint"] == "http://127.0.0.1:8000", r["_output"]

        # the env values are not in the manifest: a task that does not give them again is told which keys
        r = ansible_run.run("vllm_container", _without(b, {"env", "api_key"}), check=True, cli=True)
        assert r["_rc"] == 0 and "from_manifest" in r["_output"] and "MY_FLAG, VLLM_API_KEY" in r["_output"]
    finally:
        subprocess.run(["docker", "rm", "-f", f"gpufleet-{b_name}"], capture_output=True, check=False)


def test_from_manifest_errors_touch_nothing(ansible_run, base, tmp_path):
    bad = tmp_path / "bad.json"
    cases = {
        str(tmp_path / "nope.json"): "does not exist on this host",
        str(bad): "is not JSON",
    }
    bad.write_text("{")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"manifest_version": 99, "name": "x", "image": "i", "model": "/m"}))
    cases[str(old)] = "manifest_version 99"
    for path, msg in cases.items():
        r = ansible_run.run("vllm_container", {"from_manifest": path, "name": base["name"], "port": base["port"]})
        assert r["_rc"] != 0 and msg in r["msg"] and r["msg"].startswith("from_manifest: "), r["_output"]
        assert inspect("docker", cname(base)) is None


@pytest.mark.podman
def test_docker_manifest_deployed_on_podman(ansible_run, deployed_a, podman_bed):
    a, ra = deployed_a
    c_name, c_port = a["name"] + "-p", port()
    c = {
        "from_manifest": ra["manifest_path"], "name": c_name, "port": c_port, "runtime": "podman", "gpus": ["1"],
        "manifest_dir": a["manifest_dir"], "hf_cache_dir": a["hf_cache_dir"],
        "compile_cache_dir": a["compile_cache_dir"], "wait_timeout": 60, "stop_timeout": 5, "env": {"MY_FLAG": "1"},
        "api_key": CANARY_KEY,
    }  # fmt: skip
    try:
        rc = ansible_run.run("vllm_container", c)
        assert rc["_rc"] == 0 and rc["ready"], rc["_output"]
        ia, ic = inspect("docker", cname(a)), inspect("podman", f"gpufleet-{c_name}")
        assert ic["Image"].removeprefix("sha256:") == ia["Image"].removeprefix("sha256:")  # the same image id
        assert _argv_without_port(ic["Args"], c_port) == _argv_without_port(ia["Args"], a["port"])
        ma, mc = _manifest(ra["manifest_path"]), _manifest(rc["manifest_path"])
        keys = {"name", "port", "created_at", "hostname", "config_hash", "argv", "runtime", "gpus", "image_digest"}
        assert _without(mc, keys) == _without(ma, keys)
        assert mc["runtime"] == "podman" and [g["id"] for g in mc["gpus"]] == ["1"]
        assert ansible_run.run("vllm_container", c)["changed"] is False
    finally:
        subprocess.run(["podman", "rm", "-f", f"gpufleet-{c_name}"], capture_output=True, check=False)
