"""Multi-host replicas in the converge (_fleet/ray.py): the plan's Ray nodes and the head server's settings, the
placements the hosts report back (stable on a re-plan), the Ray step on a host (nodes, removals server first, an
update replaces the cluster) and the wait for a complete cluster (driven clock)."""

from __future__ import annotations

from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as labels
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import info
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.prechecks import ray_executor
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import ray, summary
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.payload import fleet_plan
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import ports
from fixtures.fake_runtime import FakeRuntime

A100 = 81920
STATUS = """======== Autoscaler status ========
Node status
---------------------------------------------------------------
Active:
 1 node_aaaa
 1 node_bbbb
Pending:
 (no pending nodes)
Resources
---------------------------------------------------------------
Usage:
 0.0/4.0 GPU
"""


def hosts() -> dict[str, Any]:
    def gpus(prefix: str) -> list[dict[str, Any]]:
        return [
            {"index": i, "uuid": f"GPU-{prefix}-{i}", "memory_total_mib": A100, "memory_free_mib": A100}
            for i in range(2)
        ]

    return {
        h: {"reachable": True, "labels": {}, "gpus": gpus(h), "address": ip, "models_root": f"/models/{h}"}
        for h, ip in (("gpu-a", "10.0.0.1"), ("gpu-b", "10.0.0.2"))
    }


def big() -> dict[str, Any]:
    return {
        "name": "big",
        "model": "org/big",
        "tensor_parallel_size": 4,
        "distributed": "ray",
        "port": 8300,
        "env": {"RAY_DEDUP_LOGS": "1", "HF_HUB_OFFLINE": "1"},
    }


