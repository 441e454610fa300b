"""Placement: fit, spread/binpack, selectors, stability, scaling, pinning, ports, reservations, unreachable hosts."""

from __future__ import annotations

import random

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.payload import fleet_plan
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.placement import container_name, plan

GIB = 1024**3
A100 = 81920
L4 = 24576


def gpus(n: int, total: int = A100, free: int | None = None, used: int = 0, prefix: str = "GPU") -> list[dict]:
    return [
        {
            "index": i,
            "uuid": f"{prefix}-{i}",
            "name": "NVIDIA A100-SXM4-80GB" if total == A100 else "NVIDIA L4",
            "memory_total_mib": total,
            "memory_free_mib": total - used if free is None else free,
            "memory_used_mib": used,
        }
        for i in range(n)
    ]


def host(n: int = 4, total: int = A100, **info) -> dict:
    return {"reachable": True, "labels": {}, "gpus": gpus(n, total, prefix=f"GPU-{id(info)}"), **info}


def dep(name: str = "chat", **fields) -> dict:
    return {"name": name, "model": f"org/{name}", **fields}


def placed(result: dict) -> dict[str, tuple[str, list[int], int]]:
    return {a["name"]: (a["host"], a["gpus"], a["port"]) for a in result["assignments"]}


def as_existing(result: dict) -> list[dict]:
    return [
        {
            "deployment": a["deployment"],
            "replica": a["replica"],
            "host": a["host"],
            "gpus": a["gpus"],
            "port": a["port"],
        }
        for a in result["assignments"]
    ]


def occupy(hosts: dict, result: dict, frac: float = 0.9) -> dict:
    """The hosts as gpu_facts sees them once the plan runs: placed GPUs hold frac x total."""
    taken = {(a["host"], g) for a in result["assignments"] for g in a["gpus"]}
    for name, info in hosts.items():
        for g in info.get("gpus", []):
            if (name, g["index"]) in taken:
                g["memory_used_mib"] = int(g["memory_total_mib"] * frac)
                g["memory_free_mib"] = g["memory_total_mib"] - g["memory_used_mib"]
    return hosts


# -- the issue's example -----------------------------------------------------------------------------------------


def test_unschedulable_message_says_why_for_each_host():
    hosts = {
        "gpu-a": {"labels": {"zone": "eu1"}, "gpus": gpus(2)},
        "gpu-b": {"labels": {"zone": "us1"}, "gpus": gpus(8)},
        "gpu-c": {"reachable": False},
    }
    result = plan(hosts, [dep("chat-70b", gpus_per_replica=4, selector={"zone": "eu1"})])
    assert result["assignments"] == []
    assert result["errors"] == [
        {
            "deployment": "chat-70b",
            "message": "chat-70b: 0/3 hosts fit — gpu-a: 2 GPUs free, needs 4; gpu-b: selector zone=eu1 not matched; "
            "gpu-c: unreachable",
            "missing_replicas": [0],
            "hosts": {
                "gpu-a": "2 GPUs free, needs 4",
                "gpu-b": "selector zone=eu1 not matched",
                "gpu-c": "unreachable",
            },
        }
    ]


# -- VRAM fit ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "total", "fits"),
    [
        ({"model_size_bytes": 14 * GIB}, L4, True),  # 14 x 1.2 + 2 = 18.8 GiB <= 0.9 x 24 GiB = 21.6
        ({"model_size_bytes": 16 * GIB}, L4, True),  # 16 x 1.2 + 2 = 21.2 GiB <= 21.6
        ({"model_size_bytes": 17 * GIB}, L4, False),  # 22.4 GiB > 21.6
        ({"model_size_bytes": 17 * GIB, "gpu_memory_utilization": 0.95}, L4, True),  # 22.4 <= 22.8
        ({"num_parameters": 8 * 10**9, "model_dtype": "bfloat16"}, L4, True),
        ({"num_parameters": 13 * 10**9, "model_dtype": "bfloat16"}, L4, False),
        ({"num_parameters": 13 * 10**9, "engine_options": {"quantization": "awq"}}, L4, True),
        ({"num_parameters": 70 * 10**9, "tensor_parallel_size": 2}, A100, False),  # 158.5 GiB / 2 > 72 GiB
        ({"num_parameters": 70 * 10**9, "tensor_parallel_size": 4}, A100, True),
        ({"num_parameters": 70 * 10**9}, A100, False),
        ({"vram_mib": 70000}, A100, True),
        ({"vram_mib": 80000}, A100, False),
    ],
)
def test_vram_need_against_usable_memory(fields, total, fits):
    result = plan({"h": {"gpus": gpus(4, total)}}, [dep(**fields)])
    assert bool(result["assignments"]) is fits
    if not fits:
        assert "too small" in result["errors"][0]["hosts"]["h"]


def test_too_small_reason_has_the_numbers():
    result = plan({"h": {"gpus": gpus(1, L4)}}, [dep(vram_mib=30000)])
    assert result["errors"][0]["message"] == (
        "chat: 0/1 hosts fit — h: 0 GPUs free, needs 1 (1 too small: needs 30000 MiB, 0.9 x 24576 MiB = 22118 MiB usable)"
    )


def test_free_memory_must_cover_the_reservation():
    hosts = {"h": {"gpus": gpus(1, A100, free=40000, used=A100 - 40000)}}
    assert (
        plan(hosts, [dep()])["errors"][0]["hosts"]["h"]
        == "0 GPUs free, needs 1 (1 low on free memory: needs 73728 MiB)"
    )
    assert placed(plan(hosts, [dep(gpu_memory_utilization=0.45)])) == {"chat-0": ("h", [0], 8000)}


