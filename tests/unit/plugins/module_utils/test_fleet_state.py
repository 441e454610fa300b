"""The fleet's placements kept on the hosts (_fleet/state.py): generations, the newest copy, the host's file
(fleet_apply fleet_state / state=gathered), and fleet_plan reading the unreachable hosts' placements from the copies
the reachable hosts sent (no state that lives only on the controller); fleet_plan refusing a sliced AWX job."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.gpufleet.vllm.plugins.action.fleet_plan import gather, host_state, job_slice
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import state
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.apply import apply_host, gather_host, validated
from ansible_collections.gpufleet.vllm.plugins.modules.fleet_apply import ARGUMENT_SPEC

GPU = {"index": 0, "uuid": "GPU-0", "memory_total_mib": 81920, "memory_free_mib": 81000, "memory_used_mib": 920}


def assignment(dep: str, replica: int, host: str, **extra: Any) -> dict[str, Any]:
    return {
        "deployment": dep,
        "replica": replica,
        "host": host,
        "gpus": ["0"],
        "gpu_uuids": ["GPU-0"],
        "port": 8000,
        "action": "keep",
        "name": f"{dep}-{replica}",
        **extra,
    }


def test_generation_grows_only_when_the_placements_change() -> None:
    first = state.next_state(None, [assignment("chat", 1, "b"), assignment("chat", 0, "a")])
    assert first["generation"] == 1 and [p["replica"] for p in first["placements"]] == [0, 1]
    assert "action" not in first["placements"][0]  # placement fields only
    same = state.next_state(first, [assignment("chat", 0, "a", action="update"), assignment("chat", 1, "b")])
    assert same == first  # order and other fields do not matter: nothing to write
    moved = state.next_state(first, [assignment("chat", 0, "a"), assignment("chat", 1, "c")])
    assert moved["generation"] == 2
    assert state.next_state({"version": 99}, [])["generation"] == 1  # a foreign copy counts as none


def test_newest_copy_wins_and_bad_copies_are_ignored() -> None:
    old = state.next_state(None, [assignment("chat", 0, "a")])
    new = state.next_state(old, [assignment("chat", 0, "b")])
    assert state.newest([old, None, {"version": 1}, "junk", new, old]) == new
    assert state.newest([None, {"generation": 5}]) is None


def test_host_file_write_read_and_check_mode(tmp_path: Path) -> None:
    manifests = str(tmp_path / "gpufleet" / "manifests")
    assert state.state_path(manifests) == str(tmp_path / "gpufleet" / "fleet" / "placements.json")
    assert state.read(manifests) is None
    s = state.next_state(None, [assignment("chat", 0, "a")])
    assert state.write(manifests, s, check_mode=True) is True
    assert state.read(manifests) is None  # check mode only compares
    assert state.write(manifests, s) is True
    assert state.read(manifests) == s
    assert state.write(manifests, s) is False and state.write(manifests, s, check_mode=True) is False
    Path(state.state_path(manifests)).write_text("{not json")
    assert state.read(manifests) is None  # a broken copy: the other hosts have one
    with pytest.raises(GpufleetError, match="fleet_state: not a gpufleet placement state"):
        state.write(manifests, {"placements": []})


def test_fleet_apply_keeps_the_state_and_gathered_returns_it(tmp_path: Path, fake_runtime: Any) -> None:
    s = state.next_state(None, [assignment("chat", 0, "other-host")])
    p = validated("fleet_apply", ARGUMENT_SPEC, {"manifest_dir": str(tmp_path / "manifests"), "fleet_state": s})
    out, errors = apply_host(p, check_mode=True, runtime=fake_runtime)
    assert errors == [] and out["changed"] is True and out["fleet_state_changed"] is True
    assert gather_host(p, runtime=fake_runtime)["fleet_state"] is None
    out, _ = apply_host(p, runtime=fake_runtime)
    assert out["changed"] is True and out["fleet_state_changed"] is True
    assert gather_host(p, runtime=fake_runtime)["fleet_state"] == s
    out, _ = apply_host(p, runtime=fake_runtime)
    assert out["changed"] is False and out["fleet_state_changed"] is False  # converged: no write
    without = validated("fleet_apply", ARGUMENT_SPEC, {"manifest_dir": str(tmp_path / "manifests")})
    out, _ = apply_host(without, runtime=fake_runtime)
    assert "fleet_state_changed" not in out


def test_plan_keeps_unreachable_placements_from_the_newest_host_copy() -> None:
    old = state.next_state(None, [assignment("chat", 0, "b")])
    new = state.next_state(old, [assignment("chat", 0, "b"), assignment("chat", 1, "c")])
    facts = "deployments_facts"
    hostvars = {
        "a": {"gpus": [GPU], facts: {"deployments": [], "fleet_state": old}},
        "b": {"gpus": [GPU], facts: {"deployments": [], "fleet_state": new}},
        "c": {"gpus": [GPU], facts: {"fleet_state": state.next_state(new, [])}},  # unreachable: not read
    }
    tv = {"hostvars": hostvars, "ansible_play_hosts_all": ["a", "b", "c"], "ansible_play_hosts": ["a", "b"]}
    args = {"gpu_facts_var": "gpus", "existing_var": facts, "unreachable": [], "state_path": None}
    assert host_state(hostvars, ["a", "b"], facts) == new
    _hosts, existing, unreachable = gather(tv, args)
    assert unreachable == ["c"]
    # b reports its own containers (none); c cannot: its replica comes from the newest copy (b's, generation 2).
    assert existing == [{k: v for k, v in assignment("chat", 1, "c").items() if k in state.FIELDS}]


def test_plan_without_host_copies_falls_back_to_the_state_file(tmp_path: Path) -> None:
    path = tmp_path / "placements.json"
    path.write_text(json.dumps({"version": 1, "placements": [assignment("chat", 0, "c")]}))
    tv = {
        "hostvars": {"a": {"gpus": [GPU]}, "c": {}},
        "ansible_play_hosts_all": ["a", "c"],
        "ansible_play_hosts": ["a"],
    }
    args = {"gpu_facts_var": "gpus", "existing_var": "f", "unreachable": [], "state_path": str(path)}
    _hosts, existing, _ = gather(tv, args)
    assert [(e["deployment"], e["host"]) for e in existing] == [("chat", "c")]


@pytest.mark.parametrize(
    ("extra", "want"),
    [
        ({}, None),
        ({"awx_job_slice_number": 1, "awx_job_slice_count": 1}, None),  # slicing 1: one job, the whole inventory
        ({"awx_job_slice_number": 2, "awx_job_slice_count": 4}, (2, 4)),
        ({"tower_job_slice_number": "3", "tower_job_slice_count": "3"}, (3, 3)),
        ({"awx_job_slice_count": "many"}, None),
    ],
)
def test_job_slice_detection(extra: dict[str, Any], want: Any) -> None:
    assert job_slice(extra) == want


def test_sliced_converge_is_refused_before_any_host_is_touched(tmp_path: Path, ansible_env: dict[str, str]) -> None:
    (tmp_path / "inv.yml").write_text("all:\n  hosts:\n    h1: {ansible_connection: local}\n")
    (tmp_path / "pb.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - gpufleet.vllm.fleet_plan: {deployments: [], existing: []}\n      run_once: true\n"
    )
    proc = subprocess.run(
        ["ansible-playbook", "-i", "inv.yml", "pb.yml", "-e", "awx_job_slice_number=2", "-e", "awx_job_slice_count=4"],
        cwd=tmp_path, env=ansible_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "this job is slice 2 of 4 of a sliced job template" in proc.stdout
    assert "run the converge as one job" in proc.stdout


# ---------------------------------------------------------------------------------------------- multi-host replicas
def _gpus(n: int, host: str) -> list[dict[str, Any]]:
    return [{**GPU, "index": i, "uuid": f"GPU-{host}-{i}"} for i in range(n)]


BIG = {"name": "big", "model": "org/big", "distributed": "ray", "tensor_parallel_size": 4}


def _ray_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """A TP=4 replica over gpu-a (head) + gpu-b (worker), planned once, and the state the hosts keep after it."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.placement import plan

    hosts = {h: {"reachable": True, "labels": {}, "gpus": _gpus(2, h)} for h in ("gpu-a", "gpu-b", "gpu-c")}
    (asg,) = plan(hosts, [BIG])["assignments"]
    assert asg["hosts"] == ["gpu-a", "gpu-b"]
    return asg, state.next_state(None, [asg])


