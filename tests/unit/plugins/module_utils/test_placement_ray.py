"""Multi-host replicas (distributed: ray): fewest hosts, even shares, head first by name, Ray port blocks, kept or
removed as a whole, unreachable workers, orphans, the schema's refusals."""

from __future__ import annotations

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.placement import plan
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import ports as ray_ports

A100 = 81920


def gpus(n: int, prefix: str) -> list[dict]:
    return [
        {"index": i, "uuid": f"GPU-{prefix}-{i}", "memory_total_mib": A100, "memory_free_mib": A100} for i in range(n)
    ]


def hosts(**counts: int) -> dict:
    return {
        name.replace("_", "-"): {"reachable": True, "labels": {}, "gpus": gpus(n, name)} for name, n in counts.items()
    }


def dep(**fields) -> dict:
    return {"name": "big", "model": "org/big", "distributed": "ray", **fields}


def as_existing(result: dict) -> list[dict]:
    """The placements as the hosts report them: the head (vLLM's port) and each worker, with role and Ray block."""
    out = []
    for a in result["assignments"]:
        ray = a["ray"]
        role = {"ray_role": "head", "ray_port": ray["port"]} if ray else {}
        out.append(
            {
                "deployment": a["deployment"],
                "replica": a["replica"],
                "host": a["host"],
                "gpus": a["gpus"],
                "port": a["port"],
                **role,
            }
        )
        for w in (ray or {}).get("workers", []):
            out.append(
                {
                    "deployment": a["deployment"],
                    "replica": a["replica"],
                    "host": w["host"],
                    "gpus": w["gpus"],
                    "port": None,
                    "ray_role": "worker",
                    "ray_port": ray["port"],
                }
            )
    return out


def test_replica_larger_than_any_host_spans_the_fewest_hosts_head_first_by_name():
    result = plan(hosts(gpu_c=2, gpu_a=2, gpu_b=1), [dep(tensor_parallel_size=2, pipeline_parallel_size=2)])
    assert result["errors"] == []
    (asg,) = result["assignments"]
    assert (asg["host"], asg["gpus"], asg["port"], asg["action"]) == ("gpu-a", [0, 1], 8000, "create")
    assert asg["hosts"] == ["gpu-a", "gpu-c"]  # gpu-b has 1 GPU: a 2 + 2 split needs 2 on each
    assert asg["ray"] == {
        "port": ray_ports.FIRST,
        "workers": [{"host": "gpu-c", "gpus": [0, 1], "gpu_uuids": ["GPU-gpu_c-0", "GPU-gpu_c-1"]}],
    }
    assert asg["gpu_uuids"] == ["GPU-gpu_a-0", "GPU-gpu_a-1"]


def test_one_host_that_fits_needs_no_ray_and_uneven_splits_use_more_hosts():
    one = plan(hosts(gpu_a=4, gpu_b=2), [dep(tensor_parallel_size=4)])
    assert [(a["host"], a["ray"], a["hosts"]) for a in one["assignments"]] == [("gpu-a", None, ["gpu-a"])]
    # 3 GPUs over hosts of 2: not 2 hosts (3 does not split in two), 3 hosts with one GPU each.
    three = plan(hosts(gpu_a=2, gpu_b=2, gpu_c=2), [dep(tensor_parallel_size=3)])
    (asg,) = three["assignments"]
    assert asg["hosts"] == ["gpu-a", "gpu-b", "gpu-c"]
    assert [len(asg["gpus"])] + [len(w["gpus"]) for w in asg["ray"]["workers"]] == [1, 1, 1]


def test_without_distributed_it_stays_unschedulable_and_selectors_still_apply():
    no_ray = plan(hosts(gpu_a=2, gpu_b=2), [dep(distributed="none", tensor_parallel_size=4)])
    assert no_ray["assignments"] == []
    assert "0/2 hosts fit" in no_ray["errors"][0]["message"]
    inv = hosts(gpu_a=2, gpu_b=2, gpu_c=2)
    inv["gpu-a"]["labels"] = {"zone": "eu"}
    inv["gpu-c"]["labels"] = {"zone": "eu"}
    (asg,) = plan(inv, [dep(tensor_parallel_size=4, selector={"zone": "eu"})])["assignments"]
    assert asg["hosts"] == ["gpu-a", "gpu-c"]
    too_few = plan(inv, [dep(tensor_parallel_size=6, selector={"zone": "eu"})])
    assert too_few["assignments"] == [] and too_few["errors"][0]["missing_replicas"] == [0]