def test_own_memory_counts_as_free():
    hosts = {"h": {"gpus": gpus(1, A100, used=int(A100 * 0.9))}}
    existing = [{"deployment": "chat", "replica": 0, "host": "h", "gpus": [0], "port": 8000}]
    result = plan(hosts, [dep()], existing)
    assert result["assignments"][0]["action"] == "keep"
    # Raising its own utilization still fits: the memory it holds now is free for it.
    assert plan(hosts, [dep(gpu_memory_utilization=0.95)], existing)["assignments"][0]["action"] == "keep"
    # Another deployment cannot use that GPU.
    other = plan(hosts, [dep(), dep("other")], existing)
    assert [e["deployment"] for e in other["errors"]] == ["other"]


def test_memory_of_removed_placements_is_free_for_others():
    hosts = {"h": {"gpus": gpus(1, A100, used=int(A100 * 0.9))}}
    existing = [{"deployment": "old", "replica": 0, "host": "h", "gpus": [0], "port": 8000}]
    result = plan(hosts, [dep("old", state="absent"), dep("new")], existing)
    assert placed(result) == {"new-0": ("h", [0], 8000)}
    assert [(r["name"], r["reason"]) for r in result["removals"]] == [("old-0", "state: absent")]


def test_unknown_size_only_checks_free_memory():
    result = plan({"h": {"gpus": gpus(1, L4)}}, [dep()])
    assert result["assignments"][0]["vram_per_gpu_mib"] is None
    assert result["estimates"]["chat"]["known"] is False


def test_lora_sizes_count():
    need = 14 * GIB
    fields = {"model_size_bytes": need, "lora_modules": [{"name": "a", "path": "/l/a", "size_bytes": 3 * GIB}]}
    result = plan({"h": {"gpus": gpus(1, L4)}}, [dep(**fields)])
    assert "too small" in result["errors"][0]["message"]


# -- spread and binpack ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        ("spread", {"chat-0": ("a", [0], 8000), "chat-1": ("b", [0], 8000), "chat-2": ("c", [0], 8000)}),
        ("binpack", {"chat-0": ("a", [0], 8000), "chat-1": ("a", [1], 8001), "chat-2": ("a", [2], 8002)}),
    ],
)
def test_spread_vs_binpack(placement, expected):
    hosts = {"a": host(4), "b": host(4), "c": host(4)}
    assert placed(plan(hosts, [dep(replicas=3, placement=placement)])) == expected


def test_spread_prefers_the_emptiest_host_and_binpack_the_fullest():
    hosts = {"a": host(8), "b": host(2), "c": host(4)}
    assert placed(plan(hosts, [dep(placement="spread")]))["chat-0"][0] == "a"
    assert placed(plan(hosts, [dep(placement="binpack")]))["chat-0"][0] == "b"


def test_spread_wraps_around_when_replicas_exceed_hosts():
    hosts = {"a": host(2), "b": host(2)}
    result = placed(plan(hosts, [dep(replicas=4)]))
    assert sorted(v[0] for v in result.values()) == ["a", "a", "b", "b"]
    assert sorted(v[2] for v in result.values()) == [8000, 8000, 8001, 8001]


def test_binpack_fills_hosts_with_several_deployments():
    hosts = {"a": host(4), "b": host(4)}
    result = placed(
        plan(hosts, [dep("x", placement="binpack", gpus_per_replica=2), dep("y", placement="binpack", port=9000)])
    )
    assert result["x-0"][0] == result["y-0"][0] == "a"


def test_tensor_parallel_gets_several_gpus_on_one_host():
    hosts = {"a": host(2), "b": host(4)}
    result = placed(plan(hosts, [dep(tensor_parallel_size=4)]))
    assert result == {"chat-0": ("b", [0, 1, 2, 3], 8000)}


def test_natural_host_order_breaks_ties():
    hosts = {f"gpu-{i}": host(1) for i in (10, 2, 1)}
    assert [v[0] for v in placed(plan(hosts, [dep(replicas=3)])).values()] == ["gpu-1", "gpu-2", "gpu-10"]


# -- selectors and model dirs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected_host"),
    [
        ({"zone": "eu1"}, "a"),
        ({"zone": ["us1", "ap1"]}, "b"),
        ({"zone": "eu1", "gpu": "h100"}, None),
        ({"gpu": "a100"}, "a"),
        ({"rack": 3}, "b"),
    ],
)
def test_selector(selector, expected_host):
    hosts = {
        "a": host(2, labels={"zone": "eu1", "gpu": "a100"}),
        "b": host(2, labels={"zone": "us1", "gpu": "a100", "rack": 3}),
    }
    result = plan(hosts, [dep(selector=selector)])
    if expected_host:
        assert placed(result)["chat-0"][0] == expected_host
    else:
        assert "selector" in result["errors"][0]["hosts"]["a"]


def test_local_models_only_on_hosts_that_allow_their_dir():
    hosts = {"a": host(2, allowed_model_dirs=["/srv/models"]), "b": host(4, allowed_model_dirs=["/data"])}
    result = plan(hosts, [dep(model="/data/chat")])
    assert placed(result)["chat-0"][0] == "b"
    result = plan(hosts, [dep(model="/elsewhere/chat")])
    assert result["errors"][0]["hosts"]["a"] == "model path /elsewhere/chat not under gpufleet_allowed_model_dirs"


# -- stability ---------------------------------------------------------------------------------------------------


