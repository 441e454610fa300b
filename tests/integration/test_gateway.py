"""The gateway (docs/gateway.md) over real SSH on the simulated hosts: a 2-replica deployment spread over gpu-a and
gpu-b, and its vllm-router on gpu-a (group gpufleet_gateways, process mode: the simulated hosts have no systemd).

In order: converge (replicas + gateway), 40 requests through the gateway all succeed and both replicas served some,
the API key is not on any process's command line, a second run changes nothing, check mode, a killed replica stops
getting requests (waited for, no fixed sleep), gateway_workers removes a worker while requests are in flight (they
finish) and puts it back, then status shows the gateway.
Last, the replica guard and a paused replica: pause.yml puts both replicas to sleep, a request through the gateway
is held by the replica until one tick of the node agent on its host wakes it (woken), and vLLM's dev endpoints on the
hosts' addresses answer 403. Then the deployment is no longer declared: a converge with gpufleet_prune=true
removes its replicas, stops both hosts' guards and removes their configuration, and the gateway drops its router
and stops its admin guard; the next converge changes nothing.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.shipping import MODULE
from fixtures.gateway import WHEELHOUSE, ensure_wheelhouse
from fixtures.hosts import SimFleet, recap

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / ".build" / "fleet"
KEY = "gw-canary-3b9d0c7e1f"  # the deployment's API key: never on a command line
NAME = "gwchat"
PORT = 8300
GW_PORT = 30500
HOSTS = ("gpu-a", "gpu-b")


def deployment(replicas: int = 2) -> dict[str, Any]:
    return {
        "name": NAME,
        "model": str(MODELS / "models" / "tiny-chat"),
        # Sleep mode (0.16+ holds a request while asleep): vLLM listens on 127.0.0.1, the replica guard (HAProxy) on
        # the host's address, so every test here goes through the guard as a gateway on another host does.
        "vllm_version": "0.33.0",
        "replicas": replicas,
        "placement": "spread",
        "port": PORT,
        "served_model_name": ["tiny-chat"],
        "engine_options": {"max_model_len": 1024, "sleep_mode": True},
        "env": {"STANDIN_REQUEST_DELAY": "0.3"},  # slow enough to have requests in flight
        "api_key": KEY,
    }


class GatewayFleet(SimFleet):
    def write(self, deployments: list[dict[str, Any]], **group_vars: Any) -> None:
        group_vars.setdefault("gpufleet_gateway_ports", {NAME: GW_PORT})
        group_vars.setdefault("gpufleet_gateway_pip_extra_args", f"--no-index --find-links {WHEELHOUSE}")
        group_vars.setdefault("gpufleet_gateway_health_check_interval", 1)
        group_vars.setdefault("gpufleet_gateway_health_failure_threshold", 1)
        self.write_inventory(deployments, **group_vars)
        inv_file = self.inventory / "hosts.yml"
        inv = yaml.safe_load(inv_file.read_text())
        inv["all"]["children"]["gpufleet_gateways"] = {"hosts": {"gpu-a": None}}
        for name, hostvars in inv["all"]["children"]["gpu_hosts"]["hosts"].items():  # the hosts share /opt
            hostvars["gpufleet_replica_guard_dir"] = f"/opt/gpufleet/replica-guard-{name}"
        inv_file.write_text(yaml.safe_dump(inv))

    @property
    def gateway(self) -> str:
        return f"http://{self.sim.address('gpu-a')}:{GW_PORT}"

    def replica_urls(self) -> dict[str, str]:
        return {h: f"http://{self.sim.address(h)}:{PORT}" for h in HOSTS}


@pytest.fixture(scope="module")
def gw(sim_hosts: Any, sim_fleet_lock: None, tmp_path_factory: pytest.TempPathFactory) -> Any:
    for h in HOSTS:
        if h not in sim_hosts.hosts:
            pytest.skip(f"simulated host {h} is not up")
    ensure_wheelhouse()
    subprocess.run([str(ROOT / "sim" / "steps.d" / "70-fleet.sh"), "up"], check=True, capture_output=True)
    f = GatewayFleet(sim_hosts, tmp_path_factory.mktemp("gateway"), {h: "docker" for h in HOSTS})
    yield f
    f.write([deployment()], gpufleet_gateway_state="stopped")
    f.play("gateway.yml")
    f.write([])
    f.play("stop.yml", "-e", f"names={NAME}", "-e", "state=absent")
    for h in HOSTS:  # the replica guards, where the last test did not stop them (by their configuration's path: the
        # hosts share one PID namespace, and a stale pidfile may name another process)
        sim_hosts.in_host(h, "pkill", "-f", "--", guard_config(h))
        sim_hosts.in_host(h, "rm", "-rf", f"/opt/gpufleet/replica-guard-{h}")
    sim_hosts.in_host("gpu-a", "rm", "-rf", "/opt/gpufleet/gateway/routers")


def guard_config(host: str) -> str:
    """The replica guard's configuration on a simulated host (each has its own guard directory: they share /opt)."""
    return f"/opt/gpufleet/replica-guard-{host}/haproxy.cfg"