def reported(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """What fleet_plan reads back from the hosts after the converge: each host's server and Ray nodes."""
    out: list[dict[str, Any]] = []
    for host in plan["hosts"]:
        servers = [
            {"host": host, "name": s["name"], "gpus": [str(g) for g in s["gpus"]], "port": s["port"]}
            for s in plan["hosts"][host]
        ]
        nodes = [
            {k: n[k] for k in ("deployment", "replica", "role", "port", "gpus", "host")} for n in plan["ray"][host]
        ]
        out += ray.existing_parts(host, servers, nodes)
    return out


def test_plan_gives_each_host_its_node_and_the_head_the_server_settings_and_stays_on_a_re_plan():
    plan = fleet_plan(hosts(), [big()])
    (asg,) = plan["assignments"]
    assert asg["hosts"] == ["gpu-a", "gpu-b"] and asg["ray"]["port"] == ports.FIRST
    head, worker = plan["ray"]["gpu-a"][0], plan["ray"]["gpu-b"][0]
    assert (head["role"], head["name"], head["server"], head["node_ip"]) == (
        "head",
        "big-0-ray-head",
        "big-0",
        "10.0.0.1",
    )
    assert (worker["role"], worker["head_ip"], worker["node_ip"], worker["server"]) == (
        "worker",
        "10.0.0.1",
        "10.0.0.2",
        None,
    )
    assert head["nodes"] == worker["nodes"] == 2 and head["cluster_gpus"] == 4 and worker["gpus"] == ["0", "1"]
    # each node syncs the model into its own host's models root and mounts it there
    assert worker["model_sync"]["models_root"] == "/models/gpu-b" and worker["model_path"] == "/models/gpu-b/big"
    assert worker["env"] == big()["env"]
    assert plan["hosts"]["gpu-b"] == []  # the worker host runs no server
    (server,) = plan["hosts"]["gpu-a"]
    c = server["container"]
    assert c["tensor_parallel_size"] == 4 and c["gpus"] == [0, 1] and ray_executor(c)
    assert c["extra_args"][-2:] == ["--distributed-executor-backend", "ray"]
    assert c["env"]["RAY_ADDRESS"] == f"10.0.0.1:{ports.FIRST}" and c["env"]["VLLM_HOST_IP"] == "10.0.0.1"
    assert c["pid"] == "container:gpufleet-big-0-ray-head" and c["network"] == "host"
    assert "/var/lib/gpufleet/ray/big-0-head:/tmp/ray:rw" in c["mounts"]
    assert server["ray"] == {"port": ports.FIRST, "role": "head", "hosts": ["gpu-a", "gpu-b"], "nodes": 2, "gpus": 4}

    again = fleet_plan(hosts(), [big()], reported(plan))
    assert [a["action"] for a in again["assignments"]] == ["keep"]
    assert again["ray"] == plan["ray"] and again["removals"] == []
    assert again["hosts"]["gpu-a"][0]["container"] == c  # the same server: vllm_container keeps it


def test_existing_parts_marks_the_head_server_and_adds_workers_and_a_lone_head():
    server = {"host": "gpu-a", "name": "big-0", "gpus": ["0", "1"], "port": 8300}
    head = {"deployment": "big", "replica": 0, "role": "head", "port": 6379, "gpus": ["0", "1"], "host": "gpu-a"}
    out = ray.existing_parts("gpu-a", [server], [head])
    assert out == [{**server, "ray_role": "head", "ray_port": 6379}]
    lone = ray.existing_parts("gpu-a", [], [head])
    assert lone == [
        {"host": "gpu-a", "name": "big-0", "deployment": "big", "replica": 0, "gpus": ["0", "1"], "port": None}
        | {"ray_role": "head", "ray_port": 6379}
    ]


def test_removing_the_deployment_removes_the_server_then_every_node():
    plan = fleet_plan(hosts(), [big()])
    gone = fleet_plan(hosts(), [{**big(), "state": "absent"}], reported(plan))
    assert gone["assignments"] == [] and gone["ray"] == {"gpu-a": [], "gpu-b": []}
    roles = {(r["host"], r.get("ray_role")) for r in gone["removals"]}
    assert roles == {("gpu-a", "head"), ("gpu-b", "worker")}


class RayRuntime(FakeRuntime):
    """The fake engine with ``ray status`` answered from ``status`` (what the head shows now)."""

    def __init__(self) -> None:
        super().__init__()
        self.status = ""

    def exec(self, cid: str, argv: list[str], timeout: float = 30.0) -> tuple[int, str]:
        self.calls.append("exec")
        return (0, self.status) if self.status else (1, "ConnectionError: could not connect to GCS")


def params(nodes: list[dict[str, Any]], removals: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "ray_nodes": nodes,
        "removals": removals or [],
        "runtime": "docker",
        "manifest_dir": "/nonexistent/manifests",
        "image_repository": "vllm/vllm-openai",
        "image_pull": "never",
        "wait_timeout": 30,
        "secrets": {},
    }


def head_node(monkeypatch, tmp_path):
    """An in-memory engine and the plan's Ray head of ``big`` on gpu-a, with model sync and image stubbed out."""
    monkeypatch.setattr(ray.ray_spec, "HOST_DIR", str(tmp_path / "ray"))
    plan = fleet_plan(hosts(), [{**big(), "model": str(tmp_path)}])
    monkeypatch.setattr(ray.HostApply, "sync_model", lambda self, spec: {"changed": False})
    monkeypatch.setattr(
        ray.HostApply, "ensure_image", lambda self, *a: {"changed": False, "image": "img:1", "image_id": "sha256:1"}
    )
    rt = RayRuntime()
    (head,) = plan["ray"]["gpu-a"]
    return rt, head


def test_apply_nodes_creates_keeps_replaces_with_the_server_and_removes(monkeypatch, tmp_path):
    rt, head = head_node(monkeypatch, tmp_path)
    res, errors = ray.apply_nodes(params([head]), runtime=rt)
    assert errors == [] and res["changed"] and [n["action"] for n in res["ray_nodes"]] == ["create"]
    st = rt.container("gpufleet-big-0-ray-head")
    assert st.labels[labels.RAY_ROLE] == "head" and labels.MANAGED not in st.labels
    assert info.ray_nodes(rt, {"names": ["big"]})[0] == {
        "deployment": "big",
        "replica": 0,
        "role": "head",
        "port": ports.FIRST,
        "gpus": ["0", "1"],
        "host": "gpu-a",
        "container_name": "gpufleet-big-0-ray-head",
        "state": "running",
        "name": "big-0",
        "ray_role": "head",
        "ray_port": ports.FIRST,
    }
    assert info.ray_nodes(rt, {"names": ["other", "big-1"]}) == []
    res, _ = ray.apply_nodes(params([head]), runtime=rt)
    assert not res["changed"] and res["ray_nodes"][0]["action"] == "keep"

    removed: list[str] = []
    monkeypatch.setattr(ray.HostApply, "_remove_container", lambda self, name: removed.append(name) or {})
    res, _ = ray.apply_nodes(params([{**head, "env": {"NCCL_DEBUG": "INFO"}}]), check_mode=True, runtime=rt)
    assert res["ray_nodes"][0]["action"] == "replace" and removed == []  # check mode: nothing removed
    res, _ = ray.apply_nodes(params([{**head, "env": {"NCCL_DEBUG": "INFO"}}]), runtime=rt)
    assert res["ray_nodes"][0]["action"] == "replace" and removed == ["big-0"]  # the server goes first

    monkeypatch.setattr(ray.HostApply, "remove", lambda self, item: removed.append(f"server {item['name']}") or True)
    removal = {"deployment": "big", "replica": 0, "name": "big-0", "host": "gpu-a", "ray_role": "head"}
    res, _ = ray.apply_nodes(params([], [removal, {**removal, "ray_role": None}]), runtime=rt)
    assert removed[-1] == "server big-0" and rt.container("gpufleet-big-0-ray-head") is None
    assert [(n["name"], n["action"]) for n in res["ray_nodes"]] == [("gpufleet-big-0-ray-head", "remove")]


def test_stop_nodes_stops_the_server_then_the_node_keeps_them_and_the_next_converge_starts_them(monkeypatch, tmp_path):
    rt, head = head_node(monkeypatch, tmp_path)
    ray.apply_nodes(params([head]), runtime=rt)
    rt.c["srv"] = {"name": "gpufleet-big-0", "status": "running", "labels": {}, "env": {}}  # the head's server
    stopped: list[str] = []

    def converge(self, p):  # vllm_container state=stopped by name, as stop.yml's servers task runs it
        assert p["state"] == "stopped"
        stopped.append(p["name"])
        if not self.check_mode:
            rt.stop(f"gpufleet-{p['name']}", 30)
        return {"changed": True, "diff": {"before": {"state": "started"}, "after": {"state": "stopped"}}}

    monkeypatch.setattr(ray.HostApply, "_converge", converge)
    # What stop.yml hands over: vllm_deployment_info's ray_nodes of the selected replicas (names=big).
    nodes = info.ray_nodes(rt, {"names": ["big"]})
    assert info.ray_nodes(rt, {"names": ["big-1"]}) == []  # another replica's name selects none of them
    calls = list(rt.calls)
    res, errors = ray.stop_nodes(params([], nodes), check_mode=True, runtime=rt)
    assert errors == [] and res["changed"] and rt.calls == calls  # check mode: the engine is not called
    assert [(n["name"], n["action"]) for n in res["ray_nodes"]] == [("gpufleet-big-0-ray-head", "stop")]
    assert [d["before_header"] for d in res["diff"]] == ["gpufleet-big-0 (before)", "gpufleet-big-0-ray-head (before)"]
    assert res["diff"][1]["after"] == {"state": "stopped"}
    res, errors = ray.stop_nodes(params([], nodes), runtime=rt)
    assert errors == [] and res["changed"] and stopped == ["big-0", "big-0"]
    assert rt.calls[-2:] == ["stop", "stop"]  # the server (it shares the head's PID namespace), then the head
    assert not rt.container("gpufleet-big-0-ray-head").running and not rt.container("gpufleet-big-0").running
    assert info.ray_nodes(rt, {"names": ["big-0"]})[0]["state"] == "stopped"
    res, _ = ray.stop_nodes(params([], nodes), runtime=rt)
    assert not res["changed"] and res["ray_nodes"][0]["action"] == "stopped" and res["diff"] == []
    # The next converge's Ray play starts the same head again (not replaced: its server keeps its PID namespace).
    res, _ = ray.apply_nodes(params([head]), runtime=rt)
    assert [n["action"] for n in res["ray_nodes"]] == ["start"] and rt.container("gpufleet-big-0-ray-head").running
    assert rt.container("gpufleet-big-0").labels == {}  # the server is left to the batches (vllm_container)


def test_wait_ready_polls_ray_status_until_every_node_and_gpu_joined():
    plan = fleet_plan(hosts(), [big()])
    (head,) = plan["ray"]["gpu-a"]
    rt = RayRuntime()
    rt.c["h"] = {"name": "gpufleet-big-0-ray-head", "status": "running", "labels": {}, "env": {}}
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s
        if now[0] >= 3:
            rt.status = STATUS.replace(" 1 node_bbbb\n", "") if now[0] < 5 else STATUS

    res, errors = ray.wait_ready(params([head]), runtime=rt, clock=lambda: now[0], sleep=sleep)
    assert errors == [] and res["ray_nodes"] == [
        {"name": "gpufleet-big-0-ray-head", "role": "head", "ready": True, "status": "2 Ray nodes, 4 GPUs"}
    ]
    assert now[0] == 5.0

    rt.status = STATUS.replace(" 1 node_bbbb\n", "")
    now[0] = 0.0
    res, errors = ray.wait_ready(
        params([head]), runtime=rt, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)
    )
    assert now[0] == 30.0 and res["ray_nodes"][0]["ready"] is False and "1/2 Ray nodes joined" in errors[0]
    assert ray.wait_ready(params([head]), check_mode=True, runtime=rt)[0]["ray_nodes"] == []