def random_fleet(seed: int) -> tuple[dict, list]:
    rng = random.Random(seed)
    hosts = {
        f"gpu-{h}": {
            "labels": {"zone": rng.choice(["eu1", "us1"])},
            "gpus": gpus(rng.choice([1, 2, 4, 8]), rng.choice([A100, L4]), prefix=f"G{h}"),
            "used_ports": [22],
        }
        for h in range(rng.randint(3, 12))
    }
    deps = [
        dep(
            f"d{d}",
            replicas=rng.randint(1, 3),
            gpus_per_replica=rng.choice([1, 1, 2]),
            placement=rng.choice(["spread", "binpack"]),
            num_parameters=rng.choice([10**9, 7 * 10**9]),
            **({"selector": {"zone": "eu1"}} if d % 3 == 0 else {}),
            **({"port_range": [9000, 9003]} if d % 4 == 0 else {"port": 8000 + d * 10}),
        )
        for d in range(rng.randint(2, 12))
    ]
    return hosts, deps


@pytest.mark.parametrize("seed", range(12))
def test_rerun_moves_nothing(seed):
    hosts, deps = random_fleet(seed)
    first = plan(hosts, deps)
    occupy(hosts, first)
    second = plan(hosts, deps, as_existing(first))
    assert placed(second) == placed(first)
    assert {a["action"] for a in second["assignments"]} <= {"keep"}
    assert second["removals"] == []
    assert second["errors"] == first["errors"] or all("0/" in e["message"] for e in second["errors"])


@pytest.mark.parametrize("seed", range(6))
def test_output_does_not_depend_on_input_order(seed):
    hosts, deps = random_fleet(seed)
    first = plan(hosts, deps)
    rng = random.Random(seed)
    shuffled_hosts = dict(rng.sample(list(hosts.items()), len(hosts)))
    shuffled_deps = rng.sample(deps, len(deps))
    assert plan(shuffled_hosts, shuffled_deps) == first
    existing = as_existing(first)
    assert plan(hosts, deps, existing) == plan(shuffled_hosts, shuffled_deps, rng.sample(existing, len(existing)))


def test_new_empty_host_does_not_attract_existing_replicas():
    hosts = {"a": host(4), "b": host(4)}
    first = plan(hosts, [dep(replicas=2)])
    occupy(hosts, first)
    hosts["0-new"] = host(8)
    second = plan(hosts, [dep(replicas=2)], as_existing(first))
    assert placed(second) == placed(first)


def test_changed_gpu_count_updates_in_place_preferring_the_same_gpus():
    hosts = {"a": host(4), "b": host(8)}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [1], "port": 8000}]
    result = plan(hosts, [dep(tensor_parallel_size=2)], existing)
    assert placed(result) == {"chat-0": ("a", [0, 1], 8000)}
    assert result["assignments"][0]["action"] == "update"
    assert result["removals"] == []  # replaced in place by vllm_container


def test_moved_when_it_no_longer_fits_where_it_is():
    hosts = {"a": {"gpus": gpus(1, L4)}, "b": {"gpus": gpus(1, A100)}}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [0], "port": 8000}]
    result = plan(hosts, [dep(vram_mib=40000)], existing)
    assert placed(result) == {"chat-0": ("b", [0], 8000)}
    assert result["assignments"][0]["action"] == "move"
    assert result["assignments"][0]["previous"] == {"host": "a", "gpus": [0], "port": 8000}
    assert result["removals"][0]["reason"].startswith("no longer fits: GPU 0 too small")


def test_selector_change_moves_the_replica():
    hosts = {"a": host(1, labels={"zone": "eu1"}), "b": host(1, labels={"zone": "us1"})}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [0], "port": 8000}]
    result = plan(hosts, [dep(selector={"zone": "us1"})], existing)
    assert placed(result) == {"chat-0": ("b", [0], 8000)}
    assert result["removals"][0]["reason"] == "selector zone=us1 not matched"


def test_existing_by_container_key_and_uuid():
    hosts = {"a": {"gpus": gpus(2, prefix="GPU-a")}}
    existing = [{"name": "chat-1", "host": "a", "gpus": "GPU-a-1", "port": "8001"}]
    result = plan(hosts, [dep("chat", replicas=2, placement="binpack")], existing)
    assert placed(result) == {"chat-0": ("a", [0], 8000), "chat-1": ("a", [1], 8001)}
    assert [a["action"] for a in result["assignments"]] == ["create", "keep"]


def test_deployment_names_ending_in_digits():
    hosts = {"a": host(2)}
    existing = [{"name": "llama-3-0", "host": "a", "gpus": [0], "port": 8000}]
    result = plan(hosts, [dep("llama-3")], existing)
    assert result["assignments"][0]["action"] == "keep"
    assert container_name("llama-3", 0) == "llama-3-0"


def test_duplicate_replica_is_removed():
    hosts = {"a": host(2), "b": host(2)}
    existing = [
        {"deployment": "chat", "replica": 0, "host": "b", "gpus": [0], "port": 8000},
        {"deployment": "chat", "replica": 0, "host": "a", "gpus": [0], "port": 8000},
    ]
    result = plan(hosts, [dep()], existing)
    assert placed(result) == {"chat-0": ("a", [0], 8000)}
    assert [(r["host"], r["reason"]) for r in result["removals"]] == [("b", "duplicate of a replica kept elsewhere")]


def test_gpu_gone_from_host():
    hosts = {"a": host(1)}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [3], "port": 8000}]
    result = plan(hosts, [dep()], existing)
    assert placed(result) == {"chat-0": ("a", [0], 8000)}
    assert result["assignments"][0]["action"] == "update"