def test_two_clusters_on_the_same_hosts_get_their_own_port_blocks_and_gpus():
    # 6 GPUs per replica, hosts of 5: the first takes 3 + 3 on gpu-a and gpu-b, the second 2 + 2 + 2 on all three.
    result = plan(hosts(gpu_a=5, gpu_b=5, gpu_c=5), [dep(replicas=2, tensor_parallel_size=6)])
    assert result["errors"] == []
    first, second = result["assignments"]
    assert (first["hosts"], second["hosts"]) == (["gpu-a", "gpu-b"], ["gpu-a", "gpu-b", "gpu-c"])
    assert (first["ray"]["port"], second["ray"]["port"]) == (ray_ports.FIRST, ray_ports.FIRST + ray_ports.BLOCK)
    assert (first["port"], second["port"]) == (8000, 8001)  # both heads on gpu-a
    taken = [
        (h, g)
        for a in result["assignments"]
        for h, gs in [(a["host"], a["gpus"])] + [(w["host"], w["gpus"]) for w in a["ray"]["workers"]]
        for g in gs
    ]
    assert len(taken) == len(set(taken)) == 12  # no GPU given twice


def test_a_rerun_keeps_the_whole_replica_with_its_ray_block():
    inv = hosts(gpu_a=2, gpu_b=2)
    first = plan(inv, [dep(tensor_parallel_size=4)])
    again = plan(inv, [dep(tensor_parallel_size=4)], as_existing(first))
    (asg,) = again["assignments"]
    assert (asg["action"], asg["hosts"], asg["ray"]["port"]) == ("keep", ["gpu-a", "gpu-b"], ray_ports.FIRST)
    assert again["removals"] == []
    # A second deployment now sees those GPUs and that port block taken.
    more = plan(
        hosts(gpu_a=4, gpu_b=4),
        [dep(tensor_parallel_size=4), dep(name="other", tensor_parallel_size=4, port=8100)],
        as_existing(first),
    )
    other = next(a for a in more["assignments"] if a["deployment"] == "other")
    assert other["hosts"] == ["gpu-a", "gpu-b"] and other["gpus"] == [2, 3]
    assert other["ray"]["port"] == ray_ports.FIRST + ray_ports.BLOCK


def test_a_part_that_no_longer_fits_moves_the_whole_replica():
    inv = hosts(gpu_a=2, gpu_b=2, gpu_c=2)
    first = plan(inv, [dep(tensor_parallel_size=4)])
    assert first["assignments"][0]["hosts"] == ["gpu-a", "gpu-b"]
    inv["gpu-b"]["reservations"] = [{"gpu": 1, "reason": "training"}]
    moved = plan(inv, [dep(tensor_parallel_size=4)], as_existing(first))
    assert sorted((r["host"], r["ray_role"]) for r in moved["removals"]) == [("gpu-a", "head"), ("gpu-b", "worker")]
    assert {r["reason"] for r in moved["removals"]} == {"GPU 1 on gpu-b reserved (training)"}
    (asg,) = moved["assignments"]
    assert asg["hosts"] == ["gpu-a", "gpu-c"] and asg["action"] == "create"


def test_unreachable_worker_host_keeps_the_replica_unless_moved_and_orphans_go():
    inv = hosts(gpu_a=2, gpu_b=2, gpu_c=2)
    existing = as_existing(plan(inv, [dep(tensor_parallel_size=4)]))
    inv["gpu-b"]["reachable"] = False
    kept = plan(inv, [dep(tensor_parallel_size=4)], existing)
    (asg,) = kept["assignments"]
    assert asg["hosts"] == ["gpu-a", "gpu-b"] and kept["removals"] == []
    assert any("unreachable" in w for w in kept["warnings"])
    moved = plan(inv, [dep(tensor_parallel_size=4)], existing, move_from_unreachable=True)
    assert sorted(r["host"] for r in moved["removals"]) == ["gpu-a", "gpu-b"]
    assert moved["assignments"][0]["hosts"] == ["gpu-a", "gpu-c"]
    inv["gpu-b"]["reachable"] = True
    orphan = plan(inv, [dep(tensor_parallel_size=4)], [e for e in existing if e.get("ray_role") == "worker"])
    assert [(r["host"], r["reason"]) for r in orphan["removals"]] == [("gpu-b", "its Ray head is gone")]


def test_a_kept_multi_host_replica_of_a_deployment_set_back_to_one_host_is_removed():
    inv = hosts(gpu_a=2, gpu_b=2)
    existing = as_existing(plan(inv, [dep(tensor_parallel_size=4)]))
    result = plan(hosts(gpu_a=4, gpu_b=2), [dep(distributed="none", tensor_parallel_size=4)], existing)
    assert {r["reason"] for r in result["removals"]} == {"distributed is none: a replica's GPUs must be on one host"}
    assert result["assignments"][0]["ray"] is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"distributed": "mpi"}, "distributed: must be one of none, ray"),
        ({"host": "gpu-a"}, "host pins one host"),
        ({"gpu_sharing": True}, "gpu_sharing shares GPUs"),
    ],
)
def test_schema_refuses_bad_distributed(fields, message):
    with pytest.raises(GpufleetError, match=message):
        plan(hosts(gpu_a=2), [dep(tensor_parallel_size=2, **fields)])