def test_the_gpu_pre_check_accepts_more_gpus_than_its_own_only_with_the_ray_executor():
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container import prechecks

    facts = prechecks.GpuFacts(lambda: (None, None))
    over_ray = {"tensor_parallel_size": 4, "extra_args": ["--distributed-executor-backend", "ray"]}
    assert prechecks._gpu_problems(over_ray, ["0", "1"], None, facts, FakeRuntime()) == []
    assert ray_executor({"extra_args": ["--distributed-executor-backend=ray"]})
    assert not ray_executor({"extra_args": ["--distributed-executor-backend", "mp"]}) and not ray_executor({})
    alone = {"tensor_parallel_size": 4}
    assert [p[0] for p in prechecks._gpu_problems(alone, ["0", "1"], None, facts, FakeRuntime())] == ["tp_mismatch"]


def test_a_changed_multi_host_replica_rolls_in_place_never_with_a_surge():
    first = fleet_plan(hosts(), [big()])
    grown = hosts()  # gpu-a has 4 GPUs now: room for a surge of the head's share beside it
    grown["gpu-a"]["gpus"] += [{**g, "index": g["index"] + 2, "uuid": f"{g['uuid']}x"} for g in grown["gpu-a"]["gpus"]]
    running = [
        {**e, "state": "running", "plan_digest": first["hosts"]["gpu-a"][0]["digest"]}
        if e.get("port") is not None
        else e
        for e in reported(first)
    ]
    changed = fleet_plan(grown, [{**big(), "env": {"NCCL_DEBUG": "INFO"}}], running)
    assert [a["action"] for a in changed["assignments"]] == ["keep"]
    (wave,) = changed["rollout"]["waves"]
    assert [(r["name"], r["mode"]) for r in wave["replicas"]] == [("big-0", "in_place")]
    # Its nodes are replaced in that wave (the Ray play leaves the old cluster serving until then: ray_wave.py).
    assert changed["ray"]["gpu-b"][0]["env"] == {"NCCL_DEBUG": "INFO"}
    assert [n["wave"] for h in ("gpu-a", "gpu-b") for n in changed["ray"][h]] == [1, 1]