# -- scaling and state -------------------------------------------------------------------------------------------


def test_scale_up_keeps_existing_replicas():
    hosts = {"a": host(2), "b": host(2)}
    first = plan(hosts, [dep(replicas=1)])
    occupy(hosts, first)
    second = plan(hosts, [dep(replicas=3)], as_existing(first))
    assert placed(second)["chat-0"] == placed(first)["chat-0"]
    assert [a["action"] for a in second["assignments"]] == ["keep", "create", "create"]


def test_scale_down_removes_the_highest_replicas():
    hosts = {"a": host(2), "b": host(2)}
    first = plan(hosts, [dep(replicas=3)])
    second = plan(occupy(hosts, first), [dep(replicas=1)], as_existing(first))
    assert placed(second) == {"chat-0": placed(first)["chat-0"]}
    assert [(r["name"], r["reason"]) for r in second["removals"]] == [
        ("chat-1", "scaled down to 1 replica"),
        ("chat-2", "scaled down to 1 replica"),
    ]


def test_scale_to_zero_and_absent():
    hosts = {"a": host(2)}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [0], "port": 8000}]
    assert plan(hosts, [dep(replicas=0)], existing)["removals"][0]["reason"] == "scaled down to 0 replicas"
    result = plan(hosts, [{"name": "chat", "state": "absent"}], existing)
    assert result["assignments"] == []
    assert result["removals"][0]["reason"] == "state: absent"


@pytest.mark.parametrize("prune", [False, True])
def test_undeclared_kept_unless_prune(prune):
    hosts = {"a": host(1)}
    existing = [{"deployment": "legacy", "replica": 0, "host": "a", "gpus": [0], "port": 8000}]
    result = plan(hosts, [dep()], existing, prune=prune)
    if prune:
        assert result["removals"][0]["reason"] == "not declared in gpufleet_deployments (prune)"
        assert placed(result) == {"chat-0": ("a", [0], 8000)}
    else:
        assert result["undeclared"][0]["name"] == "legacy-0"
        assert result["errors"][0]["hosts"]["a"] == "0 GPUs free, needs 1 (1 in use)"


# -- pinning -----------------------------------------------------------------------------------------------------


def test_pinned_host_and_gpus():
    hosts = {"a": host(4), "b": host(4)}
    result = plan(hosts, [dep(host="b", gpus=[2, 3], replicas=2)])
    assert placed(result) == {"chat-0": ("b", [2], 8000), "chat-1": ("b", [3], 8001)}


def test_pinned_by_uuid():
    hosts = {"a": {"gpus": gpus(4, prefix="GPU-a")}}
    result = plan(hosts, [dep(host="a", gpus=["GPU-a-3", "GPU-a-1"])])
    assert placed(result) == {"chat-0": ("a", [1, 3], 8000)}
    assert result["assignments"][0]["gpu_uuids"] == ["GPU-a-1", "GPU-a-3"]


def test_pinned_host_only_picks_gpus_there():
    hosts = {"a": host(4), "b": host(8)}
    assert placed(plan(hosts, [dep(host="a")]))["chat-0"][0] == "a"


def test_pinned_gpu_in_use_or_missing():
    hosts = {"a": host(2)}
    result = plan(hosts, [dep("first", host="a", gpus=[1]), dep("second", host="a", gpus=[1], port=9000)])
    assert result["errors"][0]["message"] == "second: 0/1 hosts fit — a: GPU 1 in use"
    result = plan(hosts, [dep(host="a", gpus=[5])])
    assert result["errors"][0]["message"] == "chat: 0/1 hosts fit — a: GPU 5 not on the host"
    result = plan(hosts, [dep(host="zz")])
    assert result["errors"][0]["message"] == "chat: 0/1 hosts fit — zz: not in the inventory"


def test_repinning_moves():
    hosts = {"a": host(2), "b": host(2)}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [0], "port": 8000}]
    result = plan(hosts, [dep(host="b")], existing)
    assert placed(result) == {"chat-0": ("b", [0], 8000)}
    assert result["removals"][0]["reason"] == "pinned to b"
    result = plan(hosts, [dep(host="a", gpus=[1])], existing)
    assert placed(result) == {"chat-0": ("a", [1], 8000)}
    assert result["assignments"][0]["action"] == "update"


def test_pinned_first_so_a_flexible_deployment_does_not_take_the_pinned_gpu():
    hosts = {"a": host(1), "b": host(1)}
    result = plan(hosts, [dep("aaa-flex"), dep("zzz-pinned", host="a", gpus=[0], port=9000)])
    assert placed(result) == {"aaa-flex-0": ("b", [0], 8000), "zzz-pinned-0": ("a", [0], 9000)}


# -- ports -------------------------------------------------------------------------------------------------------


def test_port_offset_per_replica_on_the_same_host():
    result = plan({"a": host(4)}, [dep(replicas=3, port=8100)])
    assert sorted(v[2] for v in placed(result).values()) == [8100, 8101, 8102]


def test_foreign_port_in_use():
    hosts = {"a": host(2, used_ports=[8000]), "b": host(1)}
    assert placed(plan(hosts, [dep()]))["chat-0"][0] == "b"
    result = plan({"a": host(2, used_ports=[8000])}, [dep()])
    assert result["errors"][0]["message"] == "chat: 0/1 hosts fit — a: port 8000 in use"


