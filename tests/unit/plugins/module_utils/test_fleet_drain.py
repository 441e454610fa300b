"""Drain during a rollout (_fleet/drain.py) and its use by fleet_apply: a replica leaves its deployment's routers
before its container stops and joins them again after the gate; a surge joins before the replica leaves; check mode
and unchanged replicas touch no router; a router that refuses a surge fails the surge (the replica is untouched); the
Ray step drains a multi-host replica's server it replaces or removes (its new server joins after its gate), and so
does a rolling one's wave (its old server joins again after a rollback)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as labels
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import apply as fleet_apply
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import ray, ray_wave
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.apply import apply_host
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.drain import (
    Gateways,
    in_flight,
    routers_by_deployment,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.payload import fleet_plan

from .test_fleet_apply import model_dir, params, replica
from .test_fleet_ray import big, hosts

ROUTER = "http://10.0.0.5:30000"


class FakeRouter:
    """A router's worker API in memory; every call is logged in ``log`` (shared with the engine's calls)."""

    def __init__(self, url: str, log: list[str], workers: list[str], refuse: tuple[str, ...] = ()) -> None:
        self.url, self.log, self.set, self.refuse = url, log, list(workers), refuse

    def list_workers(self) -> list[str]:
        return sorted(self.set)

    def remove_worker(self, url: str) -> None:
        self.log.append(f"router remove {url}")
        self.set.remove(url)

    def add_worker(self, url: str) -> None:
        if url in self.refuse:
            raise GpufleetError(f"did not add {url}", failure_class="gateway_worker_unhealthy")
        self.log.append(f"router add {url}")
        self.set.append(url)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_in_flight_sums_running_and_waiting() -> None:
    text = (
        "# HELP vllm:num_requests_running x\n"
        'vllm:num_requests_running{model_name="m"} 2.0\n'
        'vllm:num_requests_waiting{model_name="m"} 1.0\n'
        'vllm:num_requests_running_total{model_name="m"} 9.0\n'
        "vllm:num_requests_waiting 3\n"
    )
    assert in_flight(text) == 6.0
    assert in_flight("") == 0.0


def test_routers_by_deployment_skips_routers_that_are_down() -> None:
    found = [
        {"deployment": "chat", "url": ROUTER, "up": True, "workers": []},
        {"deployment": "chat", "url": "http://10.0.0.6:30000", "up": True},
        {"deployment": "emb", "url": "http://10.0.0.5:30001", "up": False},
        {"deployment": "chat", "url": ROUTER, "up": True},
    ]
    assert routers_by_deployment(found) == {"chat": [ROUTER, "http://10.0.0.6:30000"]}


def gateways(log: list[str], sets: dict[str, list[str]], idle: list[float | None], **kw: Any) -> Gateways:
    clock, readings = Clock(), iter(idle)
    routers = {u: FakeRouter(u, log, list(w), kw.pop("refuse", ())) for u, w in sets.items()}
    return Gateways(
        [{"deployment": "chat", "url": u, "up": True} for u in sets],
        "10.0.0.11",
        client=lambda url, **_kw: routers[url],
        idle=lambda base: next(readings, 0),
        clock=clock,
        sleep=clock.sleep,
        **kw,
    )


def test_leave_waits_for_the_requests_in_flight_then_join_puts_it_back() -> None:
    log: list[str] = []
    me, other = "http://10.0.0.11:8000", "http://10.0.0.12:8000"
    gw = gateways(log, {ROUTER: [me, other], "http://10.0.0.6:30000": [other]}, idle=[3, 1, 0, 2, 0, 0])
    assert gw.worker(8000) == me
    actions: list[str] = []
    left = gw.leave("chat", me, "http://127.0.0.1:8000", actions)
    assert [r.url for r in left] == [ROUTER]  # only the router that listed it
    assert log == [f"router remove {me}"]
    assert actions[-1].startswith(f"gateway: {me} drained in 1.0 s")  # 6 readings, 5 polls, two zeros in a row
    gw.join("chat", left, me, actions)
    assert log[-1] == f"router add {me}" and left[0].list_workers() == sorted([me, other])


def test_drain_timeout_warns_and_goes_on() -> None:
    warnings: list[str] = []
    me = "http://10.0.0.11:8000"
    gw = gateways([], {ROUTER: [me]}, idle=[1] * 1000, drain_timeout=5, warn=warnings.append)
    actions: list[str] = []
    assert len(gw.leave("chat", me, "http://127.0.0.1:8000", actions)) == 1
    assert "after the drain timeout (5 s)" in actions[-1] and "drain_timeout" in warnings[0]


def test_rejoin_refused_is_a_warning_join_refused_raises() -> None:
    warnings: list[str] = []
    me = "http://10.0.0.11:8000"
    gw = gateways([], {ROUTER: []}, idle=[], refuse=(me,), warn=warnings.append)
    gw.rejoin("chat", gw.routers("chat"), me, [])
    assert "did not join" in warnings[0]
    with pytest.raises(GpufleetError, match="did not add"):
        gw.join("chat", gw.routers("chat"), me, [])


# ---------------------------------------------------------------------------------------------- through fleet_apply
@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    model_dir(tmp_path, "chat")
    return tmp_path


def routed(
    monkeypatch: pytest.MonkeyPatch, log: list[str], workers: list[str], refuse: tuple[str, ...] = ()
) -> FakeRouter:
    router = FakeRouter(ROUTER, log, workers, refuse)
    monkeypatch.setattr(
        fleet_apply,
        "Gateways",
        functools.partial(Gateways, client=lambda url, **_kw: router, idle=lambda base: 0, sleep=lambda s: None),
    )
    return router


def gw_params(tmp: Path, reps: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return params(tmp, reps, gateways=[{"deployment": "chat", "url": ROUTER, "up": True}], **kw)


def test_in_place_replacement_leaves_the_router_before_the_stop_and_joins_after_the_gate(
    tmp: Path, fake_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    me, other = "http://10.0.0.7:8000", "http://10.0.0.8:8000"
    router = routed(monkeypatch, fake_runtime.calls, [me, other])
    reps = [replica(tmp, "chat", 0, 8000)]
    apply_host(gw_params(tmp, reps), runtime=fake_runtime)
    assert not [c for c in fake_runtime.calls if c.startswith("router")]  # a new replica: nothing to drain
    fake_runtime.calls.clear()
    # Unchanged: no router call, no engine call.
    out, errors = apply_host(gw_params(tmp, reps), runtime=fake_runtime)
    assert errors == [] and out["changed"] is False and fake_runtime.calls == []
    # Check mode of a change: the router is not touched.
    reps[0]["container"]["max_model_len"] = 4096
    apply_host(gw_params(tmp, reps), check_mode=True, runtime=fake_runtime)
    assert fake_runtime.calls == [] and router.list_workers() == [me, other]
    out, errors = apply_host(gw_params(tmp, reps), runtime=fake_runtime)
    assert errors == []
    calls = fake_runtime.calls
    assert calls.index(f"router remove {me}") < calls.index("stop") < calls.index("start")
    assert calls.index("start") < calls.index(f"router add {me}")
    assert router.list_workers() == [me, other]
    actions = out["records"][0]["actions"]
    assert actions[0] == f"gateway: {me} left {ROUTER}" and actions[-1] == f"gateway: {me} joined {ROUTER}"


def test_failed_replacement_rejoins_once_the_old_container_serves_again(
    tmp: Path, fake_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = "http://10.0.0.7:8000"
    router = routed(monkeypatch, fake_runtime.calls, [me])
    reps = [replica(tmp, "chat", 0, 8000)]
    apply_host(gw_params(tmp, reps), runtime=fake_runtime)
    reps[0]["container"]["env"] = {"FAIL": "1"}
    out, errors = apply_host(gw_params(tmp, reps), runtime=fake_runtime)
    assert out["records"][0]["rolled_back"] is True and len(errors) == 1
    calls = fake_runtime.calls
    assert calls.index(f"router remove {me}") < calls.index("stop") < calls.index(f"router add {me}")
    assert router.list_workers() == [me]


def removal(name: str, port: int, **kw: Any) -> dict[str, Any]:
    dep, index = name.rsplit("-", 1)
    return {"deployment": dep, "replica": int(index), "name": name, "host": "h", "gpus": [], "port": port, **kw}


def test_a_removed_replica_leaves_the_router_and_drains_before_its_container_stops(
    tmp: Path, fake_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scale-down, a move to another host or ``state: absent`` (a removal of the plan) drains like a replacement:
    the replica leaves the routers that list it, its requests in flight finish, then its container stops."""
    me, gone = "http://10.0.0.7:8000", "http://10.0.0.7:8001"
    router = routed(monkeypatch, fake_runtime.calls, [me, gone])
    reps = [replica(tmp, "chat", 0, 8000), replica(tmp, "chat", 1, 8001)]
    apply_host(gw_params(tmp, reps), runtime=fake_runtime)
    fake_runtime.calls.clear()
    # Check mode: no router call, nothing stops.
    apply_host(gw_params(tmp, reps[:1], removals=[removal("chat-1", 8001)]), check_mode=True, runtime=fake_runtime)
    assert fake_runtime.calls == [] and router.list_workers() == [me, gone]
    out, errors = apply_host(gw_params(tmp, reps[:1], removals=[removal("chat-1", 8001)]), runtime=fake_runtime)
    assert errors == []
    c = fake_runtime.calls
    assert c[0] == f"router remove {gone}" and c.index(f"router remove {gone}") < c.index("stop") < c.index("remove")
    assert router.list_workers() == [me] and f"router remove {me}" not in c  # the kept replica stays
    rec = out["records"][0]
    assert rec["kind"] == "remove" and rec["name"] == "chat-1" and rec["changed"] is True
    assert rec["actions"][:2] == [f"gateway: {gone} left {ROUTER}", f"gateway: {gone} drained in 0.0 s"]
    # Removing it again (already gone, not listed): no router call.
    fake_runtime.calls.clear()
    apply_host(gw_params(tmp, reps[:1], removals=[removal("chat-1", 8001)]), runtime=fake_runtime)
    assert not [x for x in fake_runtime.calls if x.startswith("router")]