def test_a_multi_host_replica_is_kept_whole_head_and_workers() -> None:
    asg, kept = _ray_state()
    port = asg["ray"]["port"]
    assert kept["placements"] == [
        {
            "deployment": "big",
            "replica": 0,
            "host": "gpu-a",
            "gpus": [0, 1],
            "gpu_uuids": ["GPU-gpu-a-0", "GPU-gpu-a-1"],
        }
        | {"port": 8000, "ray_role": "head", "ray_port": port},
        {
            "deployment": "big",
            "replica": 0,
            "host": "gpu-b",
            "gpus": [0, 1],
            "gpu_uuids": ["GPU-gpu-b-0", "GPU-gpu-b-1"],
        }
        | {"port": None, "ray_role": "worker", "ray_port": port},
    ]
    assert state.placements(kept["placements"]) == kept["placements"]  # a kept copy compares as the plan's form
    assert state.next_state(kept, [asg]) == kept  # converged: the same generation, nothing written
    one = state.placements([assignment("chat", 0, "a", ray=None)])
    assert one == [{k: v for k, v in assignment("chat", 0, "a").items() if k in state.FIELDS}]  # no Ray fields


def test_restore_brings_back_the_whole_replica_of_an_unreachable_part() -> None:
    _asg, kept = _ray_state()
    head, worker = kept["placements"]
    reported_worker = {"host": "gpu-b", "name": "big-0", "deployment": "big", "replica": 0, "ray_role": "worker"}
    # The head's host is down, its worker's host reports the worker: the head comes from the copy.
    assert state.restore(kept["placements"], [reported_worker], ["gpu-a"], ["gpu-b", "gpu-c"]) == [head]
    # ... and reports nothing any more (its worker container is gone): the worker comes back too, the replica whole.
    assert state.restore(kept["placements"], [], ["gpu-a"], ["gpu-b", "gpu-c"]) == [head, worker]
    # The worker's host is down: its part comes from the copy, the head is what gpu-a reports.
    reported_head = {"host": "gpu-a", "name": "big-0", "deployment": "big", "replica": 0, "ray_role": "head"}
    assert state.restore(kept["placements"], [reported_head], ["gpu-b"], ["gpu-a", "gpu-c"]) == [worker]
    # Every host up: nothing from the copy.
    assert state.restore(kept["placements"], [], [], ["gpu-a", "gpu-b", "gpu-c"]) == []