def test_two_deployments_on_one_host_with_the_same_port():
    result = plan({"a": host(2)}, [dep("x"), dep("y")])
    assert [e["message"] for e in result["errors"]] == ["y: 0/1 hosts fit — a: port 8000 in use"]


def test_port_range_allocation():
    hosts = {"a": host(4, used_ports=[9000])}
    result = plan(hosts, [dep("x", port_range=[9000, 9002]), dep("y", port_range="9000-9002")])
    assert sorted(v[2] for v in placed(result).values()) == [9001, 9002]
    result = plan(hosts, [dep("x", port_range=[9000, 9001]), dep("y", port_range=[9000, 9001])])
    assert result["errors"][0]["message"] == "y: 0/1 hosts fit — a: no free port in 9000-9001"


def test_own_port_is_not_foreign():
    hosts = {"a": host(1, used_ports=[8000, 22])}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [0], "port": 8000}]
    assert plan(hosts, [dep()], existing)["assignments"][0]["action"] == "keep"


def test_changed_port_keeps_host_and_gpus():
    hosts = {"a": host(1, used_ports=[8000])}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [0], "port": 8000}]
    result = plan(hosts, [dep(port=8080)], existing)
    assert placed(result) == {"chat-0": ("a", [0], 8080)}
    assert result["assignments"][0]["action"] == "update"


def test_port_freed_by_a_removal_can_be_reused():
    hosts = {"a": host(2, used_ports=[8000])}
    existing = [{"deployment": "old", "replica": 0, "host": "a", "gpus": [0], "port": 8000}]
    result = plan(hosts, [dep("old", state="absent"), dep("new")], existing)
    assert placed(result)["new-0"][2] == 8000


# -- reservations ------------------------------------------------------------------------------------------------


def test_reserved_gpus_are_skipped():
    hosts = {"a": host(4, reservations=[0, {"gpu": "GPU-x", "reason": "x"}, {"gpu": 1, "reason": "training"}])}
    result = plan(hosts, [dep(tensor_parallel_size=2)])
    assert placed(result) == {"chat-0": ("a", [2, 3], 8000)}
    result = plan(hosts, [dep(tensor_parallel_size=4)])
    assert result["errors"][0]["hosts"]["a"] == "2 GPUs free, needs 4 (2 reserved)"


def test_memory_reservation_reduces_free_memory():
    hosts = {"a": {"gpus": gpus(1, A100), "reservations": [{"gpu": 0, "memory_mib": 20000}]}}
    assert plan(hosts, [dep()])["errors"][0]["hosts"]["a"].startswith("0 GPUs free, needs 1 (1 low on free memory")
    assert plan(hosts, [dep(gpu_memory_utilization=0.7)])["assignments"]


def test_newly_reserved_gpu_evicts_its_placement():
    hosts = {"a": host(2, reservations=[{"gpu": 0, "reason": "maintenance"}])}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [0], "port": 8000}]
    result = plan(hosts, [dep()], existing)
    assert placed(result) == {"chat-0": ("a", [1], 8000)}
    assert result["assignments"][0]["action"] == "update"


# -- GPU health ---------------------------------------------------------------------------------------------------


def sick(info: dict, index: int, *issues: str) -> dict:
    gpu = info["gpus"][index]
    gpu.update(healthy=False, health_issues=list(issues))
    return info


def test_unhealthy_gpus_are_skipped_and_the_reason_says_why():
    hot = "temperature 95 C is above max_temperature_c (85 C)"
    hosts = {"a": sick(host(2), 0, hot), "b": sick(host(1), 0, "cannot read temperature_c: GPU is lost")}
    result = plan(hosts, [dep()])
    assert placed(result) == {"chat-0": ("a", [1], 8000)}
    result = plan(hosts, [dep(tensor_parallel_size=2)])
    assert result["errors"][0]["hosts"] == {
        "a": f"1 GPU free, needs 2 (1 unhealthy ({hot}))",
        "b": "0 GPUs free, needs 2 (1 unhealthy (cannot read temperature_c: GPU is lost))",
    }
    # Pinned to the sick GPU: the reason names it.
    result = plan(hosts, [dep(host="a", gpus=[0])])
    assert result["errors"][0]["hosts"] == {"a": f"GPU 0 unhealthy ({hot})"}
    # No surge onto it either: the only free GPU of a is sick, so a rollout replaces in place.
    assert "unhealthy" not in str(fleet_plan(hosts, [dep()])["rollout"])


def test_replica_on_a_gpu_that_turns_unhealthy_is_kept_with_a_warning():
    hosts = {"a": sick(host(2), 0, "temperature 95 C is above max_temperature_c (85 C)")}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [0], "port": 8000}]
    result = plan(hosts, [dep(replicas=2)], existing)
    assert placed(result) == {"chat-0": ("a", [0], 8000), "chat-1": ("a", [1], 8001)}
    assert result["assignments"][0]["action"] == "keep"
    assert result["warnings"] == [
        "chat-0: runs on a GPU 0, which is unhealthy (temperature 95 C is above max_temperature_c (85 C)); kept "
        "there, no new replica goes to that GPU"
    ]


# -- exclusivity and sharing -------------------------------------------------------------------------------------


def test_one_deployment_per_gpu():
    result = plan({"a": host(1)}, [dep("x"), dep("y", port=9000, gpu_memory_utilization=0.1)])
    assert result["errors"][0]["message"] == "y: 0/1 hosts fit — a: 0 GPUs free, needs 1 (1 in use)"


