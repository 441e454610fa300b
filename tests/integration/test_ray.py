"""A multi-host replica's Ray cluster on two simulated hosts, with real Ray (gpufleet/bed-vllm-ray, sim/images/ray.sh).

The Ray nodes are what _ray/spec.py declares (head on gpu-a, worker on gpu-b: the image's own `ray`, host network,
every port in one block, --num-gpus from the fake GPUs given), started by _ray/node.ensure through the docker adapter
(a second ensure keeps them); the head's server, with serve_settings, through the docker SDK. One cluster, checked
several ways:
- `ray status` in the head shows both nodes and the 4 GPUs (spec.cluster_ready reads Ray's real output);
- the stand-in server with --distributed-executor-backend ray and tensor_parallel_size 4 (2 GPUs on its own host)
  joins the cluster and serves from gpu-a; one asking for 6 GPUs is refused with vLLM's error;
- the worker's host lost (its container killed): the server dies with ActorDiedError (exit 1), a clear cause.

Then the converge itself (playbooks/converge.yml, role deployments, fleet_apply state=ray_nodes/ray_ready): one
TP=2 replica that no single host fits (reservations leave one GPU on gpu-a and one on gpu-b) is placed over both,
served through its cluster and through its gateway (real vllm-router on gpu-a, the replica its one worker), left
alone by a second converge, rolled (its nodes and server replaced in its wave: the server leaves the router before
it stops; an update that fails its gate brings the old cluster and server back, the same containers, serving, in the
router again; one that passes leaves new containers on both hosts, nothing aside, the new server in the router),
stopped with its Ray nodes by stop.yml state=stopped
(check mode first: nothing changes), shown stopped as one replica with both hosts by status.yml, started again (the
same containers) and serving after the next converge, and removed with every Ray node by state: absent.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.factory import get_runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import node as ray_node
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import ports, spec
from docker.types import DeviceRequest
from fixtures.gateway import add_gateway_host, ensure_wheelhouse, gateway_vars
from fixtures.hosts import SimFleet, recap
from fixtures.paths import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

ROOT = Path(__file__).resolve().parents[2]
BASE = ports.FIRST + 5 * ports.BLOCK  # a block no fleet test uses
SERVE_PORT = 8390
# A 2-core machine shared by other tests starts Ray's agents slowly: Ray's own start-up limits, raised (seconds).
SLOW_BED_ENV = {"RAY_agent_register_timeout_ms": "300000", "RAY_raylet_start_wait_time_s": "300"}
# The converged replica's env reaches its Ray nodes too: a 100 MB object store, not Ray's share of the machine.
RAY_ENV = {**SLOW_BED_ENV, "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": "100000000"}
WIDE_PORT = 8392
WIDE = ["gpufleet-wide-0", "gpufleet-wide-0-ray-head", "gpufleet-wide-0-ray-worker"]
GW_PORT = 30700  # the deployment's gateway (vllm-router on gpu-a); + 1000 and + 2000 too, below the ephemeral range


@pytest.fixture(scope="module")
def ray_image(sim_hosts) -> str:
    proc = subprocess.run(
        [str(ROOT / "sim" / "images" / "ray.sh"), "load", "gpu-a", "gpu-b"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"sim/images/ray.sh load failed:\n{proc.stderr[-3000:]}")
    return subprocess.run(
        [str(ROOT / "sim" / "images" / "ray.sh"), "ref"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def engines(sim_hosts, sim_fleet_lock) -> Iterator[dict[str, docker.DockerClient]]:
    clients = {h: docker.DockerClient(base_url=sim_hosts.docker_host(h)) for h in ("gpu-a", "gpu-b")}
    names = ["gpufleet-big-0-ray-head", "gpufleet-big-0-ray-worker", "gpufleet-big-0", "gpufleet-big-0-too-big", *WIDE]

    def clean() -> None:
        for client in clients.values():
            for name in names:
                try:
                    client.containers.get(name).remove(force=True)
                except docker.errors.NotFound:
                    pass
        for host in clients:
            subprocess.run(["rm", "-rf", str(ROOT / ".build" / "hosts" / host / "fs" / spec.HOST_DIR.lstrip("/"))])

    clean()
    yield clients
    clean()
    for client in clients.values():
        client.close()


def serve(client, image: str, name: str, model: Path, tp: int, settings: dict, port: int):
    return client.containers.run(
        image,
        name=name,
        command=["/model", "--port", str(port), "--tensor-parallel-size", str(tp), *settings["extra_args"]],
        environment={**settings["env"], **SLOW_BED_ENV},
        volumes={
            **{h: {"bind": c, "mode": m} for h, c, m in settings["mounts"]},
            str(model): {"bind": "/model", "mode": "ro"},
        },
        network_mode=settings["network"],
        ipc_mode=settings["ipc"],
        pid_mode=settings["pid"],
        device_requests=[DeviceRequest(device_ids=["0", "1"], capabilities=[["gpu"]])],
        detach=True,
    )


def listed(router: str) -> list[str] | None:
    """The router's workers (vllm-router's GET /list_workers, open to clients), or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"{router}/list_workers", timeout=5) as resp:
            return sorted(json.load(resp)["urls"])
    except (OSError, ValueError, KeyError):
        return None


