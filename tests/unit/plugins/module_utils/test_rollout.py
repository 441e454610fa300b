"""Rollout waves per deployment (plugins/module_utils/_fleet/rollout.py): which replicas roll, max_unavailable and
max_surge (ints, percentages, defaults), surge slots from free GPUs, several deployments in parallel, failures."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import rollout
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.payload import fleet_plan

A100 = 81920


def host(n: int, **info: Any) -> dict[str, Any]:
    gpus = [{"index": i, "uuid": f"GPU-{i}", "memory_total_mib": A100, "memory_free_mib": A100} for i in range(n)]
    return {"reachable": True, "gpus": gpus, **info}


def dep(name: str = "chat", **fields: Any) -> dict[str, Any]:
    return {"name": name, "model": f"/models/{name}", "vllm_version": "0.10.2", **fields}


def running(plan: dict[str, Any], digest: str | None = "old") -> list[dict[str, Any]]:
    """The plan's placements as containers that run now, declared differently (digest "old") or the same (None)."""
    out = []
    for a in plan["assignments"]:
        spec = next(s for s in plan["hosts"][a["host"]] if s["name"] == a["name"])
        out.append(
            {
                "host": a["host"],
                "name": a["name"],
                "gpus": [str(g) for g in a["gpus"]],
                "port": a["port"],
                "state": "running",
                "plan_digest": digest or spec["digest"],
            }
        )
    return out


def roll(hosts: dict[str, Any], deps: list[dict[str, Any]], digest: str | None = "old") -> dict[str, Any]:
    """Plan once from nothing, then again with the first plan's containers running (declared as ``digest``)."""
    first = fleet_plan(hosts, deps)
    return fleet_plan(hosts, deps, running(first, digest))


def waves(plan: dict[str, Any]) -> list[list[tuple[str, str]]]:
    return [[(e["name"], e["mode"]) for e in w["replicas"]] for w in plan["rollout"]["waves"]]


def test_nothing_rolls_when_the_declaration_is_unchanged():
    plan = roll({"a": host(4)}, [dep(replicas=2)], digest=None)
    assert plan["rollout"]["waves"] == [] and plan["rollout"]["deferred"] == {"a": []}


def test_a_new_deployment_creates_without_waves():
    plan = fleet_plan({"a": host(2)}, [dep(replicas=2)])
    assert plan["rollout"]["waves"] == [] and {a["action"] for a in plan["assignments"]} == {"create"}


def test_digest_changes_with_what_is_declared_not_with_where():
    base = fleet_plan({"a": host(2)}, [dep(env={"A": "1"}, api_key="k1")])["hosts"]["a"][0]["digest"]
    for change in ({"env": {"A": "2"}}, {"api_key": "k2"}, {"vllm_version": "0.11.0"}, {"extra_args": ["--x"]}):
        other = fleet_plan({"a": host(2)}, [dep(**{"env": {"A": "1"}, "api_key": "k1", **change})])
        assert other["hosts"]["a"][0]["digest"] != base, change
    moved = fleet_plan({"a": host(2)}, [dep(env={"A": "1"}, api_key="k1", port=9000)])
    assert moved["hosts"]["a"][0]["digest"] == base


def test_log_limits_pass_through_the_plan_only_when_declared():
    # Undeclared: vllm_container's defaults, nothing in the container args, so existing replicas keep their digest.
    plain = fleet_plan({"a": host(2)}, [dep()])["hosts"]["a"][0]
    assert "log_max_size" not in plain["container"] and "log_max_files" not in plain["container"]
    limited = fleet_plan({"a": host(2)}, [dep(log_max_size="100M", log_max_files=5)])["hosts"]["a"][0]
    assert (limited["container"]["log_max_size"], limited["container"]["log_max_files"]) == ("100m", 5)
    assert limited["digest"] != plain["digest"], "a changed limit rolls the replicas (a new container applies it)"