def test_sharing_when_both_allow_it():
    deps = [
        dep("x", gpu_sharing=True, gpu_memory_utilization=0.4),
        dep("y", gpu_sharing=True, gpu_memory_utilization=0.4, port=9000),
    ]
    result = plan({"a": host(1)}, deps)
    assert placed(result) == {"x-0": ("a", [0], 8000), "y-0": ("a", [0], 9000)}
    # A third one no longer has the free memory.
    result = plan({"a": host(1)}, [*deps, dep("z", gpu_sharing=True, gpu_memory_utilization=0.4, port=9100)])
    assert result["errors"][0]["hosts"]["a"].startswith("0 GPUs free, needs 1 (1 low on free memory")
    # Only one side allowing it is not enough.
    result = plan({"a": host(1)}, [deps[0], dep("y", gpu_memory_utilization=0.4, port=9000)])
    assert [e["deployment"] for e in result["errors"]] == ["y"]


def test_sharing_replicas_of_one_deployment_do_not_stack():
    result = plan({"a": host(2)}, [dep(gpu_sharing=True, gpu_memory_utilization=0.3, replicas=2)])
    assert sorted(g for v in placed(result).values() for g in v[1]) == [0, 1]


# -- unreachable hosts -------------------------------------------------------------------------------------------


def test_unreachable_placements_are_kept_and_reported():
    hosts = {"a": {"reachable": False}, "b": host(2)}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [1], "port": 8000}]
    result = plan(hosts, [dep()], existing)
    assert placed(result) == {"chat-0": ("a", [1], 8000)}
    assert result["assignments"][0]["action"] == "keep"
    assert result["assignments"][0]["reachable"] is False
    assert result["warnings"] == ["chat-0: a is unreachable; its placement is kept, not moved"]


@pytest.mark.parametrize("where", ["global", "deployment"])
def test_move_from_unreachable(where):
    hosts = {"a": {"reachable": False}, "b": host(2)}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [1], "port": 8000}]
    if where == "global":
        result = plan(hosts, [dep()], existing, move_from_unreachable=True)
    else:
        result = plan(hosts, [dep(move_from_unreachable=True)], existing)
    assert placed(result) == {"chat-0": ("b", [0], 8000)}
    assert result["assignments"][0]["action"] == "move"
    assert result["removals"][0]["reason"] == "moved: host unreachable"


def test_deployment_can_refuse_the_global_move():
    hosts = {"a": {"reachable": False}, "b": host(2)}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [1], "port": 8000}]
    result = plan(hosts, [dep(move_from_unreachable=False)], existing, move_from_unreachable=True)
    assert placed(result) == {"chat-0": ("a", [1], 8000)}


def test_unreachable_hosts_get_no_new_replicas():
    hosts = {"a": {"reachable": False, "gpus": gpus(8)}, "b": host(1)}
    result = plan(hosts, [dep(replicas=2)])
    assert placed(result) == {"chat-0": ("b", [0], 8000)}
    assert result["errors"][0]["message"] == (
        "chat: 1/2 replicas placed, 0/2 hosts fit the rest — a: unreachable; b: 0 GPUs free, needs 1 (1 in use)"
    )
    assert result["errors"][0]["missing_replicas"] == [1]


def test_existing_on_a_host_outside_the_inventory_is_left_alone():
    result = plan({"a": host(1)}, [dep()], [{"deployment": "chat", "replica": 0, "host": "gone", "gpus": [0]}])
    assert placed(result) == {"chat-0": ("a", [0], 8000)}
    assert result["warnings"] == ["chat-0: runs on gone, which is not in the inventory; left alone, remove it by hand"]


# -- fleet_plan: what the role consumes --------------------------------------------------------------------------


def test_fleet_plan_per_host_container_specs():
    hosts = {"gpu-a": {**host(2), "runtime": "podman", "models_root": "/srv/m"}, "gpu-b": host(1)}
    deps = [
        dep(
            "chat",
            model={"repo_id": "org/chat", "revision": "v2"},
            replicas=2,
            engine_options={"max_model_len": 4096},
            env={"A": "1"},
            secret_env={"TOKEN": "s3cret"},
            api_key="k3y",
            extra_args=["--seed", "1"],
            lora_modules=["sql=/l/sql"],
        ),
        dep("blob", model="https://x/blob.tar", port=9000, serve_for=1.5, image="vllm/vllm-openai:v0.10.2"),
    ]
    out = fleet_plan(hosts, deps)
    assert sorted(out["hosts"]) == ["gpu-a", "gpu-b"]
    assert out["remove"] == {"gpu-a": [], "gpu-b": []}
    spec = next(s for s in out["hosts"]["gpu-a"] if s["deployment"] == "chat")
    assert spec["container"] == {
        "max_model_len": 4096,
        "name": spec["name"],
        "state": "started",
        "runtime": "podman",
        # model_sync brings the hub model to <models_root of gpu-a>/<deployment>: the container serves that path
        # (no hub id, no revision), and the image comes from vllm_image (no vllm_version argument).
        "model": "/srv/m/chat",
        "served_model_name": ["chat"],
        "port": 8000,
        "gpus": spec["gpus"],
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "gpu_memory_utilization": 0.9,
        "extra_args": ["--seed", "1"],
        "lora_modules": [{"name": "sql", "path": "/l/sql"}],
        "env": {"A": "1"},
        "serve_for": "infinite",
        "max_failed_restarts": 3,
        "start_timeout": 1800,
        "idle_pause_after": None,  # the warm cache (lifecycle record, not in the digest)
        "pin": False,
        # what the replica is declared with, compared by the rollout (never a secret: a salted hash of them)
        "labels": {"gpufleet.plan-digest": spec["digest"]},
        "smoke_test": True,  # the readiness gate's real request (not in the digest)
    }
    assert len(spec["digest"]) == 16 and "s3cret" not in str(spec) and "k3y" not in str(spec)
    assert spec["model_path"] == "/srv/m/chat" and spec["vllm_version"] == "latest"
    assert spec["model_sync"] == {
        "name": "chat",
        "source": "hf",
        "models_root": "/srv/m",
        "repo_id": "org/chat",
        "revision": "v2",
        "keep_revisions": 2,
    }
    assert spec["secret_env_keys"] == ["TOKEN"]
    assert spec["api_key_set"] is True
    assert "s3cret" not in repr(out) and "k3y" not in repr(out)
    blob = next(s for h in out["hosts"].values() for s in h if s["deployment"] == "blob")
    assert blob["container"]["model"] == blob["model_path"] == blob["model_sync"]["models_root"] + "/blob"
    assert blob["container"]["serve_for"] == blob["serve_for"] == 1.5  # hours, as the schema parsed it
    assert blob["container"]["image"] == "vllm/vllm-openai:v0.10.2"
    assert "vllm_version" not in blob["container"]
    assert blob["model_sync"]["url"] == "https://x/blob.tar"
    assert out["summary"] == {
        "create": 3,
        "keep": 0,
        "update": 0,
        "move": 0,
        "remove": 0,
        "undeclared": 0,
        "unschedulable": 0,
    }