def guard(fleet: GatewayFleet, host: str) -> tuple[bool, bool]:
    """(HAProxy runs with the host's guard configuration, that configuration exists)."""
    runs = fleet.sim.in_host(
        host, "sh", "-c",
        'pid=$(cat /run/gpufleet-replica-guard.pid) && tr "\\0" " " < "/proc/$pid/cmdline" | grep -q -- "$1"',
        "sh", guard_config(host),
    )  # fmt: skip
    return runs.returncode == 0, fleet.sim.in_host(host, "test", "-f", guard_config(host)).returncode == 0


def gateway_changes(stdout: str) -> list[str]:
    """The tasks of the gateway play that reported changed (play 1 plans on the GPU hosts; gpu-a is one of them)."""
    part = stdout.split("PLAY [Run the gateways]", 1)[1].split("PLAY RECAP", 1)[0]
    tasks, current = [], ""
    for line in part.splitlines():
        if line.startswith("TASK ["):
            current = line
        elif line.startswith("changed: ["):
            tasks.append(current)
    return tasks


def served_counts(fleet: GatewayFleet) -> dict[str, float]:
    """Successful requests each replica served so far (vLLM's vllm:request_success_total, summed)."""
    out = {}
    for host, url in fleet.replica_urls().items():
        try:
            text = httpx.get(url + "/metrics", timeout=5).text
        except httpx.HTTPError:
            out[host] = -1.0
            continue
        out[host] = sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total")
        )
    return out


def running(replica: str) -> float:
    """Requests the replica is serving now (vLLM's vllm:num_requests_running; the router's own per-worker load is
    counted by load-aware policies only, not by round_robin)."""
    text = httpx.get(replica + "/metrics", timeout=5).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("vllm:num_requests_running"))


def complete(base: str, i: int, client: httpx.Client) -> int:
    r = client.post(
        base + "/v1/completions",
        json={"model": "tiny-chat", "prompt": f"hello {i}", "max_tokens": 4},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    return r.status_code


def burst(base: str, n: int = 40, concurrency: int = 8) -> list[int]:
    with httpx.Client() as client, concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda i: complete(base, i, client), range(n)))


def router_workers(fleet: GatewayFleet) -> list[dict[str, Any]]:
    """The router's worker list through the gateway; an HTTP error status (HAProxy's 503 while the router
    restarts) raises httpx.HTTPStatusError instead of failing to parse HAProxy's HTML page as JSON."""
    answer = httpx.get(fleet.gateway + "/workers", timeout=5)
    answer.raise_for_status()
    return answer.json()["workers"]


def module(fleet: GatewayFleet, args: dict[str, Any]) -> dict[str, Any]:
    return fleet.sim.ansible("gpu-a", "gpufleet.vllm.gateway_workers", json.dumps(args))["gpu-a"]


