"""A multi-host replica's rolling update in its wave (_fleet/ray_wave.py, docs/ray.md "Rolling updates"): the plan
marks its nodes with their wave and the Ray play leaves the old cluster serving; the wave drains and stops the
server, sets the old nodes aside (kept as -previous) and starts new ones, then removes the old nodes when the replica
passed or brings them back, with the old server, when it failed. On the in-memory engine (fake_runtime) with a
driven clock; the real cluster is in tests/integration/test_ray.py."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as labels
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import info
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.readiness import Outcome
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import ray, ray_wave, summary
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.payload import fleet_plan
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import node as ray_node

from .test_fleet_ray import RayRuntime, big, head_node, hosts, params, reported

HEAD, WORKER = "gpufleet-big-0-ray-head", "gpufleet-big-0-ray-worker"


def rolled(first: dict[str, Any], deployments: list[dict[str, Any]], grown: dict[str, Any] | None = None) -> dict:
    """The plan of ``deployments`` over what ``first`` runs, its servers running with ``first``'s digests."""
    digests = {s["name"]: s["digest"] for specs in first["hosts"].values() for s in specs}
    running = [
        {**e, "state": "running", "plan_digest": digests[e["name"]]} if e.get("port") is not None else e
        for e in reported(first)
    ]
    return fleet_plan(grown or hosts(), deployments, running)


def test_the_plan_gives_every_node_of_a_rolling_replica_its_wave_and_max_unavailable_bounds_the_waves():
    four = hosts()  # 4 hosts of 2 GPUs: two replicas of 2 + 2
    for name, ip in (("gpu-c", "10.0.0.3"), ("gpu-d", "10.0.0.4")):
        gpus = [{**g, "uuid": g["uuid"].replace("gpu-a", name)} for g in four["gpu-a"]["gpus"]]
        four[name] = {**four["gpu-a"], "gpus": gpus, "address": ip, "models_root": f"/models/{name}"}
    two = {**big(), "replicas": 2}
    first = fleet_plan(four, [two])
    assert first["ray"]["gpu-a"] and all("wave" not in n for h in first["ray"].values() for n in h)
    again = rolled(first, [two], four)
    assert again["rollout"]["waves"] == [] and all("wave" not in n for h in again["ray"].values() for n in h)

    changed = rolled(first, [{**two, "env": {"NCCL_DEBUG": "INFO"}}], four)
    waves = [[(r["name"], r["mode"]) for r in w["replicas"]] for w in changed["rollout"]["waves"]]
    assert waves == [[("big-0", "in_place")], [("big-1", "in_place")]]  # auto max_unavailable 1: one at a time
    by_replica = {(n["host"], n["replica"]): n["wave"] for h in changed["ray"].values() for n in h}
    assert by_replica == {("gpu-a", 0): 1, ("gpu-b", 0): 1, ("gpu-c", 1): 2, ("gpu-d", 1): 2}

    both = rolled(first, [{**two, "env": {"NCCL_DEBUG": "INFO"}, "max_unavailable": 2}], four)
    assert [len(w["replicas"]) for w in both["rollout"]["waves"]] == [2]
    never = rolled(first, [{**two, "env": {"NCCL_DEBUG": "INFO"}, "max_unavailable": 0}], four)
    (error,) = never["errors"]
    assert (
        "cannot roll with max_unavailable 0: a multi-host replica (distributed: ray) is replaced in place"
        in (error["message"])
    )
    assert never["rollout"]["waves"] == [] and all("wave" not in n for h in never["ray"].values() for n in h)


def test_the_ray_play_leaves_a_rolling_replica_s_old_cluster_serving_until_its_wave(monkeypatch, tmp_path):
    rt, head = head_node(monkeypatch, tmp_path)
    ray.apply_nodes(params([head]), runtime=rt)
    old = rt.container(HEAD).id
    removed: list[str] = []
    monkeypatch.setattr(ray.HostApply, "_remove_container", lambda self, name: removed.append(name) or {})
    res, errors = ray.apply_nodes(params([{**head, "env": {"NCCL_DEBUG": "INFO"}, "wave": 1}]), runtime=rt)
    assert errors == [] and not res["changed"] and removed == []
    (entry,) = res["ray_nodes"]
    assert entry["action"] == "defer" and entry["actions"] == [f"replace {HEAD} in rollout wave 1"]
    assert rt.container(HEAD).id == old and rt.container(HEAD).running


