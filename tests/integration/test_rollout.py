"""Rolling updates per deployment (docs/rollouts.md) on the simulated hosts over SSH, real daemons and the vLLM
stand-in, with a gateway (vllm-router on gpu-a) per deployment and 8 clients sending requests through the gateways
(tests/fixtures/loadgen.py, streaming and not) for the whole of each converge: zero failed requests.

Check mode of a revision change lists the waves and touches neither containers, routers nor model directories.
A flag change and a new model revision (the fake hub's next commit) of a 3-replica deployment over
2 hosts with max_unavailable 1 (never two replicas down at once, nor fewer than two in its router; sampled every
100 ms from a thread while the converge runs; the new weights served afterwards, the old revision gone from the
hosts) together with a vLLM version change of a 1-replica deployment with a
free GPU (a surge: something answers at every sample, and the surge served through the router). A new version that
fails to start is rolled back, stops its deployment's rollout and fails the run, and no request fails; the same run
scales chat down from 3 replicas to 2: the removed replica leaves the router before its container stops (drained),
and no request fails either. One fleet, built once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures.gateway import add_gateway_host, ensure_wheelhouse, gateway_vars
from fixtures.hosts import SimFleet
from fixtures.loadgen import Load

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / ".build" / "fleet"
SAMPLE_S = 0.2  # a replica replaced in place is down for seconds (stop, start, health gate): seen at this rate
SAMPLE_LIMIT_S = 400  # the sampler stops by itself at the latest after this
GW_PORTS = {"chat": 30600, "solo": 30601}
HUB_REPO = "org/roll-chat"
HOST_MODELS = "/var/lib/gpufleet/models"  # gpufleet_models_root's default on the hosts
MODEL = "tiny-chat"
# Each request takes this long in the stand-in, so that replicas have requests in flight when they are drained: the
# 8 clients keep 8 requests in flight all along. Longer requests, not more of them: at 0.05 s the clients sent about
# four times as many, and their CPU (client, router, stand-in) slowed the converge they watch.
REQUEST_DELAY = "0.25"


def chat(
    max_model_len: int = 2048, vllm_version: str = "0.10.2", revision: str = "v1", replicas: int = 3, **env: str
) -> dict[str, Any]:
    """Three replicas spread over two hosts, replaced in place one at a time (no surge); a hub model (the fake hub),
    one revision kept on the hosts."""
    return {
        "name": "chat",
        "model": {"repo_id": HUB_REPO, "revision": revision},
        "keep_revisions": 1,
        "served_model_name": [MODEL],
        "vllm_version": vllm_version,
        "replicas": replicas,
        "placement": "spread",
        "selector": {"zone": "eu1"},  # gpu-a and gpu-b
        "port": 8000,
        "engine_options": {"max_model_len": max_model_len},
        "env": {"VLLM_LOGGING_LEVEL": "INFO", "STANDIN_REQUEST_DELAY": REQUEST_DELAY, **env},
        "max_unavailable": 1,
        "max_surge": 0,
    }


def solo(max_model_len: int = 2048, vllm_version: str = "0.10.2", **env: str) -> dict[str, Any]:
    """One replica on gpu-b (4 GPUs): surges on a free GPU (defaults)."""
    return {
        "name": "solo",
        "model": str(MODELS / "models" / "tiny-chat"),
        "served_model_name": [MODEL],
        "vllm_version": vllm_version,
        "host": "gpu-b",
        "port": 8200,
        "engine_options": {"max_model_len": max_model_len},
        "env": {"STANDIN_REQUEST_DELAY": REQUEST_DELAY, **env},
    }


class RolloutFleet(SimFleet):
    """The fleet with a gateway on gpu-a (a router per deployment, ports GW_PORTS) and a fake hub (chat's model: its
    commits ``revisions[tag]``)."""

    hf_endpoint = ""
    revisions: dict[str, str] = {}

    def write(self, deployments: list[dict[str, Any]], **group_vars: Any) -> None:
        group_vars.setdefault("gpufleet_hf_endpoint", self.hf_endpoint)
        self.write_inventory(deployments, **gateway_vars(GW_PORTS, **group_vars))
        add_gateway_host(self.inventory / "hosts.yml", "gpu-a")

    def gateway(self, deployment: str) -> str:
        return f"http://{self.sim.address('gpu-a')}:{GW_PORTS[deployment]}"

    def revision_dirs(self, host: str) -> set[str]:
        """The revisions of chat's model installed on ``host``."""
        return set(self.sim.in_host(host, "ls", f"{HOST_MODELS}/chat").stdout.split())

    def router_workers(self, deployment: str) -> list[str]:
        answer = httpx.get(self.gateway(deployment) + "/list_workers", timeout=5)
        answer.raise_for_status()  # HAProxy's 503 page is HTML: say the status, not a JSON error
        return sorted(answer.json()["urls"])