def test_fleet_plan_remove_lists_per_host():
    hosts = {"a": host(2), "b": host(2)}
    existing = [
        {"name": "chat-0", "host": "a", "gpus": [0], "port": 8000},
        {"name": "chat-1", "host": "b", "gpus": [0], "port": 8000},
    ]
    out = fleet_plan(hosts, [dep(replicas=1)], existing)
    assert [s["name"] for s in out["hosts"]["a"]] == ["chat-0"]
    assert out["hosts"]["b"] == []
    assert [r["name"] for r in out["remove"]["b"]] == ["chat-1"]
    assert out["summary"]["keep"] == 1 and out["summary"]["remove"] == 1


def test_duplicate_prefers_the_copy_on_a_reachable_host():
    hosts = {"a": {"reachable": False}, "b": host(2)}
    existing = [
        {"deployment": "chat", "replica": 0, "host": "a", "gpus": [0], "port": 8000},
        {"deployment": "chat", "replica": 0, "host": "b", "gpus": [1], "port": 8000},
    ]
    result = plan(hosts, [dep()], existing)
    assert placed(result) == {"chat-0": ("b", [1], 8000)}
    assert [(r["host"], r["reason"]) for r in result["removals"]] == [("a", "duplicate of a replica kept elsewhere")]


def test_removal_on_an_unreachable_host_is_listed_and_warned():
    hosts = {"a": {"reachable": False}, "b": host(2)}
    existing = [{"deployment": "chat", "replica": 1, "host": "a", "gpus": [0], "port": 8000}]
    result = plan(hosts, [dep(replicas=1)], existing)
    assert [(r["name"], r["host"], r["reason"]) for r in result["removals"]] == [
        ("chat-1", "a", "scaled down to 1 replica")
    ]
    assert result["warnings"] == ["chat-1: a is unreachable; its removal waits until it is back"]
    assert placed(result) == {"chat-0": ("b", [0], 8000)}


