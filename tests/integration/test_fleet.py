"""The fleet playbooks over real SSH on the simulated GPU hosts (gpu-a: 2 x A100, gpu-b: 4 x L40S, gpu-c: 1 x H100).

One scenario, in order (each test builds on the fleet the previous one left): first converge, idempotent second run,
check mode with diff, a flag change rolled out host by host, scale up and down, a failing deployment (rollback,
summary, exit code), an unreachable host, prune, status and stop. Each test writes its own inventory
(the bed's host inventory + group_vars with the deployments under test) and runs ansible-playbook as a user would.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.hosts import SimFleet, recap
from fixtures.registry import make_wheel

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / ".build" / "fleet"
CANARY = "fleet-canary-7f3c9a1e5b"  # a secret value that must never show up anywhere
BYSTANDER = "bystander-fleet-test"  # an unmanaged container that no playbook may touch
BASE_IMAGE = "gpufleet/bed-base:bookworm"
# The bed registry's stand-in (with pip, which a derived image's build runs): the hosts' dockerds cannot reach the
# registry on the controller's loopback, so the test loads it into their engines.
PIP_IMAGE = "127.0.0.1:5000/vllm/vllm-openai:v0.10.2"


def chat(replicas: int = 2, max_model_len: int = 2048, env: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": "chat",
        "model": str(MODELS / "models" / "tiny-chat"),
        "vllm_version": "0.10.2",
        "replicas": replicas,
        "placement": "spread",
        "port": 8000,
        "served_model_name": ["tiny-chat"],
        "engine_options": {"max_model_len": max_model_len},
        "env": {"VLLM_LOGGING_LEVEL": "INFO", **(env or {})},
        "secret_env": {"FLEET_CANARY": CANARY},
        "owner": "team-chat",
    }


def tp_model() -> dict[str, Any]:
    return {
        "name": "tp-model",
        "model": str(MODELS / "models" / "tp-model"),
        "vllm_version": "0.10.2",
        "tensor_parallel_size": 2,
        "selector": {"zone": "eu1"},
        "port": 8100,
        "api_key": CANARY + "-key",
    }


class Fleet(SimFleet):
    """The collection's playbooks on all simulated hosts, docker everywhere (tests/fixtures/hosts.py: SimFleet)."""

    def __init__(self, sim_hosts: Any, workdir: Path) -> None:
        super().__init__(sim_hosts, workdir, {name: "docker" for name in sim_hosts.names})

    def docker(self, host: str) -> Any:
        import docker

        return docker.DockerClient(base_url=self.sim.docker_host(host))


def replicas(summary: dict[str, Any], deployment: str) -> list[dict[str, Any]]:
    return summary["deployments"][deployment]["replicas"]


