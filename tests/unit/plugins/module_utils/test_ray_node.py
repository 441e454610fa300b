"""Ray node containers through the engine interface: created once, kept while declared the same, replaced when not,
started when stopped, check mode touches nothing; the create request (entrypoint, host network, on-failure retries)
and podman's arguments for it."""

from __future__ import annotations

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as labels
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.podman import create_args
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import node, ports, spec
from fixtures.fake_runtime import FakeRuntime


def worker(**over) -> spec.NodeSpec:
    kw = {
        "deployment": "big",
        "replica": 0,
        "role": "worker",
        "image": "vllm/vllm-openai:v0.10.2",
        "base": ports.FIRST,
        "gpus": ["0", "1"],
        "node_ip": "10.0.0.2",
        "host": "gpu-b",
        "head_ip": "10.0.0.1",
        **over,
    }
    return spec.node_spec(**kw)


def test_ensure_is_idempotent_replaces_on_change_and_restarts_a_stopped_node():
    rt = FakeRuntime()
    first = node.ensure(rt, worker())
    assert (first["changed"], first["action"]) == (True, "create")
    assert rt.calls == ["create", "start"]
    assert node.ensure(rt, worker()) == {"changed": False, "action": "keep", "name": first["name"], "id": first["id"]}
    assert rt.calls == ["create", "start"]
    rt.c[first["id"]]["status"] = "exited"
    assert node.ensure(rt, worker())["action"] == "start"
    changed = node.ensure(rt, worker(head_ip="10.0.0.9"))
    assert changed["action"] == "replace" and changed["id"] != first["id"]
    assert rt.calls == ["create", "start", "start", "remove", "create", "start"]
    assert len(rt.c) == 1


def test_check_mode_plans_without_touching_the_engine():
    rt = FakeRuntime()
    assert node.ensure(rt, worker(), check_mode=True)["action"] == "create"
    assert node.remove(rt, "gpufleet-big-0-ray-worker", check_mode=True)["changed"] is False
    assert rt.calls == [] and rt.c == {}
    node.ensure(rt, worker())
    assert node.ensure(rt, worker(gpus=["2", "3"]), check_mode=True)["action"] == "replace"
    assert node.remove(rt, "gpufleet-big-0-ray-worker", check_mode=True)["action"] == "remove"
    assert rt.calls == ["create", "start"]
    assert node.remove(rt, "gpufleet-big-0-ray-worker")["changed"] is True and rt.c == {}


def test_create_request_and_podman_arguments():
    req = node.create_spec(worker())
    assert (req.entrypoint, req.network, req.ipc, req.restart_policy, req.restart_retries) == (
        ["ray"],
        "host",
        "host",
        "on-failure",
        5,
    )
    assert req.labels[labels.CONFIG_HASH] == node.config_hash(worker())
    assert labels.MANAGED not in req.labels
    args = create_args(req)
    assert args[args.index("--entrypoint") + 1] == '["ray"]'
    assert args[args.index("--restart") + 1] == "on-failure:5"
    assert args[args.index("--network") + 1] == "host" and "--publish" not in args
    assert args[-len(req.command) :] == req.command
    assert "--device" in args and "nvidia.com/gpu=0" in args


def test_stop_keeps_the_node_and_ensure_starts_it_again_unchanged():
    rt = FakeRuntime()
    made = node.ensure(rt, worker())
    name = made["name"]
    assert node.stop(rt, name, check_mode=True) == {"changed": True, "action": "stop", "name": name, "id": made["id"]}
    assert rt.calls == ["create", "start"]  # check mode: the engine is not called
    assert node.stop(rt, name)["action"] == "stop" and rt.calls[-1] == "stop"
    assert rt.container(name).running is False  # kept, stopped
    assert node.stop(rt, name) == {"changed": False, "action": "stopped", "name": name, "id": made["id"]}
    rt.c[made["id"]]["status"] = "restarting"  # the engine's on-failure restarts: stopped too
    assert node.stop(rt, name)["changed"] is True
    assert node.stop(rt, "gpufleet-none-0-ray-worker")["action"] == "absent"
    # The next converge starts the same container again, neither left stopped nor replaced.
    assert node.ensure(rt, worker()) == {"changed": True, "action": "start", "name": name, "id": made["id"]}
    assert rt.calls[-1] == "start" and len(rt.c) == 1