def test_container_spec_serves_the_path_model_sync_produces(tmp_path):
    """hf and url models: the container gets exactly the path model_sync returns on that host (its models root),
    no hub id and no revision; a local model is served from its own path; vllm_version never reaches the container;
    serve_for is handed over as the schema parsed it (hours or "infinite"), which vllm_container reads with the same
    parser (module_utils/_duration.py)."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._duration import parse_duration
    from ansible_collections.gpufleet.vllm.plugins.module_utils._model import layout

    root = tmp_path / "models"
    hosts = {"a": {**host(4), "models_root": str(root) + "/"}}
    deps = [
        dep("hub", model={"repo_id": "org/hub", "revision": "v1"}, engine_options={"revision": "v1"}, serve_for=12),
        dep("blob", model="https://x/blob.tar", serve_for="90m", vllm_version="latest", port=8001),
        dep("loc", model="/data/loc", serve_for="infinite", port=8002),
    ]
    specs = {s["deployment"]: s for s in fleet_plan(hosts, deps)["hosts"]["a"]}
    for name in ("hub", "blob"):
        c = specs[name]["container"]
        assert c["model"] == str(root / name) == specs[name]["model_path"]
        assert "revision" not in c and "vllm_version" not in c and "image" not in c
        # What model_sync itself computes for these arguments (the one model layout, module_utils/_model/layout.py).
        sync_args = dict(specs[name]["model_sync"])
        assert layout.model_path(sync_args["models_root"], sync_args["name"]) == c["model"]
    assert specs["loc"]["container"]["model"] == "/data/loc"
    assert parse_duration(specs["hub"]["container"]["serve_for"]).total_seconds() == 12 * 3600
    assert parse_duration(specs["blob"]["container"]["serve_for"]).total_seconds() == 90 * 60
    assert parse_duration(specs["loc"]["container"]["serve_for"]) is None
    assert [specs[n]["container"]["serve_for"] for n in ("hub", "blob", "loc")] == [12.0, 1.5, "infinite"]


def test_fleet_plan_validates_once_and_places_like_plan(monkeypatch):
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import payload, placement

    hosts = {"a": host(2), "b": host(2)}
    deps = [dep("chat", replicas=2, placement="spread", port=8000), dep("emb", port=8100)]
    calls = []
    real = placement.validate_deployments
    # Counted wherever the package calls it: the payload (fleet_plan) and the placement (plan).
    for module in (payload, placement):
        monkeypatch.setattr(module, "validate_deployments", lambda d: calls.append(1) or real(d))
    result = fleet_plan(hosts, deps)
    assert len(calls) == 1
    assert placed(result) == placed(plan(hosts, deps))


def test_fleet_plan_images_per_host_once_each_in_spec_order():
    hosts = {"a": host(4), "b": host(1), "c": host(1, labels={"zone": "x"})}
    deps = [
        dep("chat", replicas=2, host="a", port=8000, vllm_version="0.10.2"),
        dep("emb", port=8100, vllm_version="0.10.2", selector={"zone": "none"}, state="absent"),
        dep("rr", port=8200, image="reg/vllm:custom", host="a"),
    ]
    out = fleet_plan(hosts, deps)
    specs_a = out["hosts"]["a"]
    assert [s["name"] for s in specs_a] == ["chat-0", "chat-1", "rr-0"]
    assert out["images"]["a"] == [[None, "0.10.2"], ["reg/vllm:custom", specs_a[2]["vllm_version"]]]
    assert out["images"]["b"] == [] and out["images"]["c"] == []
    assert set(out["images"]) == set(hosts)


# -- gpus: all ---------------------------------------------------------------------------------------------------


def test_gpus_all_takes_whole_hosts_with_tp_their_count():
    hosts = {"a": host(2), "b": host(4), "c": host(1)}
    existing = [{"deployment": "other", "replica": 0, "host": "c", "gpus": [0], "port": 9000}]
    planned = fleet_plan(hosts, [dep(gpus="all", replicas=3), dep("other", port=9000)], existing)
    assert placed(planned) == {
        "chat-0": ("b", [0, 1, 2, 3], 8000),
        "chat-1": ("a", [0, 1], 8000),
        "other-0": ("c", [0], 9000),
    }
    specs = {s["name"]: s["container"] for h in planned["hosts"].values() for s in h}
    assert specs["chat-0"]["tensor_parallel_size"] == 4 and specs["chat-1"]["tensor_parallel_size"] == 2
    assert specs["chat-0"]["gpus"] == [0, 1, 2, 3]
    assert [a["gpus_all"] for a in planned["assignments"]] == [True, True, False]
    # c has a GPU taken by another deployment: not eligible; a and b are whole hosts now.
    assert planned["errors"][0]["hosts"] == {
        "a": "gpus: all needs every GPU: GPU 0 in use by chat; GPU 1 in use by chat",
        "b": "gpus: all needs every GPU: GPU 0 in use by chat; GPU 1 in use by chat; GPU 2 in use by chat; "
        "GPU 3 in use by chat",
        "c": "gpus: all needs every GPU: GPU 0 in use by other",
    }
    # Nothing else goes to a whole host, and a re-plan keeps everything.
    deps = [dep(gpus="all", replicas=2), dep("other", port=9000), dep("late", port=9100)]
    result = plan(hosts, deps, as_existing(planned))
    assert {a["name"]: a["action"] for a in result["assignments"]} == {
        "chat-0": "keep",
        "chat-1": "keep",
        "other-0": "keep",
    }
    assert result["errors"][0]["message"].startswith("late: 0/3 hosts fit")


def test_gpus_all_with_a_tensor_parallel_size_needs_that_many_gpus_and_fits_the_vram_share():
    hosts = {"a": host(2), "b": host(4, L4)}
    result = plan(hosts, [dep(gpus="all", tensor_parallel_size=4)])
    assert placed(result) == {"chat-0": ("b", [0, 1, 2, 3], 8000)}
    result = plan(hosts, [dep(gpus="all", tensor_parallel_size=4, model_size_bytes=100 * GIB)])
    # 100 GiB x 1.2 + 2 GiB over 4 GPUs: 31232 MiB each, more than 0.9 x an L4.
    assert result["errors"][0]["hosts"]["a"] == (
        "gpus: all is 2 GPUs here but tensor_parallel_size x pipeline_parallel_size = 4"
    )
    assert result["errors"][0]["hosts"]["b"].startswith("gpus: all needs every GPU: GPU 0 too small: needs 31232 MiB")
    ok = plan(hosts, [dep(gpus="all", model_size_bytes=100 * GIB)])
    assert placed(ok) == {"chat-0": ("a", [0, 1], 8000)} and ok["assignments"][0]["vram_per_gpu_mib"] == 62464


def test_gpus_all_follows_the_hosts_gpus():
    hosts = {"a": host(3)}
    existing = [{"deployment": "chat", "replica": 0, "host": "a", "gpus": [0, 1], "port": 8000}]
    result = plan(hosts, [dep(gpus="all")], existing)
    assert placed(result) == {"chat-0": ("a", [0, 1, 2], 8000)} and result["assignments"][0]["action"] == "update"
    hosts["a"] = sick(host(3), 2, "GPU is lost")
    kept = plan(hosts, [dep(gpus="all")], as_existing(result))
    assert kept["assignments"][0]["action"] == "keep" and "GPU 2, which is unhealthy" in kept["warnings"][0]
    assert plan(hosts, [dep(gpus="all")])["errors"][0]["hosts"] == {
        "a": "gpus: all needs every GPU: GPU 2 unhealthy (GPU is lost)"
    }
