"""The fleet playbooks on a mixed fleet: gpu-a runs its replicas in docker, gpu-c (1 x H100) in podman.

One scenario, in order (each test builds on the fleet the previous one left): first converge (each replica in its
host's engine, CDI GPU on podman), idempotent second run, check mode and a flag change that recreates, status, stop.
Only gpu-a and gpu-c are in the inventory; the deployment is named pm-chat and uses port 8500, so its containers and
ports differ from the docker scenario's (test_fleet.py). It needs one free GPU on gpu-a and on gpu-c. Run one after
the other with test_fleet.py and bench/fleet_converge.py, not at the same time: they list and stop every managed
container of gpu-a's dockerd (this module holds `sim_fleet_lock` for that).
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.hosts import BASE_IMAGE, MANAGED_LABEL, ROOT, SimFleet, SimHosts, recap

pytestmark = [pytest.mark.integration, pytest.mark.multihost, pytest.mark.podman]

CANARY = "pm-fleet-canary-4d1e8b2a"  # a secret value that must never show up outside the container's env
API_KEY = CANARY + "-key"
BYSTANDER = "bystander-fleet-podman-test"  # an unmanaged podman container on gpu-c that no playbook may touch
RUNTIMES = {"gpu-a": "docker", "gpu-c": "podman"}
PORT = 8500


def pm_chat(max_model_len: int = 2048) -> dict[str, Any]:
    return {
        "name": "pm-chat",
        "model": str(ROOT / ".build" / "fleet" / "models" / "tiny-chat"),
        "vllm_version": "0.10.2",
        "replicas": 2,
        "placement": "spread",  # two hosts in the inventory: one replica each
        "port": PORT,
        "served_model_name": ["tiny-chat"],
        "engine_options": {"max_model_len": max_model_len},
        "env": {"VLLM_LOGGING_LEVEL": "INFO"},
        "api_key": API_KEY,
        "secret_env": {"PM_FLEET_CANARY": CANARY},
    }


def get(url: str, key: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read().decode() or "null")
    except urllib.error.HTTPError as err:
        return err.code, None


def by_host(fleet: SimFleet) -> dict[str, dict[str, Any]]:
    """host -> its pm- container (there is one per host), found in the engine the inventory gives the host."""
    out: dict[str, dict[str, Any]] = {}
    for name, c in fleet.managed("pm-").items():
        assert c["host"] not in out, f"two pm- containers on {c['host']}: {name}, {out[c['host']]}"
        out[c["host"]] = {**c, "name": name}
    return out


def remove_pm_containers(fleet: SimFleet) -> None:
    for host in RUNTIMES:
        for engine in ("docker", "podman"):
            ids = [d["Id"] for d in fleet.inspect_all(host, engine, "name=^gpufleet-pm-")]
            if ids:
                fleet.engine(host, engine, "rm", "-f", *ids)


@pytest.fixture(scope="module")
def fleet(
    sim_hosts: SimHosts, sim_podman_host: str, sim_fleet_lock: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimFleet]:
    subprocess.run([str(ROOT / "sim" / "steps.d" / "70-fleet.sh"), "up"], check=True, capture_output=True)
    f = SimFleet(sim_hosts, tmp_path_factory.mktemp("fleet-podman"), RUNTIMES)
    remove_pm_containers(f)  # leftovers of an interrupted run
    f.sim.podman("gpu-c", "rm", "-f", "--ignore", BYSTANDER)
    run = f.sim.podman(
        "gpu-c", "run", "-d", "--name", BYSTANDER, "--label", "purpose=test", f"docker.io/{BASE_IMAGE}", "sleep", "3600"
    )
    assert run.returncode == 0, run.stderr
    yield f
    f.sim.podman("gpu-c", "rm", "-f", "--time", "1", "--ignore", BYSTANDER)
    remove_pm_containers(f)


def assert_bystander_untouched(fleet: SimFleet) -> None:
    (d,) = fleet.inspect_all("gpu-c", "podman", f"name=^{BYSTANDER}$")
    assert d["State"]["Status"] == "running"


def test_first_converge_runs_each_replica_in_its_hosts_engine(fleet: SimFleet) -> None:
    fleet.write_inventory([pm_chat()])
    proc = fleet.play("converge.yml", "-v")
    assert proc.returncode == 0, proc.stdout[-5000:]
    summary = fleet.summary()
    assert summary["ok"] is True and summary["counts"]["changed"] == 2, summary["counts"]
    rows = summary["deployments"]["pm-chat"]["replicas"]
    assert sorted(r["host"] for r in rows) == ["gpu-a", "gpu-c"]
    for row in rows:
        assert row["status"] == "changed" and row["action"] == "create", row
        status, models = get(row["endpoint"] + "/v1/models", API_KEY)
        assert status == 200 and models["data"][0]["max_model_len"] == 2048, (row, models)
        assert get(row["endpoint"] + "/v1/models")[0] == 401  # the api key is in force
    # Each replica runs in the engine of its host, and only there.
    everywhere = fleet.managed("pm-", everywhere=True)
    assert sorted((c["host"], c["runtime"]) for c in everywhere.values()) == [("gpu-a", "docker"), ("gpu-c", "podman")]
    containers = by_host(fleet)
    assert all(c["status"] == "running" for c in containers.values()), containers
    row_c = next(r for r in rows if r["host"] == "gpu-c")
    pm = containers["gpu-c"]
    assert pm["name"] == f"gpufleet-{row_c['name']}" and pm["labels"][MANAGED_LABEL] == "true"
    # The GPU the plan gave it arrives through CDI: the device node and NVIDIA_VISIBLE_DEVICES in the container.
    assert row_c["gpus"] == [0]
    assert "/dev/nvidia0" in json.dumps(pm["inspect"]["HostConfig"].get("Devices"))
    env = fleet.sim.podman("gpu-c", "exec", pm["name"], "sh", "-c", "tr '\\0' '\\n' </proc/1/environ; ls /dev")
    assert env.returncode == 0, env.stderr
    assert "NVIDIA_VISIBLE_DEVICES=0" in env.stdout.splitlines() and "nvidia0" in env.stdout.split()
    # The secret never leaves the vault: not in the output, the summary, the manifest, nor anywhere in the engines'
    # inspect (labels, argv, podman's CreateCommand) except the container's environment, where vLLM reads it.
    assert CANARY not in proc.stdout
    assert CANARY not in (fleet.artifacts / "converge-summary.json").read_text()
    for c in containers.values():
        assert f"PM_FLEET_CANARY={CANARY}" in c["env"], c["host"]
        rest = json.loads(json.dumps(c["inspect"]))
        rest["Config"].pop("Env")
        assert CANARY not in json.dumps(rest), c["host"]
        manifest = ROOT / ".build" / "hosts" / c["host"] / "fs" / "var" / "lib" / "gpufleet" / "manifests"
        assert CANARY not in (manifest / f"{c['name'].removeprefix('gpufleet-')}.json").read_text()
    assert "--env PM_FLEET_CANARY" in " ".join(containers["gpu-c"]["inspect"]["Config"]["CreateCommand"])
    assert_bystander_untouched(fleet)


def test_second_run_changes_nothing(fleet: SimFleet) -> None:
    before = {n: c["id"] for n, c in fleet.managed("pm-").items()}
    proc = fleet.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    per_host = recap(proc.stdout)
    assert set(per_host) == set(RUNTIMES)
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in per_host.values()), per_host
    counts = fleet.summary()["counts"]
    assert (counts["ok"], counts["changed"], counts["failed"]) == (2, 0, 0), counts
    assert {n: c["id"] for n, c in fleet.managed("pm-").items()} == before


def test_flag_change_recreates_in_both_engines(fleet: SimFleet) -> None:
    before = by_host(fleet)
    fleet.write_inventory([pm_chat(max_model_len=1024)])
    # Check mode first: both replicas would change (the diff shows the flag), nothing is touched in either engine.
    proc = fleet.play("converge.yml", "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-3000:]
    old, new = re.findall(r'^-\s+"2048",?$', proc.stdout, re.M), re.findall(r'^\+\s+"1024",?$', proc.stdout, re.M)
    assert len(old) == len(new) == 2, proc.stdout[-3000:]  # one diff per replica: gpu-a's (docker), gpu-c's (podman)
    assert [r["status"] for r in fleet.summary()["deployments"]["pm-chat"]["replicas"]] == ["changed", "changed"]
    assert {h: (c["id"], c["args"]) for h, c in by_host(fleet).items()} == {
        h: (c["id"], c["args"]) for h, c in before.items()
    }

    proc = fleet.play("converge.yml", "-e", "gpufleet_serial=1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    after = by_host(fleet)
    assert set(after) == set(RUNTIMES)
    for host, c in after.items():
        assert c["id"] != before[host]["id"], host
        assert c["args"][c["args"].index("--max-model-len") + 1] == "1024"
        assert c["status"] == "running"
        # The replaced container is gone from that engine.
        assert not fleet.inspect_all(host, RUNTIMES[host], f"id={before[host]['id']}"), host
    for row in fleet.summary()["deployments"]["pm-chat"]["replicas"]:
        assert row["status"] == "changed", row
        assert get(row["endpoint"] + "/v1/models", API_KEY)[1]["data"][0]["max_model_len"] == 1024
    assert CANARY not in proc.stdout


def test_status_shows_both_engines(fleet: SimFleet) -> None:
    proc = fleet.play("status.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = json.loads((fleet.artifacts / "status.json").read_text())
    rows = {r["name"]: r for r in report["rows"] if r["name"].startswith("pm-")}
    assert set(rows) == {"pm-chat-0", "pm-chat-1"}
    assert sorted(r["host"] for r in rows.values()) == ["gpu-a", "gpu-c"]
    for r in rows.values():
        assert r["state"] == "running" and r["phase"] == "ready", r
        assert r["endpoint"] == f"http://{fleet.sim.address(r['host'])}:{PORT}", r
    assert CANARY not in proc.stdout


def test_stop_touches_only_managed_containers(fleet: SimFleet) -> None:
    containers = by_host(fleet)
    proc = fleet.play("stop.yml", "-e", "names=pm-chat")
    assert proc.returncode == 0, proc.stdout[-3000:]
    stopped = by_host(fleet)
    assert {h: c["status"] for h, c in stopped.items()} == {"gpu-a": "exited", "gpu-c": "exited"}
    assert {h: c["id"] for h, c in stopped.items()} == {h: c["id"] for h, c in containers.items()}
    assert_bystander_untouched(fleet)

    # Every managed deployment of gpu-c (a limited run means all of that host): its podman one only.
    proc = fleet.play("stop.yml", "--limit", "gpu-c", "-e", "state=absent")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert set(by_host(fleet)) == {"gpu-a"}
    assert_bystander_untouched(fleet)

    proc = fleet.play("stop.yml", "-e", "names=pm-chat", "-e", "state=absent")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert fleet.managed("pm-", everywhere=True) == {}
    assert_bystander_untouched(fleet)
