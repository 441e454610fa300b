"""Issue #16, seen from another host: a simulated GPU host (its own network namespace, tests/fixtures/hosts.py) cannot
reach the dev endpoints of a sleep-mode vLLM server on this host, while a normal server's /v1 answers it with the
key only; on this host the sleep-mode server's /v1 needs the key."""

from __future__ import annotations

import json

import pytest
import requests
from fixtures.container import free_port

pytestmark = pytest.mark.integration

KEY = "sec-test-key-0c9d41"
PROBE = """
import json, sys, urllib.request, urllib.error
url, method, key = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, method=method, headers={"Authorization": "Bearer " + key} if key else {})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(json.dumps({"status": r.status}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code}))
except Exception as e:
    print(json.dumps({"status": None, "error": type(e).__name__ + ": " + str(e)}))
"""


def probe(sim_hosts, url: str, method: str = "GET", key: str = "") -> dict:
    """An HTTP request from inside the simulated host gpu-a: {"status": code} or {"status": None, "error": ...}."""
    host = sim_hosts.names[0]
    r = sim_hosts.in_host(host, "python3", "-c", PROBE, url, method, key)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def base(deployment, standin_images, standin_model_dir):
    # no host: the module's default (0.0.0.0, or 127.0.0.1 with sleep mode) is what is tested
    b = {**deployment, "image": standin_images["0.10.2"], "model": str(standin_model_dir), "gpus": ["0"]}
    b.pop("host", None)
    return b


def test_sleep_mode_dev_endpoints_are_not_reachable_from_another_host(ansible_run, base, sim_hosts):
    r = ansible_run.run("vllm_container", {**base, "sleep_mode": True, "api_key": KEY})
    assert r["_rc"] == 0, r["_output"]
    assert "--host" in r["argv"] and r["argv"][r["argv"].index("--host") + 1] == "127.0.0.1"
    remote = f"http://{sim_hosts.gateway}:{base['port']}"
    for path, method in (("/sleep?level=1", "POST"), ("/wake_up", "POST"), ("/is_sleeping", "GET")):
        got = probe(sim_hosts, remote + path, method)
        assert got["status"] is None and "refused" in got["error"].lower(), (path, got)
    local = f"http://127.0.0.1:{base['port']}"
    assert requests.get(local + "/v1/models", timeout=5).status_code == 401
    assert requests.get(local + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).status_code == 200


def test_sleep_mode_with_a_network_host_is_refused_before_anything_runs(ansible_run, base):
    r = ansible_run.run("vllm_container", {**base, "sleep_mode": True, "host": "0.0.0.0", "port": free_port()})
    assert r["_rc"] == 0  # 0.0.0.0 is the default: sleep mode binds 127.0.0.1 instead (with a warning)
    r = ansible_run.run("vllm_container", {**base, "sleep_mode": True, "host": "10.255.255.1"})
    assert r["_rc"] != 0 and "dev endpoints" in r["msg"] and "leave host unset" in r["msg"]


def test_a_normal_server_answers_other_hosts_on_v1_with_the_key_only(ansible_run, base, sim_hosts):
    r = ansible_run.run("vllm_container", {**base, "api_key": KEY})
    assert r["_rc"] == 0, r["_output"]
    remote = f"http://{sim_hosts.gateway}:{base['port']}"
    assert probe(sim_hosts, remote + "/v1/models")["status"] == 401
    assert probe(sim_hosts, remote + "/v1/models", key=KEY)["status"] == 200