def wave_hosts(monkeypatch, tmp_path) -> tuple[RayRuntime, dict[str, Any], dict[str, Any], list[str]]:
    """The old cluster of ``big`` (head and worker on one in-memory engine: the steps act by name) with its server
    running, the new declaration's nodes (wave 1), and a log of vllm_container's runs on the server."""
    rt, head = head_node(monkeypatch, tmp_path)
    plan = fleet_plan(hosts(), [{**big(), "model": str(tmp_path)}])
    (worker,) = plan["ray"]["gpu-b"]
    ray.apply_nodes(params([head, worker]), runtime=rt)
    rt.c["srv"] = {"name": "gpufleet-big-0", "status": "running", "labels": {}, "env": {}}
    calls: list[str] = []

    def converge(self, p):  # vllm_container state=stopped by name
        calls.append(f"{p['name']} {p['state']}")
        if not self.check_mode:
            rt.stop("gpufleet-big-0", 30)
        return {"changed": True, "actions": ["stop gpufleet-big-0"]}

    monkeypatch.setattr(ray.HostApply, "_converge", converge)
    # The gateway drain (drain.py; with routers in test_fleet_drain): the server leaves them before it stops.
    monkeypatch.setattr(
        ray.HostApply, "drain", lambda self, dep, name, actions, port=None: calls.append(f"drain {name}")
    )
    new = {"env": {"NCCL_DEBUG": "INFO"}, "wave": 1}
    return rt, {**head, **new}, {**worker, **new}, calls


def test_the_wave_drains_the_server_sets_the_old_nodes_aside_and_drops_them_once_the_replica_passed(
    monkeypatch, tmp_path
):
    rt, head, worker, calls = wave_hosts(monkeypatch, tmp_path)
    old = {n: rt.container(n).id for n in (HEAD, WORKER)}
    before = list(rt.calls)
    res, errors = ray_wave.swap(params([head, worker]), check_mode=True, runtime=rt)
    assert errors == [] and [(e["name"], e["changed"]) for e in res["ray_nodes"]] == [(HEAD, True), (WORKER, True)]
    assert [c for c in rt.calls[len(before) :] if c not in ("container",)] == [] and calls == []  # check mode

    res, errors = ray_wave.drain(params([head, worker]), runtime=rt)
    assert errors == [] and calls == ["drain big-0", "big-0 stopped"] and not rt.container("gpufleet-big-0").running
    assert [(e["name"], e["action"]) for e in res["ray_nodes"]] == [(HEAD, "drain")]  # heads only
    res, errors = ray_wave.swap(params([head, worker]), runtime=rt)
    assert errors == [] and [e["action"] for e in res["ray_nodes"]] == ["replace", "replace"]
    for n in (HEAD, WORKER):
        aside, new = rt.container(ray_node.previous_name(n)), rt.container(n)
        assert aside.id == old[n] and not aside.running  # the old node, stopped, kept under another name
        assert new.id != old[n] and new.running and new.labels[labels.CONFIG_HASH] != aside.labels[labels.CONFIG_HASH]
    assert [n["container_name"] for n in info.ray_nodes(rt, {})] == [HEAD, WORKER]  # -previous is no placement
    again, _ = ray_wave.swap(params([head, worker]), runtime=rt)  # a re-run keeps the new nodes
    assert not again["changed"] and [e["action"] for e in again["ray_nodes"]] == ["keep", "keep"]
    rt.stop(HEAD, 10)  # a new node as declared but stopped is started, not set aside over the old one
    again, _ = ray_wave.swap(params([head]), runtime=rt)
    assert [e["action"] for e in again["ray_nodes"]] == ["start"] and rt.container(HEAD).running
    assert rt.container(ray_node.previous_name(HEAD)).id == old[HEAD]

    results = [{"records": [{"kind": "replica", "name": "big-0", "deployment": "big", "failed": False}]}]
    settled = ray_wave.wave_nodes([head, worker], {"index": 1}, "settle", results)
    assert [n["failed"] for n in settled] == [False, False]
    res, errors = ray_wave.settle(params(settled), runtime=rt)
    assert errors == [] and res["ray_nodes"] == [] and res["removed"] == [f"{HEAD}-previous", f"{WORKER}-previous"]
    assert {c.name for c in rt.list_labeled(labels.RAY_ROLE)} == {HEAD, WORKER}
    assert rt.container(HEAD).id != old[HEAD]

    merged = ray_wave.merge_results({"ray_nodes": [{"name": HEAD, "action": "defer"}]}, res, {"skipped": True})
    assert merged["ray_nodes"] == [{"name": HEAD, "action": "defer"}] and not merged["failed"]