def test_a_removal_waits_for_its_requests_in_flight_and_a_ray_worker_is_not_drained(
    tmp: Path, fake_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    me, gone = "http://10.0.0.7:8000", "http://10.0.0.7:8001"
    log: list[str] = []
    router = FakeRouter(ROUTER, log, [me, gone])
    clock, readings = Clock(), iter([2, 1, 0, 0])
    seen: list[str] = []

    def idle(base: str) -> float:
        seen.append(base)
        log.append("in flight?")
        return next(readings, 0)

    monkeypatch.setattr(
        fleet_apply,
        "Gateways",
        functools.partial(Gateways, client=lambda url, **_kw: router, idle=idle, clock=clock, sleep=clock.sleep),
    )
    reps = [replica(tmp, "chat", 0, 8000), replica(tmp, "chat", 1, 8001)]
    apply_host(gw_params(tmp, reps), runtime=fake_runtime)
    fake_runtime.calls = log
    out, errors = apply_host(gw_params(tmp, reps[:1], removals=[removal("chat-1", 8001)]), runtime=fake_runtime)
    assert errors == [] and seen == ["http://127.0.0.1:8001"] * 4  # its own /metrics, until two zeros in a row
    assert log.index(f"router remove {gone}") < log.index("in flight?") and log[-2:] == ["stop", "remove"]
    assert out["records"][0]["actions"][1] == f"gateway: {gone} drained in 0.6 s"
    # The worker part of a multi-host replica serves nothing itself: no router call for it.
    log.clear()
    router.set.append(gone)
    worker = removal("chat-1", 8001, ray_role="worker", ray_port=6400)
    apply_host(gw_params(tmp, reps[:1], removals=[worker]), runtime=fake_runtime)
    assert not [x for x in log if x.startswith("router")] and router.list_workers() == [me, gone]


def test_a_replica_replaced_on_another_port_leaves_on_its_old_port_and_joins_on_its_new_one(
    tmp: Path, fake_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica re-placed on its own host with another port (vllm_container replaces it in place): the router
    knows it by the port it runs on now."""
    old, new = "http://10.0.0.7:8000", "http://10.0.0.7:8005"
    router = routed(monkeypatch, fake_runtime.calls, [old])
    reps = [replica(tmp, "chat", 0, 8000)]
    apply_host(gw_params(tmp, reps), runtime=fake_runtime)
    fake_runtime.calls.clear()
    _out, errors = apply_host(gw_params(tmp, [replica(tmp, "chat", 0, 8005)]), runtime=fake_runtime)
    assert errors == []
    c = fake_runtime.calls
    assert c.index(f"router remove {old}") < c.index("stop") < c.index("start") < c.index(f"router add {new}")
    assert router.list_workers() == [new]


def surge_spec(tmp: Path) -> dict[str, Any]:
    spec = replica(tmp, "chat", 0, 8000)
    spec["container"]["gpus"] = ["0"]
    spec["rollout"] = {"wave": 1, "mode": "surge", "surge_port": 8001, "surge_gpus": [1]}
    return spec


def test_surge_joins_before_the_replica_leaves_and_leaves_before_it_is_removed(
    tmp: Path, fake_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    me, surge = "http://10.0.0.7:8000", "http://10.0.0.7:8001"
    router = routed(monkeypatch, fake_runtime.calls, [me])
    reps = [replica(tmp, "chat", 0, 8000)]
    reps[0]["container"]["gpus"] = ["0"]
    apply_host(gw_params(tmp, reps), runtime=fake_runtime)
    fake_runtime.calls.clear()
    spec = surge_spec(tmp)
    spec["container"]["max_model_len"] = 4096
    out, errors = apply_host(gw_params(tmp, [spec], only=["chat-0"]), runtime=fake_runtime)
    assert errors == [] and out["records"][0]["changed"] is True, errors
    c = fake_runtime.calls
    order = [f"router add {surge}", f"router remove {me}", f"router add {me}", f"router remove {surge}"]
    assert [x for x in c if x.startswith("router")] == order
    assert c.index(f"router remove {me}") < c.index("stop")  # the old replica stops only after it left
    assert c.index(f"router remove {surge}") < len(c) - 1 - c[::-1].index("remove")  # the surge leaves, then goes
    assert router.list_workers() == [me]


def test_surge_the_router_refuses_fails_and_the_replica_is_untouched(
    tmp: Path, fake_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    me, surge = "http://10.0.0.7:8000", "http://10.0.0.7:8001"
    router = routed(monkeypatch, fake_runtime.calls, [me], refuse=(surge,))
    reps = [replica(tmp, "chat", 0, 8000)]
    reps[0]["container"]["gpus"] = ["0"]
    apply_host(gw_params(tmp, reps), runtime=fake_runtime)
    before = {c["name"]: cid for cid, c in fake_runtime.c.items()}
    spec = surge_spec(tmp)
    spec["container"]["max_model_len"] = 4096
    out, errors = apply_host(gw_params(tmp, [spec], only=["chat-0"]), runtime=fake_runtime)
    rec = out["records"][0]
    assert (
        len(errors) == 1 and rec["failed"] is True and rec["rolled_back"] is True and "was not touched" in rec["hint"]
    )
    assert router.list_workers() == [me]
    assert {c["name"]: cid for cid, c in fake_runtime.c.items()} == before  # surge removed, replica as it was


def test_a_wave_that_replaced_replicas_collects_old_revisions(
    tmp: Path, fake_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollout wave's model sync is a no-op that runs before the wave replaces the old containers; when the wave
    replaced a replica, model_sync runs once more afterwards (it removes what no container uses any more)."""
    calls: list[str] = []
    real = fleet_apply.sync

    def counting(params: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
        calls.append(params["name"])
        return real(params, check_mode=check_mode)

    monkeypatch.setattr(fleet_apply, "sync", counting)
    reps = [replica(tmp, "chat", 0, 8000)]
    apply_host(params(tmp, reps), runtime=fake_runtime)  # first install: synced, then collected
    calls.clear()
    apply_host(params(tmp, reps, only=["chat-0"]), runtime=fake_runtime)  # nothing replaced: one sync
    assert calls == ["chat"]
    reps[0]["container"]["max_model_len"] = 4096
    out, errors = apply_host(params(tmp, reps, only=["chat-0"]), runtime=fake_runtime)
    assert errors == [] and out["records"][0]["changed"] is True
    assert calls == ["chat", "chat", "chat"]  # the wave's sync, then the collection after the replacement


def test_the_ray_step_drains_a_head_server_it_replaces_or_removes_and_the_rollout_joins_it_after_its_gate(
    tmp: Path, fake_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multi-host replica's server goes with its cluster in the Ray step (fleet_apply state=ray_nodes, before the
    batches): it leaves its gateways and its requests in flight finish before it stops, as any replaced or removed
    replica; the rollout's new server (no container to replace any more) joins them again only after its gate."""
    me = "http://10.0.0.7:8000"
    router = routed(monkeypatch, fake_runtime.calls, [me])
    monkeypatch.setattr(ray.ray_spec, "HOST_DIR", str(tmp / "ray"))
    (head,) = fleet_plan(hosts(), [{**big(), "name": "chat", "model": str(tmp / "models" / "chat")}])["ray"]["gpu-a"]
    server = replica(tmp, "chat", 0, 8000, labels={labels.RAY_HOSTS: "gpu-a,gpu-b"})

    def ray_step(node: dict[str, Any], removals: list[dict[str, Any]] = ()) -> dict[str, Any]:
        with monkeypatch.context() as m:  # the node's model and image: not what this test is about
            m.setattr(ray.HostApply, "sync_model", lambda self, spec: {"changed": False})
            m.setattr(ray.HostApply, "ensure_image", lambda self, *a: {"image": "img:1", "image_id": "sha256:1"})
            out, errors = ray.apply_nodes(
                gw_params(tmp, [], ray_nodes=[node] if node else [], removals=list(removals)), runtime=fake_runtime
            )
        assert errors == []
        return out

    ray_step(head)
    apply_host(gw_params(tmp, [server]), runtime=fake_runtime)  # the rollout starts the server (listed already)
    assert not [c for c in fake_runtime.calls if c.startswith("router")]
    fake_runtime.calls.clear()

    # The head's declaration changed: a new cluster. The server leaves the router before anything stops.
    out = ray_step({**head, "env": {"NCCL_DEBUG": "INFO"}})
    c = fake_runtime.calls
    assert c[0] == f"router remove {me}" and c.index(f"router remove {me}") < c.index("stop")
    assert router.list_workers() == [] and fake_runtime.container("gpufleet-chat-0") is None
    assert out["ray_nodes"][0]["actions"] == [
        f"gateway: {me} left {ROUTER}",
        f"gateway: {me} drained in 0.0 s",
        "remove gpufleet-chat-0 (its Ray head is replaced)",
        "replace gpufleet-chat-0-ray-head",
    ]
    # The rollout creates the server again: it joins the router once it passed its gate.
    fake_runtime.calls.clear()
    res, errors = apply_host(gw_params(tmp, [server]), runtime=fake_runtime)
    assert errors == [] and fake_runtime.calls.index("start") < fake_runtime.calls.index(f"router add {me}")
    assert router.list_workers() == [me] and res["records"][0]["actions"][-1] == f"gateway: {me} joined {ROUTER}"
    # Unchanged: no router call.
    fake_runtime.calls.clear()
    apply_host(gw_params(tmp, [server]), runtime=fake_runtime)
    assert not [x for x in fake_runtime.calls if x.startswith("router")]

    # The replica is removed (state: absent, a move): the Ray removal drains the server before it stops.
    gone = {"deployment": "chat", "replica": 0, "name": "chat-0", "host": "h", "port": 8000, "ray_role": "head"}
    out = ray_step({}, [gone])
    c = fake_runtime.calls
    assert c.index(f"router remove {me}") < c.index("stop") and router.list_workers() == []
    assert out["records"][0]["actions"][0] == f"gateway: {me} left {ROUTER}"
    assert (
        fake_runtime.container("gpufleet-chat-0") is None and fake_runtime.container(f"gpufleet-{head['name']}") is None
    )


def test_a_rolling_ray_replica_leaves_the_router_in_its_wave_and_its_old_server_joins_again_after_a_rollback(
    tmp: Path, fake_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multi-host replica that rolls (docs/ray.md, Rolling updates): the Ray play leaves it in the router; in its
    wave the server leaves the router and its requests finish before it stops (fleet_apply state=ray_drain), the
    nodes are swapped; after a failed wave its old cluster comes back and the old server joins the router again once
    it serves (state=ray_settle, ray_restore)."""
    me = "http://10.0.0.7:8000"
    router = routed(monkeypatch, fake_runtime.calls, [me])
    monkeypatch.setattr(ray.ray_spec, "HOST_DIR", str(tmp / "ray"))
    monkeypatch.setattr(ray.HostApply, "sync_model", lambda self, spec: {"changed": False})
    monkeypatch.setattr(ray.HostApply, "ensure_image", lambda self, *a: {"image": "img:1", "image_id": "sha256:1"})
    (head,) = fleet_plan(hosts(), [{**big(), "name": "chat", "model": str(tmp / "models" / "chat")}])["ray"]["gpu-a"]
    server = replica(tmp, "chat", 0, 8000, labels={labels.RAY_HOSTS: "gpu-a,gpu-b"})
    ray.apply_nodes(gw_params(tmp, [], ray_nodes=[head]), runtime=fake_runtime)
    apply_host(gw_params(tmp, [server]), runtime=fake_runtime)
    old = fake_runtime.container("gpufleet-chat-0").id
    rolling = {**head, "env": {"NCCL_DEBUG": "INFO"}, "wave": 1}

    fake_runtime.calls.clear()
    ray.apply_nodes(gw_params(tmp, [], ray_nodes=[rolling]), runtime=fake_runtime)  # the Ray play: deferred
    assert router.list_workers() == [me] and fake_runtime.container("gpufleet-chat-0").running
    assert not [c for c in fake_runtime.calls if c.startswith("router")]

    out, errors = ray_wave.drain(gw_params(tmp, [], ray_nodes=[rolling]), runtime=fake_runtime)
    c = fake_runtime.calls
    assert errors == [] and c.index(f"router remove {me}") < c.index("stop") and router.list_workers() == []
    assert out["ray_nodes"][0]["actions"][:2] == [f"gateway: {me} left {ROUTER}", f"gateway: {me} drained in 0.0 s"]
    assert not fake_runtime.container("gpufleet-chat-0").running  # stopped, kept for the rollback
    assert ray_wave.swap(gw_params(tmp, [], ray_nodes=[rolling]), runtime=fake_runtime)[1] == []

    # The new server failed its gate (vllm_container put the stopped old one back under its name).
    failed = {"kind": "replica", "name": "chat-0", "deployment": "chat", "failed": True, "hint": "smoke_failed"}
    (settle,) = ray_wave.wave_nodes([rolling], {"index": 1}, "settle", [{"records": [failed]}])
    ray_wave.settle(gw_params(tmp, [], ray_nodes=[settle]), runtime=fake_runtime)
    monkeypatch.setattr(ray_wave, "cluster_ready", lambda rt, n, timeout, clock, sleep: (True, "2 Ray nodes"))
    fake_runtime.calls.clear()
    res, errors = ray_wave.restore(gw_params(tmp, [], ray_nodes=[settle], address="10.0.0.7"), runtime=fake_runtime)
    c = fake_runtime.calls
    assert errors == [] and c.index("start") < c.index(f"router add {me}") and router.list_workers() == [me]
    assert fake_runtime.container("gpufleet-chat-0").id == old and fake_runtime.container("gpufleet-chat-0").running
    (rec,) = res["records"]
    assert rec["endpoint"] == me and rec["actions"][-1] == f"gateway: {me} joined {ROUTER}"
