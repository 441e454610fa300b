"""Rolling updates per deployment (docs/rollouts.md) on the simulated hosts over SSH, real daemons and the vLLM
stand-in: check mode lists the waves; max_unavailable 1 never has two replicas of a deployment down at once (sampled
every 100 ms from a thread while the converge runs); a 1-replica deployment with a free GPU surges (something answers
at every sample: the old container until the surge is ready, then the surge, then the new one); a new declaration
that fails to start is rolled back, stops its deployment's rollout and fails the run. One fleet, built once.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fixtures.hosts import SimFleet

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / ".build" / "fleet"
SAMPLE_S = 0.1
SAMPLE_LIMIT_S = 400  # the sampler stops by itself at the latest after this


def chat(max_model_len: int = 2048, **env: str) -> dict[str, Any]:
    """Two replicas spread over two hosts, replaced in place one at a time (no surge)."""
    return {
        "name": "chat",
        "model": str(MODELS / "models" / "tiny-chat"),
        "vllm_version": "0.10.2",
        "replicas": 2,
        "placement": "spread",
        "port": 8000,
        "engine_options": {"max_model_len": max_model_len},
        "env": {"VLLM_LOGGING_LEVEL": "INFO", **env},
        "max_unavailable": 1,
        "max_surge": 0,
    }


def solo(max_model_len: int = 2048, **env: str) -> dict[str, Any]:
    """One replica on gpu-b (4 GPUs): surges on a free GPU (defaults)."""
    return {
        "name": "solo",
        "model": str(MODELS / "models" / "tiny-chat"),
        "vllm_version": "0.10.2",
        "host": "gpu-b",
        "port": 8200,
        "engine_options": {"max_model_len": max_model_len},
        "env": dict(env),
    }


def up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Sampler(threading.Thread):
    """Probes every endpoint's /health every 100 ms until stopped (or SAMPLE_LIMIT_S): a list of {url: up}."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.samples: list[dict[str, bool]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + SAMPLE_LIMIT_S
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.samples.append({u: up(u) for u in self.urls})
            self.stop.wait(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.join(timeout=30)


@pytest.fixture(scope="module")
def fleet(sim_hosts: Any, sim_fleet_lock: None, tmp_path_factory: pytest.TempPathFactory) -> Any:
    subprocess.run([str(ROOT / "sim" / "steps.d" / "70-fleet.sh"), "up"], check=True, capture_output=True)
    f = SimFleet(sim_hosts, tmp_path_factory.mktemp("rollout"), {name: "docker" for name in sim_hosts.names})
    f.write_inventory([])
    proc = f.play("stop.yml", "-e", "all=true", "-e", "state=absent")
    assert proc.returncode == 0, proc.stdout[-3000:]
    f.write_inventory([chat(), solo()])
    proc = f.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-5000:]
    yield f
    f.write_inventory([])
    f.play("stop.yml", "-e", "all=true", "-e", "state=absent")


def endpoints(fleet: SimFleet, deployment: str) -> list[str]:
    rows = fleet.summary()["deployments"][deployment]["replicas"]
    return [f"http://{fleet.sim.address(r['host'])}:{r['port']}" for r in rows]


