"""fleet_plan action: inputs gathered from hostvars, state file, diff, and real ansible-playbook runs."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpufleet.vllm.plugins.action.fleet_plan import (
    diff_lines,
    existing_from_info,
    feed_sizes,
    gather,
    gpus_from_facts,
    read_state,
    used_ports_from_facts,
    write_state,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

GPU = {"index": 0, "uuid": "GPU-0", "memory_total_mib": 81920, "memory_free_mib": 81000, "memory_used_mib": 920}
ARGS = {"gpu_facts_var": "gpus", "existing_var": "gpufleet_deployment_info", "unreachable": [], "state_path": None}


@pytest.mark.parametrize(
    "hostvars",
    [
        {"ansible_facts": {"gpus": [GPU]}},
        {"ansible_facts": {"gpus": {"driver_version": "550", "gpus": [GPU]}}},
        {"gpus": [GPU]},
    ],
)
def test_gpus_from_facts(hostvars):
    assert gpus_from_facts(hostvars, "gpus") == [GPU]


def test_no_gpu_facts_is_none():
    assert gpus_from_facts({"ansible_facts": {}}, "gpus") is None


def test_existing_from_info_fields_and_labels():
    info = {
        "deployments": [
            {"name": "chat-0", "gpus": [0, 1], "port": 8000},
            {"labels": {"gpufleet.deployment": "emb-1", "gpufleet.gpus": "2,3", "gpufleet.port": "8100"}},
            {"deployment": "x", "replica": 2, "name": "x-2", "gpus": ["GPU-9"], "port": 9000},
            "junk",
            {"port": 1},
        ]
    }
    assert existing_from_info("h", info) == [
        {"host": "h", "name": "chat-0", "gpus": [0, 1], "port": 8000},
        {"host": "h", "name": "emb-1", "gpus": ["2", "3"], "port": 8100},  # labels.parse: the port as a number
        {"host": "h", "name": "x-2", "gpus": ["GPU-9"], "port": 9000, "deployment": "x", "replica": 2},
    ]
    assert existing_from_info("h", None) == []


def test_used_ports():
    hv = {"ansible_facts": {"tcp_listen": [{"port": 9100}, {"port": 22}, {"address": "x"}]}}
    assert used_ports_from_facts(hv) == [22, 9100]


def test_used_ports_from_facts_and_host_var():
    tv = task_vars(a={"gpufleet_used_ports": [22, "8000"], "ansible_facts": {"tcp_listen": [{"port": 9100}]}})
    hosts = gather(tv, ARGS)[0]
    assert hosts["a"]["used_ports"] == [22, 8000, 9100]


def test_state_round_trip(tmp_path):
    path = tmp_path / "sub" / "placements.json"
    assignments = [
        {"deployment": "chat", "replica": 0, "host": "a", "gpus": [0], "gpu_uuids": ["GPU-0"], "port": 8000, "x": 1}
    ]
    assert write_state(str(path), assignments) is True
    assert write_state(str(path), assignments) is False  # same content: untouched
    assert read_state(str(path)) == [
        {"deployment": "chat", "replica": 0, "host": "a", "gpus": [0], "gpu_uuids": ["GPU-0"], "port": 8000}
    ]
    assert read_state(str(tmp_path / "missing.json")) == []
    path.write_text("{not json")
    with pytest.raises(GpufleetError, match="cannot read it"):
        read_state(str(path))
    path.write_text('{"version": 99}')
    with pytest.raises(GpufleetError, match="not a gpufleet placement file"):
        read_state(str(path))


def test_diff_lines():
    entries = [
        {"name": "b-0", "host": "h", "gpus": [1, 2], "port": 1},
        {"deployment": "a", "replica": 3, "host": "h", "gpus": [], "port": None},
    ]
    errors = [{"message": "c: 0/1 hosts fit — h: unreachable"}]
    assert diff_lines(entries, errors) == (
        "a-3: h gpus= port=None\nb-0: h gpus=1,2 port=1\n# unschedulable: c: 0/1 hosts fit — h: unreachable\n"
    )
    assert diff_lines([]) == ""
    assert diff_lines([{"name": "big-0", "host": "h", "gpus": [0, 1], "gpus_all": True, "port": 2}]) == (
        "big-0: h gpus=all(0,1) port=2\n"
    )


def task_vars(**hosts):
    return {
        "hostvars": hosts,
        "ansible_play_hosts_all": sorted(hosts),
        "ansible_play_hosts": sorted(h for h, hv in hosts.items() if not hv.get("_down")),
    }


def test_gather_reachability_labels_and_existing(tmp_path):
    tv = task_vars(
        a={
            "gpus": [GPU],
            "gpufleet_labels": {"zone": "eu1"},
            "gpufleet_runtime": "podman",
            "gpufleet_deployment_info": {"deployments": [{"name": "chat-0", "gpus": [0], "port": 8000}]},
        },
        b={"gpus": [GPU], "_down": True},
        c={"gpus": [GPU]},
    )
    state = tmp_path / "s.json"
    write_state(
        str(state),
        [
            {"deployment": "old", "replica": 0, "host": "b", "gpus": [0], "gpu_uuids": [], "port": 8000},
            {"deployment": "gone", "replica": 0, "host": "a", "gpus": [0], "gpu_uuids": [], "port": 8000},
        ],
    )
    hosts, existing, unreachable = gather(tv, {**ARGS, "unreachable": ["c"], "state_path": str(state)})
    assert unreachable == ["b", "c"]
    assert hosts["a"]["reachable"] is True and hosts["b"]["reachable"] is False
    assert hosts["a"]["labels"] == {"zone": "eu1"}
    assert hosts["a"]["runtime"] == "podman"
    assert hosts["c"]["runtime"] == "docker"
    # a reports its own containers; b is unreachable, its last known placement comes from the state file.
    assert existing == [
        {"host": "a", "name": "chat-0", "gpus": [0], "port": 8000},
        {"deployment": "old", "replica": 0, "host": "b", "gpus": [0], "gpu_uuids": [], "port": 8000},
    ]


def test_gather_explicit_hosts_and_existing():
    tv = task_vars(a={"gpus": [GPU]}, b={"gpus": [GPU]})
    hosts, existing = gather(tv, {**ARGS, "hosts": ["b"], "existing": [{"host": "b", "name": "x-0"}]})[:2]
    assert list(hosts) == ["b"]
    assert existing == [{"host": "b", "name": "x-0"}]


def test_gather_host_var_errors():
    with pytest.raises(GpufleetError, match="a: gpufleet_runtime: must be one of docker, podman, got 'lxc'"):
        gather(task_vars(a={"gpufleet_runtime": "lxc"}), ARGS)


# -- real runs ---------------------------------------------------------------------------------------------------


def test_feed_sizes_explicit_then_recorded_on_a_host_then_the_hub(monkeypatch):
    asked = []

    def hub(repo_id, revision, endpoint, token):
        asked.append((repo_id, revision, endpoint, token))
        if repo_id == "org/down":
            raise GpufleetError("hub model info of org/down@main: ConnectError: refused")
        return 14_000_000_000

    monkeypatch.setattr("ansible_collections.gpufleet.vllm.plugins.action.fleet_plan.metadata.hub_weights", hub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    deps = [
        {"name": "typed", "model": "org/typed", "num_parameters": 7},
        {"name": "given", "model": "org/given"},
        {"name": "synced", "model": {"repo_id": "org/synced", "revision": "v1"}},
        {"name": "hubbed", "model": {"repo_id": "org/hubbed", "revision": "v2"}, "hf_token": "hf_canary"},
        {"name": "down", "model": "org/down"},
        {"name": "local", "model": "/models/local"},
    ]
    record = {"weight_bytes": 123, "source": "hf", "repo_id": "org/synced", "revision": "v1", "commit": "c" * 40}
    hostvars = {"gpu-a": {"facts": {"model_sizes": {"synced": record}}}, "gpu-b": {}}
    args = {"existing_var": "facts", "model_sizes": {"given": 99}, "hub_model_info": True, "hf_endpoint": "http://h"}
    sources, warnings = feed_sizes(deps, args, {"hostvars": hostvars}, ["gpu-a", "gpu-b"])
    assert sources == {"given": "model_sizes", "synced": "model_sync on gpu-a", "hubbed": "hub model info"}
    assert [d.get("model_size_bytes") for d in deps] == [None, 99, 123, 14_000_000_000, None, None]
    assert asked == [("org/hubbed", "v2", "http://h", "hf_canary"), ("org/down", "main", "http://h", None)]
    assert warnings == [
        "down: VRAM estimate unknown (only gpu_memory_utilization is checked): hub model info of org/down@main: "
        "ConnectError: refused"
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: no request at all
    asked.clear()
    assert feed_sizes([{"name": "x", "model": "org/x"}], args, {"hostvars": {}}, [])[0] == {} and asked == []


INVENTORY = {
    "all": {
        "vars": {"ansible_connection": "local"},
        "hosts": {
            "gpu-a": {
                "gpufleet_labels": {"zone": "eu1"},
                "gpus": [
                    {"index": i, "uuid": f"GPU-a{i}", "memory_total_mib": 81920, "memory_free_mib": 81000}
                    for i in range(2)
                ],
            },
            "gpu-b": {
                "gpufleet_labels": {"zone": "us1"},
                "gpus": [{"index": 0, "uuid": "GPU-b0", "memory_total_mib": 81920, "memory_free_mib": 81000}],
            },
            "gpu-c": {"gpus": []},
        },
    }
}

PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - name: plan
      gpufleet.vllm.fleet_plan:
        deployments: "{{ deployments }}"
        unreachable: [gpu-c]
        existing: "{{ existing | default(omit) }}"
        state_path: "{{ state_path }}"
        hub_model_info: false  # no hub here (test_feed_sizes covers it)
      run_once: true
      register: gpufleet_plan
    - name: dump
      ansible.builtin.debug:
        var: gpufleet_plan
      run_once: true
"""