def test_a_failed_wave_brings_the_old_cluster_and_its_server_back(monkeypatch, tmp_path):
    rt, head, worker, _calls = wave_hosts(monkeypatch, tmp_path)
    old = {n: rt.container(n).id for n in (HEAD, WORKER, "gpufleet-big-0")}
    ray_wave.drain(params([head]), runtime=rt)
    ray_wave.swap(params([head, worker]), runtime=rt)
    # The server failed its gate; vllm_container removed the new one and renamed the old one back, stopped.
    failed = {"kind": "replica", "name": "big-0", "deployment": "big", "failed": True, "rolled_back": True}
    failed |= {"failed_step": "vllm_container", "failure_class": "smoke_failed", "hint": "POST /v1/completions: 500"}
    results = [{}, {"records": [failed]}]
    assert ray_wave.wave_nodes([head, worker], {"index": 1}, "swap", results) == []  # its deployment rolls no further
    assert ray_wave.wave_nodes([head], {"index": 2}, "settle", results) == []  # another wave's nodes: none
    settled = ray_wave.wave_nodes([head, worker], {"index": 1}, "settle", results)
    assert [n["failed"] for n in settled] == [True, True] and settled[0]["failed_record"] == failed
    assert "failed_record" not in settled[1]
    res = settle_res = ray_wave.settle(params(settled), runtime=rt)[0]
    assert [(e["name"], e["action"]) for e in res["ray_nodes"]] == [
        (HEAD, "restore"),
        (WORKER, "restore"),
    ]
    for n in (HEAD, WORKER):
        assert rt.container(n).id == old[n] and rt.container(n).running  # the old node, under its name, running
        assert rt.container(ray_node.previous_name(n)) is None
    assert len(rt.list_labeled(labels.RAY_ROLE)) == 2  # the new nodes are gone

    waited: list[str] = []
    monkeypatch.setattr(ray_wave, "cluster_ready", lambda rt_, n, timeout, clock, sleep: (True, "2 Ray nodes, 4 GPUs"))

    def wait_ready(rt_, cid, base, api_key, timeout, secrets=None, **kw):
        waited.append(cid)
        return Outcome(ready=True, phase="ready", waited_s=1.0)

    monkeypatch.setattr(ray_wave.readiness, "wait_ready", wait_ready)
    res, errors = ray_wave.restore(params(settled), runtime=rt)
    assert errors == [] and waited == [old["gpufleet-big-0"]] and rt.container("gpufleet-big-0").running
    (rec,) = res["records"]
    assert rec["failed"] and rec["rolled_back"] and rec["phase"] == "ready" and rec["failure_class"] == "smoke_failed"
    assert rec["hint"] == "POST /v1/completions: 500; rolled back to the previous Ray cluster (serving again)"
    assert rec["actions"] == ["rollback: start gpufleet-big-0 on its old Ray cluster"]
    assert ray_wave.restore(params(settled), check_mode=True, runtime=rt)[0]["records"] == []

    # The old cluster does not come back: the record says so and the step fails (the run's summary shows it).
    monkeypatch.setattr(ray_wave, "cluster_ready", lambda rt_, n, timeout, clock, sleep: (False, "1/2 Ray nodes"))
    res, errors = ray_wave.restore(params(settled), runtime=rt)
    assert res["records"][0]["hint"].endswith(
        "the previous Ray cluster and server are back but do not serve: 1/2 Ray nodes"
    )
    assert errors and "big-0" in errors[0]

    # The summary's row: failed, rolled back, its nodes restored.
    plan = fleet_plan(hosts(), [{**big(), "model": str(tmp_path)}])
    plan["ray"]["gpu-a"][0]["wave"] = plan["ray"]["gpu-b"][0]["wave"] = 1
    swap_res = {"ray_nodes": [{"name": HEAD, "role": "head", "action": "replace", "changed": True}]}
    steps = {"gpu-a": ray_wave.merge_results({"ray_nodes": [{"name": HEAD, "action": "defer"}]}, swap_res, settle_res)}
    out = summary.converge_summary(plan, {"gpu-a": {"records": [failed]}}, ray_nodes=steps)
    (row,) = out["deployments"]["big"]["replicas"]
    assert row["status"] == "failed" and row["ray_nodes"][0]["action"] == "rolled back", row


def test_the_ray_play_settles_a_node_left_aside_by_an_interrupted_wave(monkeypatch, tmp_path):
    rt, head = head_node(monkeypatch, tmp_path)
    ray.apply_nodes(params([head]), runtime=rt)
    old = rt.container(HEAD).id
    ray_node.set_aside(rt, HEAD)  # interrupted after the set-aside, before the new node was created
    res, _ = ray.apply_nodes(params([head]), runtime=rt)
    assert rt.container(HEAD).id == old and rt.container(HEAD).running  # renamed back and started
    assert res["ray_nodes"][0]["actions"][0] == f"rename leftover {HEAD}-previous back to {HEAD}"
    ray_node.set_aside(rt, HEAD)
    ray.apply_nodes(params([{**head, "env": {"X": "1"}}]), runtime=rt)  # interrupted after the new node started
    res, _ = ray.apply_nodes(params([{**head, "env": {"X": "1"}}]), runtime=rt)
    assert rt.container(f"{HEAD}-previous") is None and res["ray_nodes"][0]["action"] == "keep"


def test_the_wave_filter_refuses_an_unknown_step():
    with pytest.raises(GpufleetError, match="step must be one of swap, settle"):
        ray_wave.wave_nodes([], {"index": 1}, "rollback", [])