def registered(step: tuple[dict[str, Any], list[str]]) -> dict[str, Any]:
    """A Ray step's result as the role registers it: what fleet_apply's main() returns (fail_json with the errors)."""
    result, errors = step
    return {**result, "failed": True, "msg": "; ".join(errors)} if errors else result


def server_record(**kw: Any) -> dict[str, Any]:
    """The head's server as fleet_apply (the rollout batch) records it on gpu-a."""
    return {"kind": "replica", "name": "big-0", "deployment": "big", "changed": True, "phase": "ready"} | kw


def test_the_summary_row_of_a_multi_host_replica_lists_every_ray_node_with_what_the_ray_step_did(monkeypatch, tmp_path):
    rt, head = head_node(monkeypatch, tmp_path)
    plan = fleet_plan(hosts(), [{**big(), "model": str(tmp_path)}])
    (worker,) = plan["ray"]["gpu-b"]
    rt.status = STATUS  # 2 nodes, 4 GPUs
    ray_nodes = {
        "gpu-a": registered(ray.apply_nodes(params([head]), runtime=rt)),
        "gpu-b": registered(ray.apply_nodes(params([worker]), runtime=RayRuntime())),
    }
    ray_ready = {"gpu-a": registered(ray.wait_ready(params([head]), runtime=rt)), "gpu-b": {"skipped": True}}
    endpoint = "http://10.0.0.1:8300"
    results = {"gpu-a": {"records": [server_record(endpoint=endpoint)]}, "gpu-b": {"records": []}}
    out = summary.converge_summary(plan, results, ray_nodes=ray_nodes, ray_ready=ray_ready)
    (row,) = out["deployments"]["big"]["replicas"]
    assert (row["host"], row["hosts"], row["status"], row["endpoint"]) == (
        "gpu-a",
        ["gpu-a", "gpu-b"],
        "changed",
        endpoint,
    )
    assert [(n["host"], n["role"], n["container"], n["gpus"], n["action"], n["status"]) for n in row["ray_nodes"]] == [
        ("gpu-a", "head", "gpufleet-big-0-ray-head", ["0", "1"], "created", "changed"),
        ("gpu-b", "worker", "gpufleet-big-0-ray-worker", ["0", "1"], "created", "changed"),
    ]
    assert row["ray_nodes"][0]["ready"] is True and row["ray_nodes"][1]["ready"] is None and out["ok"]
    table = summary.converge_table(out)
    assert "gpu-a+gpu-b" in table[2] and "ray head: created" in table[3] and "ray worker: created" in table[4]

    # The next converge keeps both nodes and the server: the replica is ok, its nodes unchanged.
    ray_nodes = {"gpu-a": registered(ray.apply_nodes(params([head]), runtime=rt)), "gpu-b": ray_nodes["gpu-b"]}
    ray_nodes["gpu-b"] = {**ray_nodes["gpu-b"], "changed": False}
    ray_nodes["gpu-b"]["ray_nodes"] = [{**ray_nodes["gpu-b"]["ray_nodes"][0], "action": "keep", "changed": False}]
    results = {"gpu-a": {"records": [server_record(changed=False)]}}
    (row,) = summary.converge_summary(plan, results, ray_nodes=ray_nodes)["deployments"]["big"]["replicas"]
    assert row["status"] == "ok" and [n["action"] for n in row["ray_nodes"]] == ["unchanged", "unchanged"]
    # A single-host replica's row has no Ray keys.
    single = fleet_plan(hosts(), [{"name": "small", "model": "org/small", "port": 8400}])
    results = {"gpu-a": {"records": [server_record(name="small-0", deployment="small")]}}
    (row,) = summary.converge_summary(single, results, ray_nodes={})["deployments"]["small"]["replicas"]
    assert "ray_nodes" not in row and "hosts" not in row