# The output run_playbook asks for, whatever the caller's environment says: the default callback (the tests read its
# diff lines) with results as JSON (registered() reads the dump task's).
OUTPUT_ENV = {"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}


def registered(stdout: str) -> dict | None:
    """The registered plan as the dump task printed it (JSON: OUTPUT_ENV); None when the play ended before it. debug
    runs on the controller only: no module run to save the result (a copy task cost two)."""
    task = stdout.find("TASK [dump]")
    start = stdout.find("=> {", task) if task >= 0 else -1
    if start < 0:
        return None
    return json.JSONDecoder().raw_decode(stdout[start + 3 :])[0]["gpufleet_plan"]


def run_playbook(tmp_path: Path, env: dict, deployments: list, *extra: str, existing: list | None = None):
    (tmp_path / "inv.yml").write_text(yaml.safe_dump(INVENTORY))
    (tmp_path / "pb.yml").write_text(textwrap.dedent(PLAYBOOK))
    evars = {
        "deployments": deployments,
        "state_path": str(tmp_path / "state.json"),
    }
    if existing is not None:
        evars["existing"] = existing
    (tmp_path / "vars.json").write_text(json.dumps(evars))
    proc = subprocess.run(
        ["ansible-playbook", "-i", "inv.yml", "pb.yml", "-e", "@vars.json", *extra],
        cwd=tmp_path,
        env={**env, **OUTPUT_ENV},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc, registered(proc.stdout)


DEPLOYMENTS = [
    {"name": "chat", "model": "org/chat", "replicas": 2, "secret_env": {"TOKEN": "canary-s3cret"}},
    {"name": "emb", "model": "/var/lib/gpufleet/models/emb", "selector": {"zone": "eu1"}, "port": 8100},
]


def test_playbook_check_diff_then_converged(tmp_path, ansible_env):
    proc, result = run_playbook(tmp_path, ansible_env, DEPLOYMENTS, "--check", "--diff")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "+chat-0: gpu-a gpus=0 port=8000" in proc.stdout
    assert "+chat-1: gpu-b gpus=0 port=8000" in proc.stdout
    assert "+emb-0: gpu-a gpus=1 port=8100" in proc.stdout
    assert "canary-s3cret" not in proc.stdout + json.dumps(result)
    assert result["changed"] is True
    assert result["unreachable_hosts"] == ["gpu-c"]
    assert [s["name"] for s in result["plan"]["hosts"]["gpu-a"]] == ["chat-0", "emb-0"]
    assert not (tmp_path / "state.json").exists()  # check mode writes nothing

    proc, result = run_playbook(tmp_path, ansible_env, DEPLOYMENTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = json.loads((tmp_path / "state.json").read_text())["placements"]
    assert [(p["deployment"], p["replica"], p["host"]) for p in saved] == [
        ("chat", 0, "gpu-a"),
        ("chat", 1, "gpu-b"),
        ("emb", 0, "gpu-a"),
    ]

    # Converged: the same placements exist, so nothing changes.
    existing = [
        {"host": a["host"], "name": a["name"], "gpus": a["gpus"], "port": a["port"]}
        for a in result["plan"]["assignments"]
    ]
    proc, result = run_playbook(tmp_path, ansible_env, DEPLOYMENTS, existing=existing)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["changed"] is False
    assert result["plan"]["summary"]["keep"] == 3


def test_playbook_unschedulable_fails_with_the_reason(tmp_path, ansible_env):
    deps = [{"name": "chat-70b", "model": "org/big", "gpus_per_replica": 4, "selector": {"zone": "eu1"}}]
    proc = run_playbook(tmp_path, ansible_env, deps)[0]
    assert proc.returncode != 0
    assert (
        "chat-70b: 0/3 hosts fit — gpu-a: 2 GPUs free, needs 4; gpu-b: selector zone=eu1 not matched; "
        "gpu-c: unreachable"
    ) in proc.stdout + proc.stderr


def test_playbook_schema_error_lists_every_problem(tmp_path, ansible_env):
    deps = [{"name": "chat", "model": "org/chat", "replicas": -1, "api_key": ["canary-s3cret"]}, {"model": "x/y"}]
    proc = run_playbook(tmp_path, ansible_env, deps)[0]
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "gpufleet_deployments is invalid: 3 problems" in text
    assert "chat: replicas: must be an integer >= 0, got -1" in text
    assert "gpufleet_deployments[1]: name: is required" in text
    assert "canary-s3cret" not in text