class RouterWatch(threading.Thread):
    """The router's worker lists while the block runs, each change once, in order (every 0.2 s; bounded at 900 s)."""

    def __init__(self, router: str) -> None:
        super().__init__(daemon=True)
        self.router, self.done = router, threading.Event()
        self.seen: list[list[str]] = []

    def note(self, workers: list[str] | None) -> None:
        if workers is not None and self.seen[-1:] != [workers]:
            self.seen.append(workers)

    def run(self) -> None:
        deadline = time.monotonic() + 900
        while True:
            last = self.done.wait(0.2) or time.monotonic() > deadline
            self.note(listed(self.router))  # once more after the block ended: its last state
            if last:
                return

    def __enter__(self) -> RouterWatch:
        self.note(listed(self.router))
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def exited(container) -> int | None:
    container.reload()
    return container.attrs["State"]["ExitCode"] if container.status == "exited" else None


def test_two_host_cluster_serves_refuses_too_few_gpus_and_fails_on_a_lost_worker(sim_hosts, ray_image, engines):
    head_ip, worker_ip = sim_hosts.address("gpu-a"), sim_hosts.address("gpu-b")
    model = ROOT / ".build" / "ray-test-model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 2048}')
    # The object store: 100 MB, not Ray's share of the machine's memory twice over.
    common = {"deployment": "big", "replica": 0, "image": ray_image, "base": BASE, "gpus": ["0", "1"]}
    common.update(env=SLOW_BED_ENV, object_store_bytes=100_000_000)
    nodes = {
        "gpu-a": spec.node_spec(role="head", node_ip=head_ip, host="gpu-a", **common),
        "gpu-b": spec.node_spec(role="worker", node_ip=worker_ip, host="gpu-b", head_ip=head_ip, **common),
    }
    runtimes = {host: get_runtime("docker", sim_hosts.docker_host(host)) for host in nodes}
    for host, node in nodes.items():
        assert ray_node.ensure(runtimes[host], node)["action"] == "create"
    head = engines["gpu-a"].containers.get(nodes["gpu-a"].name)

    def cluster() -> str | None:
        if exited(head) is not None:
            pytest.fail(f"the Ray head exited:\n{head.logs(tail=30).decode()}")
        rc, out = head.exec_run(spec.status_argv(head_ip, BASE))
        text = out.decode("utf-8", "replace")
        return text if rc == 0 and spec.cluster_ready(text, nodes=2, gpus=4)[0] else None

    status = wait_for("the Ray cluster with 2 nodes and 4 GPUs", cluster)
    assert spec.parse_status(status) == {"nodes": 2, "gpus": 4.0, "gpus_used": 0.0}
    assert [ray_node.ensure(runtimes[h], n)["action"] for h, n in nodes.items()] == ["keep", "keep"]
    assert head.attrs["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 5}
    assert head.attrs["Config"]["Entrypoint"] == ["ray"] and head.attrs["HostConfig"]["NetworkMode"] == "host"

    settings = spec.serve_settings("big", 0, head_ip, BASE)
    server = serve(engines["gpu-a"], ray_image, "gpufleet-big-0", model, 4, settings, SERVE_PORT)
    url = f"http://{head_ip}:{SERVE_PORT}"

    def ready() -> bool:
        if exited(server) is not None:
            pytest.fail(f"the server exited:\n{server.logs(tail=40).decode()}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_for("the server on gpu-a serving over the cluster", ready)
    log = server.logs().decode()
    assert "Connected to Ray cluster" in log and "2 nodes, 4 GPUs" in log
    assert "Placement group of 4 GPUs on 2 Ray nodes" in log

    too_big = serve(engines["gpu-a"], ray_image, "gpufleet-big-0-too-big", model, 6, settings, SERVE_PORT + 1)
    wait_for("the 6-GPU server to exit", lambda: exited(too_big) is not None)
    assert exited(too_big) == 1
    assert "The number of required GPUs exceeds the total number of available GPUs" in too_big.logs().decode()
    assert failures.classify(too_big.logs().decode().splitlines(), 1)[0] == "ray_cluster_incomplete"

    engines["gpu-b"].containers.get(nodes["gpu-b"].name).kill()  # the worker's host is lost
    wait_for("the server to fail after its worker node died", lambda: exited(server) is not None)
    assert exited(server) == 1
    log = server.logs(tail=60).decode()
    assert "ActorDiedError" in log and "its node has died" in log and "EngineDeadError" in log
    assert failures.classify(log.splitlines(), 1)[0] == "ray_node_lost"


def wide(image: str, state: str = "present") -> dict:
    return {
        "name": "wide",
        "model": str(ROOT / ".build" / "fleet" / "models" / "tp-model"),
        "image": image,
        "tensor_parallel_size": 2,
        "distributed": "ray",
        "port": WIDE_PORT,
        "env": RAY_ENV,
        "state": state,
    }


def test_converge_of_a_two_host_replica_serves_stays_shows_one_row_and_removes_every_node(
    sim_hosts, ray_image, engines, tmp_path, request
):
    subprocess.run([str(ROOT / "sim" / "steps.d" / "70-fleet.sh"), "up"], check=True, capture_output=True)
    ensure_wheelhouse()
    fleet = SimFleet(sim_hosts, tmp_path, {"gpu-a": "docker", "gpu-b": "docker"})
    gateway = f"http://{sim_hosts.address('gpu-a')}:{GW_PORT}"

    def stop_gateway() -> subprocess.CompletedProcess[str] | None:
        if not running_gateway:  # stopped by the test already
            return None
        fleet.write_inventory([], **gateway_vars({}, gpufleet_gateway_state="stopped"))
        add_gateway_host(fleet.inventory / "hosts.yml", "gpu-a")
        proc = fleet.play("gateway.yml")
        sim_hosts.in_host("gpu-a", "rm", "-rf", "/opt/gpufleet/gateway/routers")
        running_gateway.clear()
        return proc

    running_gateway = [True]  # until stop_gateway ran (by the test, else at its end)
    request.addfinalizer(stop_gateway)

    def inventory(state: str, env: dict | None = None, with_gateway: bool = True) -> None:
        declared = {**wide(ray_image, state), **({"env": {**RAY_ENV, **env}} if env else {})}
        gw = gateway_vars({"wide": GW_PORT}) if with_gateway else {}
        fleet.write_inventory([declared], gpufleet_wait_timeout=300, **gw)
        if with_gateway:
            add_gateway_host(fleet.inventory / "hosts.yml", "gpu-a")
        (fleet.inventory / "host_vars").mkdir()
        for host, reserved in (("gpu-a", [1]), ("gpu-b", [1, 2, 3])):  # one free GPU on each: no host fits TP=2
            (fleet.inventory / "host_vars" / f"{host}.yml").write_text(f"gpufleet_gpu_reservations: {reserved}\n")

    def ours() -> dict[str, str]:
        return {c.name: c.id for client in engines.values() for c in client.containers.list(all=True) if c.name in WIDE}

    # The hosts to ourselves (the fleet lock is held): no managed server of another test, and stop.yml removes the
    # Ray nodes of the test above too (its head on gpu-a, its dead worker on gpu-b).
    fleet.write_inventory([])
    proc = fleet.play("stop.yml", "-e", "all=true", "-e", "state=absent")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert [
        c.name for e in engines.values() for c in e.containers.list(all=True, filters={"label": "gpufleet.ray-role"})
    ] == []

    inventory("present")
    proc = fleet.play("converge.yml", timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert all(r["ignored"] == 0 for r in recap(proc.stdout).values()), proc.stdout[-4000:]  # the Ray steps passed
    (row,) = fleet.summary()["deployments"]["wide"]["replicas"]
    assert row["host"] == "gpu-a" and row["endpoint"] == f"http://{sim_hosts.address('gpu-a')}:{WIDE_PORT}"

    def nodes(row: dict) -> list[tuple]:  # the summary's row lists every container of the replica, on every host
        return [(n["host"], n["role"], n["container"], n["gpus"], n["action"], n["status"]) for n in row["ray_nodes"]]

    assert row["hosts"] == ["gpu-a", "gpu-b"] and row["ray_nodes"][0]["ready"] is True, row
    assert listed(gateway) == [row["endpoint"]]  # the gateway play: the replica (its head's server) is the worker
    assert nodes(row) == [
        ("gpu-a", "head", WIDE[1], ["0"], "created", "changed"),
        ("gpu-b", "worker", WIDE[2], ["0"], "created", "changed"),
    ], row
    with urllib.request.urlopen(f"{row['endpoint']}/v1/models", timeout=10) as resp:
        assert resp.status == 200

    def serves(endpoint: str, via: str | None = None) -> bool:  # a real completion through the replica's cluster
        with urllib.request.urlopen(f"{endpoint}/v1/models", timeout=10) as resp:
            model = json.load(resp)["data"][0]["id"]
        body = json.dumps({"model": model, "prompt": "hi", "max_tokens": 1}).encode()
        req = urllib.request.Request(f"{via or endpoint}/v1/completions", body, {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status == 200 and bool(json.load(resp)["choices"])

    assert serves(row["endpoint"], via=gateway)  # through vllm-router
    server = engines["gpu-a"].containers.get("gpufleet-wide-0")
    log = server.logs().decode()
    assert "Connected to Ray cluster" in log and "Placement group of 2 GPUs on 2 Ray nodes" in log
    assert engines["gpu-b"].containers.get("gpufleet-wide-0-ray-worker").status == "running"
    assert "gpufleet-wide-0" not in {c.name for c in engines["gpu-b"].containers.list(all=True)}
    before = ours()
    assert set(before) == set(WIDE)

    proc = fleet.play("converge.yml", timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert all(r["changed"] == 0 and r["ignored"] == 0 for r in recap(proc.stdout).values()), proc.stdout[-4000:]
    assert ours() == before
    (row,) = fleet.summary()["deployments"]["wide"]["replicas"]
    assert row["status"] == "ok" and [n[4:] for n in nodes(row)] == [("unchanged", "ok")] * 2, row

    def states() -> dict[str, str]:
        return {n: engines["gpu-b" if n.endswith("worker") else "gpu-a"].containers.get(n).status for n in WIDE}

    def aside() -> list[str]:
        return [c.name for e in engines.values() for c in e.containers.list(all=True) if c.name.endswith("-previous")]

    # A rolling update whose new server fails its gate (the stand-in answers completions 500: the smoke request
    # fails). The Ray play leaves the old cluster serving (deferred to the replica's wave); the wave drains and
    # stops the server (it leaves the router first), sets both old nodes aside and starts new ones, the new server
    # fails (it never joins the router), and the old cluster and its server come back: the same containers, serving
    # again, in the router again, nothing left aside.
    inventory("present", {"STANDIN_FAIL": "completions"})
    with RouterWatch(gateway) as watch:
        proc = fleet.play("converge.yml", timeout=600)
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert watch.seen == [[row["endpoint"]], [], [row["endpoint"]]], watch.seen
    (row,) = fleet.summary()["deployments"]["wide"]["replicas"]
    assert row["status"] == "failed" and row["failure_class"] == "smoke_failed", row
    assert row["hint"].endswith("rolled back to the previous Ray cluster (serving again)"), row
    assert [n[4] for n in nodes(row)] == ["rolled back", "rolled back"], row
    assert ours() == before and aside() == [] and set(states().values()) == {"running"}
    assert serves(row["endpoint"]) and serves(row["endpoint"], via=gateway)

    # The same update without the fault: a new cluster (new containers on both hosts) under the new server.
    inventory("present", {"GPUFLEET_TEST_REVISION": "2"})
    with RouterWatch(gateway) as watch:
        proc = fleet.play("converge.yml", timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert watch.seen == [[row["endpoint"]], [], [row["endpoint"]]], watch.seen  # left, then the new server joined
    (row,) = fleet.summary()["deployments"]["wide"]["replicas"]
    assert row["status"] == "changed" and [n[4:] for n in nodes(row)] == [("replaced", "changed")] * 2, row
    after = ours()
    assert set(after) == set(WIDE) and not set(after.values()) & set(before.values()) and aside() == []
    assert serves(row["endpoint"]) and set(states().values()) == {"running"}
    assert serves(row["endpoint"], via=gateway)
    before = after

    # The gateway stopped (gateway_state: stopped), the rest without one.
    proc = stop_gateway()
    assert proc is not None and proc.returncode == 0, proc and proc.stdout[-3000:]
    assert listed(gateway) is None
    inventory("present", {"GPUFLEET_TEST_REVISION": "2"}, with_gateway=False)

    # stop.yml state=stopped by the replica's name: its server, then its Ray nodes (the head on gpu-a, the worker on
    # gpu-b: each host its own), stopped and kept; --check --diff first reports it and changes nothing.
    stop = ("stop.yml", "-e", "names=wide-0", "-e", "state=stopped")
    proc = fleet.play(*stop, "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert all(f"{n} (before)" in proc.stdout for n in WIDE), proc.stdout[-3000:]
    assert set(states().values()) == {"running"}
    proc = fleet.play(*stop)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert set(states().values()) == {"exited"} and ours() == before  # stopped, not removed

    proc = fleet.play("status.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = json.loads((fleet.artifacts / "status.json").read_text())
    (status,) = [r for r in report["rows"] if r["deployment"] == "wide"]
    assert status["name"] == "wide-0" and status["hosts"] == ["gpu-a", "gpu-b"]
    # stopped, not failed: the server's Ray driver exits 15 on the stop's SIGTERM, and the stop was asked for
    assert (status["state"], status["phase"], status["last_failure"]) == ("stopped", "stopped", None), status

    # The next converge starts the same nodes (not replaced), waits for the cluster, then the server serves again.
    proc = fleet.play("converge.yml", timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert all(r["ignored"] == 0 for r in recap(proc.stdout).values()), proc.stdout[-4000:]
    assert ours() == before and set(states().values()) == {"running"}
    (row,) = fleet.summary()["deployments"]["wide"]["replicas"]
    assert row["phase"] == "ready", row
    assert [n[4] for n in nodes(row)] == ["started", "started"], row  # the same nodes, started again
    with urllib.request.urlopen(f"{row['endpoint']}/v1/models", timeout=10) as resp:
        assert resp.status == 200

    inventory("absent", {"GPUFLEET_TEST_REVISION": "2"}, with_gateway=False)
    proc = fleet.play("converge.yml", timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert ours() == {}