def get(url: str, key: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


@pytest.fixture(scope="module")
def fleet(sim_hosts: Any, sim_fleet_lock: None, tmp_path_factory: pytest.TempPathFactory) -> Any:
    subprocess.run([str(ROOT / "sim" / "steps.d" / "70-fleet.sh"), "up"], check=True, capture_output=True)
    f = Fleet(sim_hosts, tmp_path_factory.mktemp("fleet"))
    # Start from a fleet without managed containers, plus one unmanaged container on gpu-a.
    f.write_inventory([])
    proc = f.play("stop.yml", "-e", "all=true", "-e", "state=absent")
    assert proc.returncode == 0, proc.stdout[-3000:]
    client = f.docker("gpu-a")
    for c in client.containers.list(all=True, filters={"name": BYSTANDER}):
        c.remove(force=True)
    client.containers.run(BASE_IMAGE, ["sleep", "3600"], name=BYSTANDER, detach=True, labels={"purpose": "test"})
    yield f
    for c in client.containers.list(all=True, filters={"name": BYSTANDER}):
        c.remove(force=True)
    f.write_inventory([])
    f.play("stop.yml", "-e", "all=true", "-e", "state=absent")


def assert_bystander_untouched(fleet: Fleet) -> None:
    c = fleet.docker("gpu-a").containers.get(BYSTANDER)
    assert c.status == "running"


def test_schema_error_before_any_host_is_touched(fleet: Fleet) -> None:
    bad = chat()
    bad.update(replicas="two", placement="pack")
    fleet.write_inventory([bad, {"model": "org/model"}])
    proc = fleet.play("converge.yml")
    assert proc.returncode != 0
    assert "chat: replicas: must be an integer >= 0, got 'two'" in proc.stdout
    assert "chat: placement: must be one of spread, binpack, got 'pack'" in proc.stdout
    assert "gpufleet_deployments[1]: name: is required" in proc.stdout
    assert "List the managed deployments and the GPUs" not in proc.stdout  # nothing ran on a host
    assert CANARY not in proc.stdout


def test_first_converge(fleet: Fleet) -> None:
    fleet.write_inventory([chat(), tp_model()])
    proc = fleet.play("converge.yml", "-v")
    assert proc.returncode == 0, proc.stdout[-5000:]
    summary = fleet.summary()
    assert summary["ok"] is True and summary["counts"]["changed"] == 3, summary["counts"]
    # Spread: the two chat replicas on two hosts; the TP=2 model on two GPUs of an eu1 host.
    chat_rows = replicas(summary, "chat")
    assert len({r["host"] for r in chat_rows}) == 2
    tp = replicas(summary, "tp-model")[0]
    assert tp["host"] in ("gpu-a", "gpu-b") and len(tp["gpus"]) == 2
    for row in [*chat_rows, tp]:
        assert row["status"] == "changed" and row["action"] == "create"
        key = CANARY + "-key" if row["deployment"] == "tp-model" else None
        status = get(row["endpoint"] + "/v1/models", key)[0]
        assert status == 200, row
    # GPUs of one host are never shared between replicas.
    taken = [(r["host"], g) for r in [*chat_rows, tp] for g in r["gpus"]]
    assert len(taken) == len(set(taken))
    assert "DEPLOYMENT" in proc.stdout and "OK: changed=3" in proc.stdout
    # The secret canary never leaves the vault: not in the output, the summary, labels or argv.
    assert CANARY not in proc.stdout
    assert CANARY not in (fleet.artifacts / "converge-summary.json").read_text()
    managed = fleet.managed()
    assert set(managed) == {"gpufleet-chat-0", "gpufleet-chat-1", "gpufleet-tp-model-0"}
    for c in managed.values():
        assert CANARY not in json.dumps(c["labels"]) and CANARY not in " ".join(c["args"])
    assert_bystander_untouched(fleet)


def test_second_run_changes_nothing(fleet: Fleet) -> None:
    before = {n: c["id"] for n, c in fleet.managed().items()}
    proc = fleet.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    per_host = recap(proc.stdout)
    assert set(per_host) == {"gpu-a", "gpu-b", "gpu-c"}
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in per_host.values()), per_host
    counts = fleet.summary()["counts"]
    assert (counts["ok"], counts["changed"], counts["failed"]) == (3, 0, 0), counts
    assert {n: c["id"] for n, c in fleet.managed().items()} == before