def test_default_surges_one_at_a_time_with_free_gpus():
    plan = roll({"a": host(4)}, [dep(replicas=2)])
    assert plan["rollout"]["strategy"]["chat"] == {
        "max_unavailable": 0,
        "max_surge": 1,
        "rolling": ["chat-0", "chat-1"],
    }
    assert waves(plan) == [[("chat-0", "surge")], [("chat-1", "surge")]]
    first = plan["rollout"]["waves"][0]["replicas"][0]
    assert first["surge_gpus"] == [2] and first["surge_port"] == 8002  # a free GPU, a port after the range
    spec = next(s for s in plan["hosts"]["a"] if s["name"] == "chat-0")
    assert spec["rollout"] == {"wave": 1, "mode": "surge", "surge_port": 8002, "surge_gpus": [2]}
    assert plan["rollout"]["deferred"] == {"a": ["chat-0", "chat-1"]}


def test_default_without_free_gpus_replaces_one_at_a_time():
    plan = roll({"a": host(2), "b": host(1)}, [dep(replicas=3)])
    assert plan["rollout"]["strategy"]["chat"]["max_unavailable"] == 1
    assert plan["rollout"]["strategy"]["chat"]["max_surge"] == 0
    assert waves(plan) == [[("chat-0", "in_place")], [("chat-1", "in_place")], [("chat-2", "in_place")]]


def test_max_unavailable_across_hosts():
    plan = roll({"a": host(2), "b": host(2)}, [dep(replicas=4, max_unavailable=2, max_surge=0)])
    assert [len(w) for w in waves(plan)] == [2, 2]
    assert all(mode == "in_place" for w in waves(plan) for _, mode in w)