def test_check_mode_lists_the_waves_and_changes_nothing(fleet: SimFleet) -> None:
    before = fleet.managed()
    fleet.write_inventory([chat(max_model_len=1024), solo(max_model_len=1024)])
    proc = fleet.play("converge.yml", "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-5000:]
    hosts = {r["name"]: r["host"] for r in fleet.summary()["deployments"]["chat"]["replicas"]}
    # chat: one in place per wave; solo surges beside its old container in the first wave, on a free GPU of gpu-b.
    assert (
        f"# rollout wave 1: chat-0 on {hosts['chat-0']} (in place), solo-0 on gpu-b (surge :8201 gpus=" in proc.stdout
    )
    assert f"# rollout wave 2: chat-1 on {hosts['chat-1']} (in place)" in proc.stdout
    assert "wave 3" not in proc.stdout
    after = fleet.managed()
    assert {n: c["id"] for n, c in after.items()} == {n: c["id"] for n, c in before.items()}


def test_max_unavailable_and_surge_keep_the_deployments_serving(fleet: SimFleet) -> None:
    before = fleet.managed()
    chat_urls = endpoints(fleet, "chat")
    solo_url, surge_url = endpoints(fleet, "solo")[0], f"http://{fleet.sim.address('gpu-b')}:8201"
    fleet.write_inventory([chat(max_model_len=1024), solo(max_model_len=1024)])
    with Sampler([*chat_urls, solo_url, surge_url]) as sampler:
        proc = fleet.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-5000:]
    samples = sampler.samples
    assert len(samples) > 20, "the sampler must have seen the converge"
    chat_down = [sum(not s[u] for u in chat_urls) for s in samples]
    assert max(chat_down) <= 1, "two chat replicas were down at once"
    assert max(chat_down) == 1, "the in-place replacements were not seen (sampling too slow?)"
    # solo never stopped serving: the old one until the surge was ready, the surge while solo-0 was replaced.
    assert all(s[solo_url] or s[surge_url] for s in samples)
    assert any(s[surge_url] for s in samples), "the surge was never seen serving"
    assert not up(surge_url)  # and it is gone
    after = fleet.managed()
    for name in ("gpufleet-chat-0", "gpufleet-chat-1", "gpufleet-solo-0"):
        assert after[name]["id"] != before[name]["id"]
        assert after[name]["args"][after[name]["args"].index("--max-model-len") + 1] == "1024"
    assert "gpufleet-solo-0-surge" not in after
    # Converged: a second run plans no wave and changes nothing.
    proc = fleet.play("converge.yml")
    assert proc.returncode == 0 and "wave 1" not in proc.stdout, proc.stdout[-3000:]
    assert {n: c["id"] for n, c in fleet.managed().items()} == {n: c["id"] for n, c in after.items()}


def test_failing_new_declaration_is_rolled_back_and_fails_the_run(fleet: SimFleet) -> None:
    before = fleet.managed()
    chat_urls = endpoints(fleet, "chat")
    solo_url = endpoints(fleet, "solo")[0]
    fleet.write_inventory([chat(max_model_len=512, STANDIN_FAIL="oom"), solo(max_model_len=512, STANDIN_FAIL="oom")])
    with Sampler([*chat_urls, solo_url]) as sampler:
        proc = fleet.play("converge.yml")
    assert proc.returncode == 2, proc.stdout[-5000:]
    summary = fleet.summary()
    assert summary["ok"] is False
    rows = {r["name"]: r for d in ("chat", "solo") for r in summary["deployments"][d]["replicas"]}
    # chat-0 failed in wave 1 (in place: rolled back to its old container); the rollout of chat stopped there.
    assert rows["chat-0"]["status"] == "failed" and rows["chat-0"]["rolled_back"] is True
    assert rows["chat-0"]["failure_class"] == "gpu_oom"
    assert rows["chat-1"]["status"] == "not_run"
    # solo's surge failed: removed, solo-0 never touched.
    assert rows["solo-0"]["status"] == "failed" and rows["solo-0"]["rolled_back"] is True
    assert "was not touched and still serves" in rows["solo-0"]["hint"] or rows["solo-0"]["failure_class"] == "gpu_oom"
    after = fleet.managed()
    for name in ("gpufleet-chat-0", "gpufleet-chat-1", "gpufleet-solo-0"):
        assert after[name]["id"] == before[name]["id"], name
        assert after[name]["status"] == "running"
    assert "gpufleet-solo-0-surge" not in after
    assert all(up(u) for u in [*chat_urls, solo_url])
    # solo served throughout; at most one chat replica was down at any sample.
    assert all(s[solo_url] for s in sampler.samples)
    assert max(sum(not s[u] for u in chat_urls) for s in sampler.samples) <= 1
    assert "FAILED" in proc.stdout and "gpu_oom" in proc.stdout