@pytest.mark.parametrize("down", ["gpu-a", "gpu-b"])
def test_plan_keeps_a_multi_host_replica_whole_with_either_host_unreachable(down: str) -> None:
    from ansible_collections.gpufleet.vllm.plugins.action.fleet_plan import existing_from_info
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.placement import plan

    asg, kept = _ray_state()
    port = asg["ray"]["port"]
    facts = "deployments_facts"
    node = {"deployment": "big", "replica": 0, "port": port, "gpus": ["0", "1"]}
    reports = {
        "gpu-a": {
            "deployments": [{"name": "big-0", "deployment": "big", "replica": 0, "gpus": ["0", "1"], "port": 8000}],
            "ray_nodes": [{**node, "role": "head", "host": "gpu-a"}],
        },
        "gpu-b": {"deployments": [], "ray_nodes": [{**node, "role": "worker", "host": "gpu-b"}]},
        "gpu-c": {"deployments": []},
    }
    hostvars = {
        h: ({} if h == down else {"gpus": _gpus(2, h), facts: {**reports[h], "fleet_state": kept}})
        for h in ("gpu-a", "gpu-b", "gpu-c")
    }
    up = [h for h in hostvars if h != down]
    tv = {"hostvars": hostvars, "ansible_play_hosts_all": list(hostvars), "ansible_play_hosts": up}
    args = {"gpu_facts_var": "gpus", "existing_var": facts, "unreachable": [], "state_path": None}
    hosts, existing, unreachable = gather(tv, args)
    assert unreachable == [down]
    assert sorted((e["host"], e.get("ray_role")) for e in existing) == [("gpu-a", "head"), ("gpu-b", "worker")]
    # What the reachable host reports, plus the part of the unreachable one from the copy.
    (from_copy,) = [e for e in existing if e["host"] == down]
    assert from_copy == next(p for p in kept["placements"] if p["host"] == down)
    assert [e for e in existing if e["host"] != down] == existing_from_info(
        next(h for h in ("gpu-a", "gpu-b") if h != down), reports[next(h for h in ("gpu-a", "gpu-b") if h != down)]
    )
    other = {"name": "other", "model": "org/other", "distributed": "ray", "tensor_parallel_size": 2, "port": 8100}
    result = plan(hosts, [BIG, other], existing)
    big = next(a for a in result["assignments"] if a["deployment"] == "big")
    # Kept where it is as a whole (head, worker, Ray block), nothing removed, with a warning.
    assert (big["action"], big["hosts"], big["port"], big["ray"]["port"]) == ("keep", ["gpu-a", "gpu-b"], 8000, port)
    assert [w["gpus"] for w in big["ray"]["workers"]] == [[0, 1]]
    assert result["removals"] == [] and any(down in w and "unreachable" in w for w in result["warnings"])
    # The reachable part still holds its GPUs: another deployment goes to gpu-c, never onto them.
    (o,) = [a for a in result["assignments"] if a["deployment"] == "other"]
    assert o["hosts"] == ["gpu-c"]