def test_check_mode_shows_the_change_and_touches_nothing(fleet: Fleet) -> None:
    before = fleet.managed()
    fleet.write_inventory([chat(max_model_len=1024), tp_model()])
    proc = fleet.play("converge.yml", "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-3000:]
    # vllm_container's diff: the flag that changes, old and new.
    assert re.search(r'^-\s+"2048",?$', proc.stdout, re.M) and re.search(r'^\+\s+"1024",?$', proc.stdout, re.M)
    summary = fleet.summary()
    assert summary["check_mode"] is True
    assert [r["status"] for r in replicas(summary, "chat")] == ["changed", "changed"]
    assert replicas(summary, "tp-model")[0]["status"] == "ok"
    after = fleet.managed()
    assert {n: (c["id"], c["args"]) for n, c in after.items()} == {n: (c["id"], c["args"]) for n, c in before.items()}


def test_flag_change_rolls_out_host_by_host(fleet: Fleet) -> None:
    before = fleet.managed()
    proc = fleet.play("converge.yml", "-e", "gpufleet_serial=1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    after = fleet.managed()
    for name in ("gpufleet-chat-0", "gpufleet-chat-1"):
        assert after[name]["id"] != before[name]["id"]
        assert after[name]["args"][after[name]["args"].index("--max-model-len") + 1] == "1024"
    assert after["gpufleet-tp-model-0"]["id"] == before["gpufleet-tp-model-0"]["id"]
    # One batch per host: the summary is written after each batch, the table once at the end.
    assert proc.stdout.count("Write the converge summary") == 3
    assert proc.stdout.count("OK: changed=2, ok=1") == 1


def test_scale_up_and_down(fleet: Fleet) -> None:
    fleet.write_inventory([chat(replicas=3, max_model_len=1024), tp_model()])
    proc = fleet.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    rows = replicas(fleet.summary(), "chat")
    assert [r["action"] for r in rows] == ["keep", "keep", "create"]
    assert len({r["host"] for r in rows}) == 3  # spread over all three hosts
    assert "gpufleet-chat-2" in fleet.managed()

    fleet.write_inventory([chat(replicas=2, max_model_len=1024), tp_model()])
    proc = fleet.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = fleet.summary()
    assert [(r["name"], r["status"]) for r in summary["removed"]] == [("chat-2", "removed")]
    assert "gpufleet-chat-2" not in fleet.managed()


def test_failing_deployment_is_rolled_back_and_stops_the_run(fleet: Fleet) -> None:
    before = fleet.managed()
    fleet.write_inventory([chat(max_model_len=1024, env={"STANDIN_FAIL": "oom"}), tp_model()])
    proc = fleet.play("converge.yml", "-e", "gpufleet_serial=1")
    assert proc.returncode == 2, proc.stdout[-3000:]
    summary = fleet.summary()
    assert summary["ok"] is False
    rows = {r["name"]: r for r in replicas(summary, "chat")}
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert len(failed) == 1, rows
    row = failed[0]
    assert row["failure_class"] == "gpu_oom" and row["rolled_back"] is True and row["failed_step"] == "vllm_container"
    assert "CUDA out of memory" in row["hint"]
    # The run stopped after the failing batch: the other chat replica was not touched.
    others = [r for r in rows.values() if r["status"] != "failed"]
    assert [r["status"] for r in others] == ["not_run"]
    after = fleet.managed()
    assert after[f"gpufleet-{others[0]['name']}"]["id"] == before[f"gpufleet-{others[0]['name']}"]["id"]
    # The rolled back replica is the old container, serving again.
    assert after[f"gpufleet-{row['name']}"]["id"] == before[f"gpufleet-{row['name']}"]["id"]
    status = get(f"http://{fleet.sim.address(row['host'])}:8000/v1/models")[0]
    assert status == 200
    assert "FAILED" in proc.stdout and "gpu_oom" in proc.stdout
    assert CANARY not in proc.stdout


def test_unreachable_host_is_reported_and_its_replicas_kept(fleet: Fleet) -> None:
    placed = {r["name"]: r["host"] for r in replicas(fleet.summary(), "chat")}
    lost = placed["chat-1"]
    fleet.write_inventory([chat(max_model_len=1024), tp_model()], address_override={lost: "10.213.37.250"})
    proc = fleet.play("converge.yml")
    assert proc.returncode == 4, proc.stdout[-3000:]  # ansible-playbook's exit code for unreachable hosts
    summary = fleet.summary()
    assert summary["unreachable_hosts"] == [lost]
    rows = {r["name"]: r for r in replicas(summary, "chat")}
    assert rows["chat-1"]["host"] == lost and rows["chat-1"]["status"] == "unreachable"  # kept, not moved
    assert rows["chat-0"]["status"] in ("ok", "changed")
    assert f"{lost} is unreachable; its placement is kept" in proc.stdout


def test_prune_removes_only_undeclared_managed_deployments(fleet: Fleet) -> None:
    fleet.write_inventory([chat(max_model_len=1024)])
    proc = fleet.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert [u["deployment"] for u in fleet.summary()["undeclared"]] == ["tp-model"]
    assert "gpufleet-tp-model-0" in fleet.managed()

    fleet.write_inventory([chat(max_model_len=1024)])
    proc = fleet.play("converge.yml", "-e", "gpufleet_prune=true")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert [r["name"] for r in fleet.summary()["removed"]] == ["tp-model-0"]
    assert set(fleet.managed()) == {"gpufleet-chat-0", "gpufleet-chat-1"}
    assert_bystander_untouched(fleet)


def mover(host: str, state: str = "present") -> dict[str, Any]:
    """A one-GPU deployment pinned to ``host`` (gpu-a has 2 GPUs, gpu-b 4; chat holds at most one on each), served
    from a derived image (issue #19 item 5): a package from a local wheel directory and a plugin file, offline."""
    wheels = MODELS / "wheels"
    return {
        "name": "mover",
        "model": str(MODELS / "models" / "tiny-chat"),
        "image": PIP_IMAGE,
        "extra_pip_packages": ["gpufleet-testpkg==1.0"],
        "plugins": [str(wheels / "plugins" / "my_tool_parser.py")],
        "pip_find_links": [str(wheels / "index")],
        "pip_no_index": True,
        "host": host,
        "port": 8300,
        "served_model_name": ["mover"],
        "state": state,
        "owner": "team-mover",
    }


def derived_image_ready(fleet: Fleet) -> None:
    """The wheel directory and plugin of mover's derived image (under .build/fleet: the hosts see it), and the base
    image with pip in gpu-a's and gpu-b's engines."""
    wheels = MODELS / "wheels"
    make_wheel(wheels / "index", "gpufleet-testpkg", "1.0", {"gpufleet_testpkg/__init__.py": "VERSION = '1.0'\n"})
    (wheels / "plugins").mkdir(parents=True, exist_ok=True)
    (wheels / "plugins" / "my_tool_parser.py").write_text("PARSER = 'gpufleet-test-parser'\n")
    subprocess.run(["docker", "pull", "-q", PIP_IMAGE], check=True, capture_output=True, timeout=300)
    for host in ("gpu-a", "gpu-b"):
        save = subprocess.Popen(["docker", "save", PIP_IMAGE], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", fleet.sim.docker_host(host), "load", "-q"], stdin=save.stdout, check=True)
        assert save.wait() == 0


def assert_serves_the_derived_image(fleet: Fleet, host: str) -> str:
    c = fleet.docker(host).containers.get("gpufleet-mover-0")
    tag = c.attrs["Config"]["Image"]
    assert tag.startswith("gpufleet/vllm-openai:v0.10.2-"), tag  # content-hashed tag (base id, packages, plugins)
    code, out = c.exec_run(
        ["python3", "-c", "import gpufleet_testpkg, my_tool_parser; print(gpufleet_testpkg.VERSION)"]
    )
    assert (code, out.decode().strip()) == (0, "1.0")
    return tag


def test_move_a_deployment_to_another_host(fleet: Fleet) -> None:
    derived_image_ready(fleet)
    fleet.write_inventory([chat(max_model_len=1024), mover("gpu-b")])
    proc = fleet.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert fleet.managed()["gpufleet-mover-0"]["host"] == "gpu-b"
    tag = assert_serves_the_derived_image(fleet, "gpu-b")
    before = fleet.managed()

    # Pinned elsewhere: created on gpu-a (health-gated), removed from gpu-b; nothing else moves.
    fleet.write_inventory([chat(max_model_len=1024), mover("gpu-a")])
    proc = fleet.play("converge.yml", "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "mover-0: gpu-b" in proc.stdout and "mover-0: gpu-a" in proc.stdout  # the plan's before/after lines
    assert fleet.managed()["gpufleet-mover-0"]["host"] == "gpu-b"  # check mode moved nothing
    proc = fleet.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = fleet.summary()
    row = replicas(summary, "mover")[0]
    assert (row["host"], row["action"], row["status"]) == ("gpu-a", "move", "changed")
    assert [(r["name"], r["host"], r["status"]) for r in summary["removed"]] == [("mover-0", "gpu-b", "removed")]
    after = fleet.managed()
    assert after["gpufleet-mover-0"]["host"] == "gpu-a"
    assert get(f"http://{fleet.sim.address('gpu-a')}:8300/v1/models")[0] == 200
    assert not [c for c in fleet.docker("gpu-b").containers.list(all=True) if c.name.startswith("gpufleet-mover")]
    assert assert_serves_the_derived_image(fleet, "gpu-a") == tag  # built on gpu-a from the same inputs: same tag
    for name in ("gpufleet-chat-0", "gpufleet-chat-1"):
        assert after[name]["id"] == before[name]["id"]
    # A re-run moves nothing back (stable placement).
    proc = fleet.play("converge.yml")
    assert proc.returncode == 0 and all(c["changed"] == 0 for c in recap(proc.stdout).values()), proc.stdout[-3000:]


def counters(endpoint: str) -> dict[str, int]:
    """A server's vLLM counters, read straight from its /metrics (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {
        "vllm:request_success_total": "requests",
        "vllm:prompt_tokens_total": "prompt",
        "vllm:generation_tokens_total": "completion",
    }
    status, text = get(endpoint + "/metrics")
    assert status == 200, endpoint
    out = dict.fromkeys(names.values(), 0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                out[names[sample.name]] += int(sample.value)
    return out


def complete(endpoint: str, max_tokens: int, text: str) -> dict[str, int]:
    """One chat completion; its usage as the server answered it."""
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    req = urllib.request.Request(
        endpoint + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["usage"]


def test_usage_per_owner_and_deployment(fleet: Fleet) -> None:
    """usage.yml (issue #17 item 5): per owner and per deployment exactly what the servers served - their counters
    before (read straight from /metrics) plus known requests - and the owner label on the containers."""
    summary = fleet.summary()
    endpoints = {r["name"]: r["endpoint"] for d in ("chat", "mover") for r in replicas(summary, d)}
    managed = fleet.managed()
    assert {n: c["labels"].get("gpufleet.owner") for n, c in managed.items()} == {
        "gpufleet-chat-0": "team-chat",
        "gpufleet-chat-1": "team-chat",
        "gpufleet-mover-0": "team-mover",
    }
    before = {name: counters(url) for name, url in endpoints.items()}
    # chat-1 only: test_status_and_stop counts chat-0's requests.
    sent: dict[str, list[dict[str, int]]] = {
        "mover-0": [complete(endpoints["mover-0"], n, f"question {n}") for n in (5, 6, 7)],
        "chat-1": [complete(endpoints["chat-1"], n, "a longer question " * n) for n in (3, 9)],
    }
    assert [u["completion_tokens"] for u in sent["mover-0"] + sent["chat-1"]] == [5, 6, 7, 3, 9]
    expected = {}
    for name, base in before.items():
        got = sent.get(name, [])
        expected[name] = {
            "requests": base["requests"] + len(got),
            "prompt_tokens": base["prompt"] + sum(u["prompt_tokens"] for u in got),
            "completion_tokens": base["completion"] + sum(u["completion_tokens"] for u in got),
        }
    keys = ("requests", "prompt_tokens", "completion_tokens")

    def total(*names: str) -> dict[str, int]:
        return {k: sum(expected[n][k] for n in names) for k in keys}

    proc = fleet.play("usage.yml", "-e", "gpufleet_usage_interval=1", "-e", "gpufleet_usage_json=true")
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = json.loads((fleet.artifacts / "usage.json").read_text())
    rows = {r["name"]: r for r in report["replicas"]}
    assert {n: {k: rows[n][k] for k in keys} for n in expected} == expected
    deployments = {d["deployment"]: d for d in report["deployments"]}
    assert {k: deployments["mover"][k] for k in keys} == total("mover-0")
    assert {k: deployments["chat"][k] for k in keys} == total("chat-0", "chat-1")
    assert deployments["chat"]["owner"] == "team-chat" and deployments["chat"]["scraped"] == 2
    owners = {o["owner"]: o for o in report["owners"]}
    assert set(owners) == {"team-chat", "team-mover"}
    assert {k: owners["team-mover"][k] for k in keys} == total("mover-0")
    assert {k: owners["team-chat"][k] for k in keys} == total("chat-0", "chat-1")
    assert owners["team-chat"]["deployments"] == ["chat"] and report["interval_s"] == 1.0
    # Nothing was served while it sampled: the current rate is exactly zero.
    assert deployments["mover"]["tokens_per_s"] == 0.0
    served = total("mover-0")
    assert re.search(
        rf"^\W*team-mover\s+mover\s+1/1\s+{served['requests']}\s+{served['prompt_tokens']}\s", proc.stdout, re.M
    )
    assert '"kind": "usage"' in proc.stdout  # gpufleet_usage_json: the report printed as JSON too

    fleet.write_inventory([chat(max_model_len=1024), mover("gpu-a", state="absent")])
    proc = fleet.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "gpufleet-mover-0" not in fleet.managed()


def test_status_and_stop(fleet: Fleet) -> None:
    rows = replicas(fleet.summary(), "chat")
    # One chat completion so that the status shows requests and tokens.
    body = json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
    req = urllib.request.Request(
        rows[0]["endpoint"] + "/v1/chat/completions", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    time.sleep(1)
    proc = fleet.play("status.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "TOK/S" in proc.stdout and "LAST FAILURE" in proc.stdout
    report = json.loads((fleet.artifacts / "status.json").read_text())
    by_name = {r["name"]: r for r in report["rows"]}
    assert set(by_name) == {"chat-0", "chat-1"}
    first = by_name[rows[0]["name"]]
    # Two requests: the readiness gate's smoke completion (vllm_container smoke_test, once per container) and this one.
    assert first["state"] == "running" and first["phase"] == "ready" and first["requests"] == 2
    assert first["generation_tokens"] > 0 and first["tokens_per_s"] > 0
    assert first["endpoint"] == rows[0]["endpoint"]
    assert first["owner"] == "team-chat" and "OWNER" in proc.stdout

    # Redeploy chat-0 from the manifest vllm_container wrote on its host, on gpu-c under another name and port.
    manifest = (
        ROOT / ".build" / "hosts" / rows[0]["host"] / "fs" / "var" / "lib" / "gpufleet" / "manifests" / "chat-0.json"
    )
    assert rows[0]["name"] == "chat-0" and manifest.exists()
    copy = fleet.workdir / "chat-0.json"
    shutil.copy(manifest, copy)
    proc = fleet.play(
        "redeploy.yml",
        "-e",
        f"manifest={copy}",
        "--limit",
        "gpu-c",
        "-e",
        '{"overrides": {"name": "chat-repro", "port": 8300}}',
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "gpufleet-chat-repro serves at" in proc.stdout and CANARY not in proc.stdout
    repro = fleet.managed()["gpufleet-chat-repro"]
    assert repro["host"] == "gpu-c" and repro["status"] == "running"
    original = fleet.managed()["gpufleet-chat-0"]["args"]
    assert repro["args"][repro["args"].index("--max-model-len") + 1] == original[original.index("--max-model-len") + 1]
    assert get(f"http://{fleet.sim.address('gpu-c')}:8300/v1/models")[0] == 200

    # Stop one replica by name; then remove every managed one. The unmanaged container survives both.
    proc = fleet.play("stop.yml", "-e", "names=chat-0")
    assert proc.returncode == 0, proc.stdout[-3000:]
    managed = fleet.managed()
    assert managed["gpufleet-chat-0"]["status"] == "exited" and managed["gpufleet-chat-1"]["status"] == "running"
    proc = fleet.play("stop.yml", "-e", "all=true", "-e", "state=absent")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert fleet.managed() == {}
    assert_bystander_untouched(fleet)
    proc = fleet.play("stop.yml")
    assert proc.returncode != 0 and "say what to stop" in proc.stdout


def estimate(stdout: str, deployment: str) -> tuple[str, int]:
    """(source, weights bytes) of a deployment's VRAM estimate in the fleet_plan result that -v printed."""
    m = re.search(rf'"{re.escape(deployment)}": {{[^{{}}]*?"source": "([^"]+)",[^{{}}]*?"weights_bytes": (\d+)', stdout)
    assert m, f"no estimate of {deployment} in the output"
    return m[1], int(m[2])


def test_hub_model_is_served_from_the_path_model_sync_produced(
    fleet: Fleet, model_gen: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A hub model: model_sync brings it to <gpufleet_models_root>/<deployment>/<commit> on the host and the container
    serves exactly that revision's directory, hashing the commit (model_revision), without --revision."""
    root = tmp_path_factory.mktemp("fleet-hub")
    # A tag no earlier run used: model_sync's record on gpu-c from a previous run is not this model (the plan asks
    # the hub for its size first, then uses the record this run leaves).
    tag = f"v1-{time.time_ns()}"
    sha = model_gen.make_repo(root / "hub", "org/tiny-hub", tags=[tag])
    port_file = root / "port"
    # The fake hub listens on the controller's address on the hosts' bridge, where the hosts reach it.
    args = ["--root", str(root / "hub"), "--host", fleet.sim.gateway, "--port", "0", "--port-file", str(port_file)]
    hub = subprocess.Popen(
        [sys.executable, str(ROOT / "sim" / "hub" / "fakehub.py"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() and time.monotonic() < deadline and hub.poll() is None:
            time.sleep(0.05)
        assert port_file.exists(), "the fake hub did not start"
        dep = {
            "name": "hubchat",
            "model": {"repo_id": "org/tiny-hub", "revision": tag},
            "vllm_version": "0.10.2",
            "port": 8400,
            "selector": {"zone": "us1"},
            "serve_for": 12,
        }
        fleet.write_inventory([dep])
        group_vars = fleet.inventory / "group_vars" / "all" / "fleet.yml"
        data = yaml.safe_load(group_vars.read_text())
        data["gpufleet_hf_endpoint"] = f"http://{fleet.sim.gateway}:{port_file.read_text().strip()}"
        group_vars.write_text(yaml.safe_dump(data))
        proc = fleet.play("converge.yml", "-v")  # -v: the plan's result, with its VRAM estimates
        assert proc.returncode == 0, proc.stdout[-5000:]
        # No size in the inventory: the plan asked the hub (2 shards of 4096 U8 parameters = 8192 bytes of weights).
        assert estimate(proc.stdout, "hubchat") == ("hub model info", 8192), proc.stdout[-5000:]
        c = fleet.managed()["gpufleet-hubchat-0"]
        assert c["host"] == "gpu-c" and c["status"] == "running"
        assert f"/var/lib/gpufleet/models/hubchat/{sha}" in c["args"] and "org/tiny-hub" not in c["args"]
        assert json.loads(c["labels"]["gpufleet.spec"])["model_revision"] == sha
        assert "--revision" not in c["args"]
        assert c["labels"]["gpufleet.vllm-version"] == "0.10.2"
        # serve_for (12 h) lives in the replica's lifecycle record on its host (mutable: extend.yml moves it).
        record = (
            ROOT / ".build" / "hosts" / "gpu-c" / "fs" / "var" / "lib" / "gpufleet" / "lifecycle" / "hubchat-0.json"
        )
        life = json.loads(record.read_text())
        assert life["serve_for_h"] == 12 and life.get("container_id") and life.get("since"), life
        again = fleet.play("converge.yml", "-v")
        assert again.returncode == 0 and recap(again.stdout)["gpu-c"]["changed"] == 0, again.stdout[-3000:]
        # Now the weight bytes model_sync validated on gpu-c (the shards' files, headers included): no hub request.
        assert estimate(again.stdout, "hubchat") == ("model_sync on gpu-c", 8432), again.stdout[-5000:]
    finally:
        hub.terminate()
        hub.wait()
        fleet.play("stop.yml", "-e", "names=hubchat", "-e", "state=absent")