def up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def listed(router: str) -> list[str] | None:
    try:
        return sorted(httpx.get(router + "/list_workers", timeout=2).json()["urls"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


class Sampler(threading.Thread):
    """Probes every endpoint's /health and every router's worker list every SAMPLE_S until stopped (or
    SAMPLE_LIMIT_S): a list of {url: up} and a list of {router: [workers]}."""

    def __init__(self, urls: list[str], routers: list[str] = ()) -> None:  # type: ignore[assignment]
        super().__init__(daemon=True)
        self.urls = urls
        self.routers = list(routers)
        self.samples: list[dict[str, bool]] = []
        self.listed: list[dict[str, list[str] | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + SAMPLE_LIMIT_S
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.samples.append({u: up(u) for u in self.urls})
            self.listed.append({r: listed(r) for r in self.routers})
            self.stop.wait(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.join(timeout=30)


@pytest.fixture(scope="module")
def hub(sim_hosts: Any, model_gen: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A fake hub on the controller's address on the hosts' bridge with two commits of chat's model (v1, v2)."""
    root = tmp_path_factory.mktemp("rollout-hub")
    revisions = {
        tag: model_gen.make_repo(root / "hub", HUB_REPO, tags=[tag], seed=i) for i, tag in enumerate(("v1", "v2"))
    }
    port_file = root / "port"
    args = ["--root", str(root / "hub"), "--host", sim_hosts.gateway, "--port", "0", "--port-file", str(port_file)]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "sim" / "hub" / "fakehub.py"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120  # only ends a hung start
    while not port_file.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert port_file.exists(), "the fake hub did not start"
    yield f"http://{sim_hosts.gateway}:{port_file.read_text().strip()}", revisions
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="module")
def fleet(sim_hosts: Any, sim_fleet_lock: None, hub: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    ensure_wheelhouse()
    subprocess.run([str(ROOT / "sim" / "steps.d" / "70-fleet.sh"), "up"], check=True, capture_output=True)
    f = RolloutFleet(sim_hosts, tmp_path_factory.mktemp("rollout"), {name: "docker" for name in sim_hosts.names})
    f.hf_endpoint, f.revisions = hub
    f.write([])
    proc = f.play("stop.yml", "-e", "all=true", "-e", "state=absent")
    assert proc.returncode == 0, proc.stdout[-3000:]
    for h in ("gpu-a", "gpu-b"):  # chat's model dir as other modules left it
        sim_hosts.in_host(h, "rm", "-rf", f"{HOST_MODELS}/chat")
    f.write([chat(), solo()])
    proc = f.play("converge.yml")  # replicas, then the gateways (play 3)
    assert proc.returncode == 0, proc.stdout[-5000:]
    yield f
    f.write([chat(), solo()], gpufleet_gateway_state="stopped")
    f.play("gateway.yml")
    sim_hosts.in_host("gpu-a", "rm", "-rf", "/opt/gpufleet/gateway/routers")
    f.write([])
    f.play("stop.yml", "-e", "all=true", "-e", "state=absent")
    for h in ("gpu-a", "gpu-b"):
        sim_hosts.in_host(h, "rm", "-rf", f"{HOST_MODELS}/chat")


def gateways(fleet: RolloutFleet) -> list[str]:
    return [fleet.gateway(d) for d in sorted(GW_PORTS)]


def endpoints(fleet: SimFleet, deployment: str) -> list[str]:
    rows = fleet.summary()["deployments"][deployment]["replicas"]
    return [f"http://{fleet.sim.address(r['host'])}:{r['port']}" for r in rows]


def test_check_mode_lists_the_waves_and_changes_nothing(fleet: RolloutFleet) -> None:
    before = fleet.managed()
    routers = {d: fleet.router_workers(d) for d in GW_PORTS}
    assert len(routers["chat"]) == 3 and len(routers["solo"]) == 1, routers  # the gateways serve every replica
    fleet.write([chat(max_model_len=1024, revision="v2"), solo(max_model_len=1024, vllm_version="0.33.0")])
    proc = fleet.play("converge.yml", "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-5000:]
    hosts = {r["name"]: r["host"] for r in fleet.summary()["deployments"]["chat"]["replicas"]}
    # chat: one in place per wave; solo surges beside its old container in the first wave, on a free GPU of gpu-b.
    assert (
        f"# rollout wave 1: chat-0 on {hosts['chat-0']} (in place), solo-0 on gpu-b (surge :8201 gpus=" in proc.stdout
    )
    assert f"# rollout wave 2: chat-1 on {hosts['chat-1']} (in place)" in proc.stdout
    assert f"# rollout wave 3: chat-2 on {hosts['chat-2']} (in place)" in proc.stdout
    assert "wave 4" not in proc.stdout
    after = fleet.managed()
    assert {n: c["id"] for n, c in after.items()} == {n: c["id"] for n, c in before.items()}
    assert {d: fleet.router_workers(d) for d in GW_PORTS} == routers
    assert all(fleet.revision_dirs(h) == {fleet.revisions["v1"]} for h in ("gpu-a", "gpu-b"))  # nothing fetched


def test_rolling_flag_revision_and_version_change_fail_no_request(fleet: RolloutFleet) -> None:
    """chat: a flag change and a new model revision, one replica at a time; solo: a vLLM version change by surge; 8
    clients through the two gateways all along: zero failed requests. chat serves the new weights afterwards and
    the old revision is gone from both hosts."""
    before = fleet.managed()
    old, new = fleet.revisions["v1"], fleet.revisions["v2"]
    chat_hosts = {c["host"] for n, c in before.items() if n.startswith("gpufleet-chat-")}
    assert chat_hosts == {"gpu-a", "gpu-b"} and all(fleet.revision_dirs(h) == {old} for h in chat_hosts)
    chat_urls = endpoints(fleet, "chat")
    solo_url, surge_url = endpoints(fleet, "solo")[0], f"http://{fleet.sim.address('gpu-b')}:8201"
    fleet.write([chat(max_model_len=1024, revision="v2"), solo(max_model_len=1024, vllm_version="0.33.0")])
    chat_gw, solo_gw = fleet.gateway("chat"), fleet.gateway("solo")
    with Load(gateways(fleet), MODEL) as load, Sampler([*chat_urls, solo_url, surge_url], [chat_gw, solo_gw]) as s:
        assert load.wait_for(16), load.report()  # the clients run before the converge starts
        proc = fleet.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert load.failures == [], load.report()
    for gw in (chat_gw, solo_gw):
        kinds = load.ok_kinds(gw)
        assert kinds[True] > 0 and kinds[False] > 0, (gw, kinds)
    samples = s.samples
    assert len(samples) > 20, "the sampler must have seen the converge"
    chat_down = [sum(not x[u] for u in chat_urls) for x in samples]
    assert max(chat_down) <= 1, "two chat replicas were down at once"
    assert max(chat_down) == 1, "the in-place replacements were not seen (sampling too slow?)"
    # The router lost one chat replica at a time (drained before its stop, back after its gate), never two.
    chat_listed = [len(x[chat_gw]) for x in s.listed if x[chat_gw] is not None]
    assert min(chat_listed) == 2 and chat_listed[-1] == 3, chat_listed
    # solo never stopped serving: the old one until the surge was ready, the surge (in the router) while solo-0 was
    # replaced.
    assert all(x[solo_url] or x[surge_url] for x in samples)
    assert any(x[surge_url] for x in samples), "the surge was never seen serving"
    assert any(surge_url in (x[solo_gw] or []) for x in s.listed), "the surge never joined the router"
    assert all(x[solo_gw] for x in s.listed if x[solo_gw] is not None), "solo's router was left without a worker"
    assert not up(surge_url)  # and it is gone
    after = fleet.managed()
    for name in ("gpufleet-chat-0", "gpufleet-chat-1", "gpufleet-chat-2", "gpufleet-solo-0"):
        assert after[name]["id"] != before[name]["id"]
        assert after[name]["args"][after[name]["args"].index("--max-model-len") + 1] == "1024"
    for url in chat_urls:  # the new weights are served: /v1/models' root is the new revision's directory
        assert httpx.get(url + "/v1/models", timeout=5).json()["data"][0]["root"] == f"{HOST_MODELS}/chat/{new}"
    assert all(fleet.revision_dirs(h) == {new} for h in chat_hosts)  # the old one left with its last replica
    image = after["gpufleet-solo-0"]["inspect"]["Config"]["Image"]
    assert image.endswith(":v0.33.0"), image
    assert "gpufleet-solo-0-surge" not in after
    assert fleet.router_workers("chat") == sorted(chat_urls) and fleet.router_workers("solo") == [solo_url]
    # Converged: a second run plans no wave and changes nothing.
    proc = fleet.play("converge.yml")
    assert proc.returncode == 0 and "wave 1" not in proc.stdout, proc.stdout[-3000:]
    assert {n: c["id"] for n, c in fleet.managed().items()} == {n: c["id"] for n, c in after.items()}


def test_failing_new_version_is_rolled_back_fails_the_run_and_no_request(fleet: RolloutFleet) -> None:
    """The new version fails (rolled back, the run fails) while the same run scales chat down to 2 replicas: chat-2
    is taken out of the router and drained before its container stops (apply step), and no request fails."""
    before = fleet.managed()
    rows = {r["name"]: r for r in fleet.summary()["deployments"]["chat"]["replicas"]}
    chat_urls = endpoints(fleet, "chat")
    gone_url = f"http://{fleet.sim.address(rows['chat-2']['host'])}:{rows['chat-2']['port']}"
    kept_urls = [u for u in chat_urls if u != gone_url]
    solo_url = endpoints(fleet, "solo")[0]
    chat_gw = fleet.gateway("chat")
    fleet.write(
        [
            chat(max_model_len=512, vllm_version="0.33.0", revision="v2", replicas=2, STANDIN_FAIL="oom"),
            solo(max_model_len=512, vllm_version="0.33.0", STANDIN_FAIL="oom"),
        ]
    )
    with Load(gateways(fleet), MODEL) as load, Sampler([*chat_urls, solo_url], [chat_gw]) as sampler:
        assert load.wait_for(16), load.report()
        proc = fleet.play("converge.yml")
    assert proc.returncode == 2, proc.stdout[-5000:]
    assert load.failures == [] and load.ok > 16, load.report()
    # The scale-down: chat-2 left the router before it stopped answering (never listed while down), and is gone.
    assert gone_url in (sampler.listed[0][chat_gw] or []), "chat-2 was not in the router at the start"
    assert not up(gone_url) and any(not x[gone_url] for x in sampler.samples)
    listed_down = [  # a sample reads /health first, then the router's list: a drained replica is never both
        i
        for i, (x, r) in enumerate(zip(sampler.samples, sampler.listed, strict=False))
        if not x[gone_url] and gone_url in (r[chat_gw] or [])
    ]
    assert listed_down == [], "chat-2 was still in the router while its server was down (not drained first)"
    assert fleet.router_workers("chat") == sorted(kept_urls) and fleet.router_workers("solo") == [solo_url]
    summary = fleet.summary()
    assert summary["ok"] is False
    rows = {r["name"]: r for d in ("chat", "solo") for r in summary["deployments"][d]["replicas"]}
    # chat-0 failed in wave 1 (in place: rolled back to its old container); the rollout of chat stopped there.
    assert rows["chat-0"]["status"] == "failed" and rows["chat-0"]["rolled_back"] is True
    assert rows["chat-0"]["failure_class"] == "gpu_oom"
    assert rows["chat-1"]["status"] == "not_run" and "chat-2" not in rows
    # solo's surge failed: removed, solo-0 never touched.
    assert rows["solo-0"]["status"] == "failed" and rows["solo-0"]["rolled_back"] is True
    assert "was not touched and still serves" in rows["solo-0"]["hint"] or rows["solo-0"]["failure_class"] == "gpu_oom"
    after = fleet.managed()
    for name in ("gpufleet-chat-0", "gpufleet-chat-1", "gpufleet-solo-0"):
        assert after[name]["id"] == before[name]["id"], name
        assert after[name]["status"] == "running"
    assert "gpufleet-solo-0-surge" not in after and "gpufleet-chat-2" not in after
    assert all(up(u) for u in [*kept_urls, solo_url])
    # solo served throughout; at most one of the chat replicas it keeps was down at any sample.
    assert all(s[solo_url] for s in sampler.samples)
    assert max(sum(not s[u] for u in kept_urls) for s in sampler.samples) <= 1
    assert "FAILED" in proc.stdout and "gpu_oom" in proc.stdout