def test_a_failed_ray_worker_is_the_replica_failure_cause_in_the_summary(monkeypatch, tmp_path):
    rt, head = head_node(monkeypatch, tmp_path)
    plan = fleet_plan(hosts(), [{**big(), "model": str(tmp_path)}])
    (worker,) = plan["ray"]["gpu-b"]
    head_step = registered(ray.apply_nodes(params([head]), runtime=rt))
    monkeypatch.setattr(
        ray.HostApply, "ensure_image", lambda self, *a: {"failed": True, "msg": "pull of img:1: manifest unknown"}
    )
    worker_step = registered(ray.apply_nodes(params([worker]), runtime=RayRuntime()))
    assert worker_step["failed"] and worker_step["ray_nodes"][0]["failed"]
    rt.status = STATUS.replace(" 1 node_bbbb\n", "").replace("0.0/4.0", "0.0/2.0")  # the head alone
    now = [0.0]  # a driven clock: the wait gives up after wait_timeout (30 s) at once
    ticks = {"clock": lambda: now[0], "sleep": lambda t: now.__setitem__(0, now[0] + t)}
    ready = registered(ray.wait_ready(params([head]), runtime=rt, **ticks))
    assert ready["failed"]
    server = server_record(changed=False, failed=True, failure_class="ray_cluster_incomplete", hint="2 GPUs < 4")
    out = summary.converge_summary(
        plan,
        {"gpu-a": {"failed": True, "msg": "big-0 failed", "records": [server]}},
        ray_nodes={"gpu-a": head_step, "gpu-b": worker_step},
        ray_ready={"gpu-a": ready},
    )
    (row,) = out["deployments"]["big"]["replicas"]
    assert (row["status"], row["failure_class"], row["failed_step"]) == (
        "failed",
        "ray_cluster_incomplete",
        "ray_nodes",
    )
    assert row["hint"].startswith("Ray worker gpufleet-big-0-ray-worker on gpu-b: pull of img:1: manifest unknown")
    assert row["hint"].endswith("(then the server: 2 GPUs < 4)")
    head_row, worker_row = row["ray_nodes"]
    assert (head_row["status"], head_row["failed_step"], head_row["ready"]) == ("failed", "ray_ready", False)
    assert "1/2 Ray nodes joined" in head_row["hint"]
    assert (worker_row["status"], worker_row["action"]) == ("failed", None)
    assert not out["ok"] and out["failed_hosts"] == {"gpu-a": ["big-0"]}
    assert any("Ray worker gpufleet-big-0-ray-worker on gpu-b" in line for line in summary.converge_table(out))

    # A worker host whose Ray step failed before any node (the engine not reachable), and an unreachable one.
    down = {"failed": True, "msg": "Cannot connect to the Docker daemon\nat unix:///run/docker.sock"}
    (row,) = summary.converge_summary(
        plan, {"gpu-a": {"records": [server_record()]}}, ray_nodes={"gpu-a": head_step, "gpu-b": down}
    )["deployments"]["big"]["replicas"]
    assert row["status"] == "failed" and row["hint"].endswith("on gpu-b: Cannot connect to the Docker daemon")
    (row,) = summary.converge_summary(
        plan, {"gpu-a": {"records": [server_record()]}}, unreachable=["gpu-b"], ray_nodes={"gpu-a": head_step}
    )["deployments"]["big"]["replicas"]
    assert row["status"] == "changed" and row["ray_nodes"][1]["status"] == "unreachable"


def test_the_summary_shows_the_removed_ray_nodes_of_a_removed_replica(monkeypatch, tmp_path):
    rt, head = head_node(monkeypatch, tmp_path)
    plan = fleet_plan(hosts(), [{**big(), "model": str(tmp_path)}])
    ray.apply_nodes(params([head]), runtime=rt)
    monkeypatch.setattr(ray.HostApply, "remove", lambda self, item: True)  # the head's server, removed first
    gone = fleet_plan(hosts(), [{**big(), "model": str(tmp_path), "state": "absent"}], reported(plan))
    steps = {h: registered(ray.apply_nodes(params([], gone["remove"][h]), runtime=rt)) for h in ("gpu-a",)}
    out = summary.converge_summary(gone, {}, ray_nodes=steps)
    nodes = {(r["host"], r["ray_node"]["container"], r["ray_node"]["action"]) for r in out["removed"]}
    assert nodes == {("gpu-a", "gpufleet-big-0-ray-head", "removed"), ("gpu-b", "gpufleet-big-0-ray-worker", None)}
    assert any("remove (ray head)" in line for line in summary.converge_table(out))