@pytest.mark.parametrize(
    ("unavailable", "surge", "resolved"),
    [("25%", 0, (1, 0)), ("50%", 0, (2, 0)), ("10%", "10%", (0, 1)), ("100%", 0, (4, 0)), (0, "50%", (0, 2))],
)
def test_percentages_round_as_kubernetes(unavailable, surge, resolved):
    plan = roll({"a": host(8)}, [dep(replicas=4, max_unavailable=unavailable, max_surge=surge)])
    s = plan["rollout"]["strategy"]["chat"]
    assert (s["max_unavailable"], s["max_surge"]) == resolved
    per_wave = resolved[0] + resolved[1]
    assert [len(w) for w in waves(plan)] == [per_wave] * (4 // per_wave) + ([4 % per_wave] if 4 % per_wave else [])


def test_surge_and_unavailable_together():
    plan = roll({"a": host(5)}, [dep(replicas=4, max_unavailable=1, max_surge=1)])
    assert waves(plan) == [[("chat-0", "surge"), ("chat-1", "in_place")], [("chat-2", "surge"), ("chat-3", "in_place")]]


def test_surges_share_the_free_gpus_between_deployments():
    # One free GPU: the two deployments take turns with it (max_unavailable 0 each).
    plan = roll({"a": host(3)}, [dep("chat", replicas=1), dep("code", replicas=1, port=8100)])
    assert waves(plan) == [[("chat-0", "surge")], [("code-0", "surge")]]


def test_deployments_roll_in_parallel():
    plan = roll(
        {"a": host(2), "b": host(2)},
        [dep("chat", replicas=2, max_surge=0), dep("code", replicas=2, port=8100, max_surge=0)],
    )
    assert [sorted(n for n, _ in w) for w in waves(plan)] == [["chat-0", "code-0"], ["chat-1", "code-1"]]


def test_explicit_zero_unavailable_without_free_gpus_is_an_error_and_holds_the_replicas():
    plan = roll({"a": host(1)}, [dep(max_unavailable=0)])
    assert plan["rollout"]["waves"] == []
    assert plan["errors"][0]["message"].startswith(
        "chat: cannot roll with max_unavailable 0: no free GPUs for a surge on a;"
    )
    assert plan["rollout"]["held"] == {"a": ["chat-0"]} and plan["rollout"]["deferred"] == {"a": []}


def test_both_zero_is_a_schema_error():
    with pytest.raises(GpufleetError, match="max_surge: and max_unavailable are both 0"):
        fleet_plan({"a": host(1)}, [dep(max_unavailable=0, max_surge="0%")])


@pytest.mark.parametrize("bad", [-1, "x", "150%", True, 1.5])
def test_bad_amounts(bad):
    with pytest.raises(GpufleetError, match="max_unavailable: must be a whole number >= 0 or a percentage"):
        fleet_plan({"a": host(1)}, [dep(max_unavailable=bad)])


def test_pinned_gpus_never_surge():
    plan = roll({"a": host(4)}, [dep(host="a", gpus=[0])])
    assert waves(plan) == [[("chat-0", "in_place")]]


def test_stopped_and_legacy_containers():
    first = fleet_plan({"a": host(4)}, [dep(replicas=2)])
    now = running(first)
    now[0]["state"] = "exited"  # not serving: nothing to keep available, replaced by the first apply
    del now[1]["plan_digest"]  # no label yet (created before rollouts): rolls
    plan = fleet_plan({"a": host(4)}, [dep(replicas=2)], now)
    assert waves(plan) == [[("chat-1", "surge")]]


def test_wave_lines_and_filters():
    plan = roll({"a": host(3), "b": host(1)}, [dep(replicas=2, max_unavailable=1)])
    assert rollout.wave_lines(plan["rollout"]) == [
        "wave 1: chat-0 on a (surge :8002 gpus=1), chat-1 on b (in place)",
    ]
    wave = plan["rollout"]["waves"][0]
    assert rollout.wave_replicas(wave, "a", []) == ["chat-0"]
    failed = [{"records": [{"kind": "replica", "name": "chat-1", "deployment": "chat", "failed": True}]}, None, {}]
    assert rollout.failed_deployments(failed) == ["chat"]
    assert rollout.wave_replicas(wave, "a", rollout.failed_deployments(failed)) == []


def test_merge_results():
    base = {"changed": False, "records": [{"name": "chat-0", "failed": False}], "failed_count": 0}
    wave = {"changed": True, "failed": True, "msg": "chat-1: boom", "records": [{"name": "chat-1", "failed": True}]}
    merged = rollout.merge_results(base, wave)
    assert merged == {
        "changed": True,
        "failed": True,
        "records": base["records"] + wave["records"],
        "failed_count": 1,
        "msg": "chat-1: boom",
    }
    assert rollout.merge_results(base, {"skipped": True}) == {**base, "failed": False}


def test_a_derived_image_is_in_the_spec_the_images_and_the_digest():
    plain = fleet_plan({"a": host(2)}, [dep()])
    assert plain["hosts"]["a"][0]["image_build"] is None and plain["images"]["a"] == [[None, "0.10.2"]]
    build = {"extra_pip_packages": ["vllm-plugin-x==1.0"], "plugins": ["/opt/p.py"], "pip_find_links": ["/w"]}
    derived = fleet_plan({"a": host(2)}, [dep(**build), dep("emb", port=8001)])
    spec = derived["hosts"]["a"][0]
    assert spec["image_build"] == {**build, "pip_index_url": None, "pip_no_index": False}
    assert derived["images"]["a"] == [[None, "0.10.2", spec["image_build"]], [None, "0.10.2"]]
    assert spec["digest"] != plain["hosts"]["a"][0]["digest"], "asking for packages rolls the replicas"
    assert derived["hosts"]["a"][1]["digest"] != spec["digest"]
    newer = fleet_plan({"a": host(2)}, [dep(**{**build, "extra_pip_packages": ["vllm-plugin-x==1.1"]})])
    assert newer["hosts"]["a"][0]["digest"] != spec["digest"]


def test_hub_lora_adapters_reach_model_sync_and_the_container_and_the_digest():
    loras = [{"name": "sql", "repo_id": "org/sql-lora"}, {"name": "own", "path": "/l/own"}]
    spec = fleet_plan({"a": host(2)}, [dep(model="org/base", lora_modules=loras)])["hosts"]["a"][0]
    assert spec["model_sync"]["lora_modules"] == [{"name": "sql", "repo_id": "org/sql-lora", "revision": "main"}]
    assert spec["container"]["lora_modules"] == [
        {"name": "sql", "repo_id": "org/sql-lora", "revision": "main"},
        {"name": "own", "path": "/l/own"},
    ]
    pinned = [{**loras[0], "revision": "v2"}, loras[1]]
    other = fleet_plan({"a": host(2)}, [dep(model="org/base", lora_modules=pinned)])["hosts"]["a"][0]
    assert other["digest"] != spec["digest"], "another adapter revision rolls the replicas"
    plain = fleet_plan({"a": host(2)}, [dep(lora_modules=[loras[1]])])["hosts"]["a"][0]
    assert "lora_modules" not in plain["model_sync"]