def test_converge_runs_replicas_and_gateway(gw: GatewayFleet) -> None:
    gw.write([deployment()])
    proc = gw.play("converge.yml", timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap(proc.stdout)["gpu-a"]["failed"] == 0
    urls = sorted(gw.replica_urls().values())
    assert sorted(w["url"] for w in router_workers(gw)) == urls
    args = gw.sim.in_host("gpu-a", "cat", f"/opt/gpufleet/gateway/routers/{NAME}/router.args").stdout
    # The admin guard (default): HAProxy takes the clients' port, the router listens on loopback (port + 2000).
    assert "--host=127.0.0.1" in args and f"--port={GW_PORT + 2000}" in args
    endpoint = gw.sim.in_host("gpu-a", "cat", f"/opt/gpufleet/gateway/routers/{NAME}/endpoint").stdout.split()
    assert endpoint == [gw.sim.address("gpu-a"), str(GW_PORT)]
    mode = gw.sim.in_host("gpu-a", "stat", "-c", "%a", f"/opt/gpufleet/gateway/routers/{NAME}/api_key").stdout
    assert mode.strip() == "600"


def test_requests_through_the_gateway_reach_both_replicas(gw: GatewayFleet) -> None:
    before = served_counts(gw)
    codes = burst(gw.gateway)
    assert codes == [200] * 40
    after = served_counts(gw)
    assert all(after[h] > before[h] for h in HOSTS), (before, after)
    assert sum(after.values()) - sum(before.values()) == 40


def test_api_key_is_on_no_command_line(gw: GatewayFleet) -> None:
    ps = gw.sim.in_host("gpu-a", "ps", "-eo", "args", "ww").stdout
    assert "vllm::router" in ps or "launch.py" in ps
    assert KEY not in ps
    for pid in gw.sim.in_host("gpu-a", "pgrep", "-f", "gateway").stdout.split():
        cmd = gw.sim.in_host("gpu-a", "cat", f"/proc/{pid}/cmdline").stdout
        assert KEY not in cmd


def test_second_run_changes_nothing(gw: GatewayFleet) -> None:
    proc = gw.play("gateway.yml")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert gateway_changes(proc.stdout) == [], proc.stdout[-4000:]
    assert recap(proc.stdout)["gpu-a"]["failed"] == 0


def test_check_mode_shows_a_removal_and_changes_nothing(gw: GatewayFleet) -> None:
    gw.write([deployment(replicas=1)])
    proc = gw.play("gateway.yml", "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-4000:]
    changes = gateway_changes(proc.stdout)
    assert any("Make the router's workers" in t for t in changes), proc.stdout[-4000:]
    assert len(router_workers(gw)) == 2  # untouched
    gw.write([deployment()])


def test_killed_replica_stops_receiving_requests(gw: GatewayFleet) -> None:
    import docker

    victim = gw.replica_urls()["gpu-b"]
    client = docker.DockerClient(base_url=gw.sim.docker_host("gpu-b"))
    container = next(c for c in client.containers.list() if c.name.startswith(f"gpufleet-{NAME}-"))
    container.kill()
    try:
        deadline = time.monotonic() + 120  # health interval 1 s, threshold 1: marked in seconds (bound: a hang)
        while time.monotonic() < deadline:
            health = {w["url"]: w["is_healthy"] for w in router_workers(gw)}
            if health.get(victim) is False:
                break
            time.sleep(0.2)
        assert health.get(victim) is False, health
        before = served_counts(gw)
        codes = burst(gw.gateway, n=20)
        assert codes == [200] * 20
        after = served_counts(gw)
        assert after["gpu-a"] - before["gpu-a"] == 20
    finally:
        container.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(w["is_healthy"] for w in router_workers(gw)):
            break
        time.sleep(0.5)
    assert all(w["is_healthy"] for w in router_workers(gw))


def test_module_removes_a_worker_with_requests_in_flight(gw: GatewayFleet) -> None:
    """8 clients send requests (0.3 s each) without a pause, bounded to 1600, while gateway_workers removes gpu-b:
    the removal happens with requests in flight on it; every request succeeds; afterwards gpu-b gets none."""
    urls = gw.replica_urls()
    wfile = f"/opt/gpufleet/gateway/routers/{NAME}/workers"
    stop, codes, lock = threading.Event(), [], threading.Lock()

    def client_loop(c: int) -> None:
        with httpx.Client() as client:
            for i in range(200):  # bounded; stopped as soon as the removal has been watched
                if stop.is_set():
                    return
                code = complete(gw.gateway, c * 100 + i, client)
                with lock:
                    codes.append(code)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    try:
        # Until a request is seen in flight on gpu-b (the deadline only ends a hung test: a loaded machine is slow).
        deadline, in_flight = time.monotonic() + 120, 0
        while time.monotonic() < deadline and not in_flight and any(t.is_alive() for t in threads):
            in_flight = running(urls["gpu-b"])
            time.sleep(0.02)
        assert in_flight > 0
        res = module(gw, {"router_url": gw.gateway, "remove": [urls["gpu-b"]], "workers_file": wfile})
        with lock:
            sent_at_removal = len(codes)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(codes) < sent_at_removal + 16 and any(t.is_alive() for t in threads):
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert codes and all(c == 200 for c in codes), codes
    before = served_counts(gw)
    assert burst(gw.gateway, n=20) == [200] * 20
    after = served_counts(gw)
    assert after["gpu-b"] == before["gpu-b"] and after["gpu-a"] - before["gpu-a"] == 20
    assert res.get("changed") is True, res
    assert res["removed"] == [urls["gpu-b"]] and res["workers"] == [urls["gpu-a"]]
    assert gw.sim.in_host("gpu-a", "cat", wfile).stdout.split() == [urls["gpu-a"]]
    again = module(gw, {"router_url": gw.gateway, "remove": [urls["gpu-b"]], "workers_file": wfile})
    assert again["changed"] is False, again
    back = module(gw, {"router_url": gw.gateway, "add": [urls["gpu-b"]], "workers_file": wfile})
    assert back["changed"] is True and back["added"] == [urls["gpu-b"]]
    assert sorted(w["url"] for w in router_workers(gw)) == sorted(urls.values())


def test_killed_router_comes_back_with_its_workers(gw: GatewayFleet) -> None:
    """The supervisor starts the router again; the launcher adds the workers file's URLs once it answers."""
    supervisor = gw.sim.in_host("gpu-a", "cat", f"/run/gpufleet-gateway-{NAME}.pid").stdout.strip()
    ours = gw.sim.in_host("gpu-a", "pgrep", "-P", supervisor).stdout.split()  # the router (its only child)
    assert len(ours) == 1, (supervisor, ours)
    gw.sim.in_host("gpu-a", "kill", "-9", ours[0])
    want = sorted(gw.replica_urls().values())
    deadline, got = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        try:
            got = sorted(w["url"] for w in router_workers(gw))
            if got == want:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    assert got == want
    assert burst(gw.gateway, n=10) == [200] * 10


def test_status_shows_the_gateway(gw: GatewayFleet) -> None:
    proc = gw.play("status.yml")
    assert proc.returncode == 0, proc.stdout[-4000:]
    status = json.loads((gw.artifacts / "gateway-status.json").read_text())
    gws = status.get("gateways")
    assert gws, status.keys()
    g = gws[0]
    assert g["deployment"] == NAME and g["up"] is True
    assert sorted(w["url"] for w in g["workers"]) == sorted(gw.replica_urls().values())
    assert all(w["healthy"] for w in g["workers"])
    metrics = httpx.get(f"http://{gw.sim.address('gpu-a')}:{GW_PORT + 1000}/metrics", timeout=5).text
    assert "vllm_router_worker_health" in metrics


def test_monitoring_scrapes_the_routers(gw: GatewayFleet, tmp_path: Path) -> None:
    prom = tmp_path / "prometheus"
    proc = gw.play(
        "monitoring.yml",
        "-e",
        "monitoring_gateway=true",
        "-e",
        f"monitoring_prometheus_dir={prom}",
        "-e",
        f"monitoring_dashboards_dir={tmp_path / 'dashboards'}",
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    config = yaml.safe_load((prom / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    static = jobs["gpufleet-gateway"]["static_configs"]
    assert static == [
        {"targets": [f"{gw.sim.address('gpu-a')}:{GW_PORT + 1000}"], "labels": {"deployment": NAME, "gateway": "gpu-a"}}
    ]


def test_admin_guard_refuses_the_worker_api_to_clients(gw: GatewayFleet) -> None:
    """The admin guard (docs/gateway.md, "The admin API"; on by default): vllm-router listens on loopback and HAProxy
    on the gateway port. From the controller, a client that is none of the fleet's hosts, adding or removing a worker
    gets 403 and changes nothing, while the OpenAI API and the listings pass; from a GPU host (where fleet_apply drains
    replicas) gateway_workers removes and adds a worker through the same port."""
    urls = gw.replica_urls()
    args = gw.sim.in_host("gpu-a", "cat", f"/opt/gpufleet/gateway/routers/{NAME}/router.args").stdout.split()
    assert "--host=127.0.0.1" in args and f"--port={GW_PORT + 2000}" in args, args
    before = sorted(w["url"] for w in router_workers(gw))
    assert before == sorted(urls.values())
    with httpx.Client(timeout=10) as client:
        for path in ("/add_worker?url=http://10.213.37.1:9", f"/remove_worker?url={urls['gpu-b']}", "/flush_cache"):
            r = client.post(gw.gateway + path)
            assert r.status_code == 403, (path, r.status_code, r.text[:200])
        assert client.post(gw.gateway + "/workers", json={"url": "http://10.213.37.1:9"}).status_code == 403
    assert sorted(w["url"] for w in router_workers(gw)) == before
    assert burst(gw.gateway, n=8) == [200] * 8
    # The fleet's own path: gateway_workers on a GPU host, through the gateway port.
    out = gw.sim.ansible("gpu-b", "gpufleet.vllm.gateway_workers",
                         json.dumps({"router_url": gw.gateway, "remove": [urls["gpu-b"]]}))["gpu-b"]  # fmt: skip
    assert out.get("changed") is True and out["workers"] == [urls["gpu-a"]], out
    back = gw.sim.ansible("gpu-b", "gpufleet.vllm.gateway_workers",
                          json.dumps({"router_url": gw.gateway, "add": [urls["gpu-b"]]}))["gpu-b"]  # fmt: skip
    assert back.get("changed") is True and sorted(back["workers"]) == before, back


def test_a_request_through_the_gateway_wakes_a_paused_replica(gw: GatewayFleet) -> None:
    """Issue #17 item 3 through the gateway: the replicas listen on 127.0.0.1 (sleep mode) and the replica guard on
    each host's address. From the controller (another network namespace) vLLM's dev endpoints on the hosts' addresses
    get 403; pause.yml puts the replicas to sleep; a request through the gateway is forwarded through the guard and
    held by the sleeping replica until one tick of the node agent on its host wakes it (woken); it succeeds."""
    urls = gw.replica_urls()
    with httpx.Client(timeout=10) as client:
        for url in urls.values():
            for path in ("/sleep?level=1", "/wake_up", "/collective_rpc"):
                assert client.post(url + path).status_code == 403, (url, path)
            assert client.get(url + "/is_sleeping").status_code == 403
            assert client.get(url + "/health").status_code == 200

    def sleeping(host: str) -> bool:
        out = gw.sim.in_host(host, "curl", "-sf", f"http://127.0.0.1:{PORT}/is_sleeping")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["is_sleeping"]

    proc = gw.play("pause.yml", "-e", f"deployment={NAME}")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert all(sleeping(h) for h in HOSTS)

    def waiting(url: str) -> float:
        text = httpx.get(url + "/metrics", timeout=5).text  # /metrics passes the guard (Prometheus scrapes it)
        return sum(
            float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("vllm:num_requests_waiting")
        )

    state = f"/tmp/gpufleet-gw-agent-{NAME}"
    with httpx.Client() as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(complete, gw.gateway, 0, client)
        deadline, host = time.monotonic() + 60, None
        while host is None:  # the router chose one replica: vLLM (0.16+) holds the request there while it sleeps
            host = next((h for h, u in urls.items() if waiting(u) >= 1), None)
            assert host or (time.monotonic() < deadline and not sent.done()), "the request is not waiting at a replica"
            time.sleep(0.1)
        tick = gw.sim.in_host(
            host, "env", f"PYTHONPATH={ROOT / '.build' / 'collections'}", str(ROOT / ".venv" / "bin" / "python"),
            "-m", MODULE, "--once", "--port", "0", "--state-dir", state, "--names", NAME, timeout=120,
        )  # fmt: skip
        assert tick.returncode == 0, tick.stdout + tick.stderr
        assert sent.result(timeout=60) == 200
    events = gw.sim.in_host(host, "cat", f"{state}/events.jsonl").stdout.splitlines()
    gw.sim.in_host(host, "rm", "-rf", state)
    woken = [e for e in map(json.loads, events) if e["event"] == "woken"]
    assert len(woken) == 1 and woken[0]["container"].startswith(f"gpufleet-{NAME}-"), events
    assert woken[0]["reason"] == "request" and woken[0]["waiting"] >= 1, events
    assert not sleeping(host)


def test_a_converge_without_sleep_mode_replicas_stops_the_replica_guard(gw: GatewayFleet) -> None:
    """The guard of an earlier run (docs/node_agent.md, "A request to a paused replica"): once no sleep-mode replica is
    planned on a host, the next converge stops its HAProxy and removes its configuration. Nothing of this run asks for
    a guard; the converge finds the old one from the host's facts (fleet_apply state=gathered,
    replica_guard_config_exists). Here the deployment is no longer declared and pruned (gpufleet_prune=true), its
    gateway port still pinned; the converge after that has nothing to do for the guards (the include is skipped)."""
    assert {h: guard(gw, h) for h in HOSTS} == {h: (True, True) for h in HOSTS}
    assert gw.sim.in_host("gpu-a", "pgrep", "-f", "/opt/gpufleet/gateway/haproxy.cfg").returncode == 0
    gw.write([])
    proc = gw.play("converge.yml", "-e", "gpufleet_prune=true", timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert not gw.managed(NAME), "the pruned deployment's replicas are still there"
    assert {h: guard(gw, h) for h in HOSTS} == {h: (False, False) for h in HOSTS}, proc.stdout[-4000:]
    # Its gateway port is still pinned in the inventory (gpufleet_gateway_ports): its router goes, with a warning
    # that names the entry, and the converge does not fail at the gateway after the replicas are gone.
    assert gw.sim.in_host("gpu-a", "test", "-e", f"/opt/gpufleet/gateway/routers/{NAME}").returncode == 1
    # ... and the admin guard's HAProxy, with no router left to guard, stops (it refuses a configuration without one)
    assert gw.sim.in_host("gpu-a", "pgrep", "-f", "/opt/gpufleet/gateway/haproxy.cfg").returncode == 1
    assert f"not in the inventory's deployments: {NAME}" in " ".join(proc.stdout.split()), proc.stdout[-4000:]
    again = gw.play("converge.yml", "-e", "gpufleet_prune=true", timeout=900)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "replica_guard_run.yml" not in again.stdout, again.stdout[-4000:]
    assert all(r["changed"] == 0 for h, r in recap(again.stdout).items() if h in HOSTS), again.stdout[-4000:]
