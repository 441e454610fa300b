"""The plan published to the hosts for applies sliced by host (plugins/module_utils/_fleet/published.py): each host's
part, slices that together are the whole plan (no replica twice, no removal on another slice's host), and the
refusals (missing, mixed, unexpected or stale plans) before anything changes; fleet_plan's publish/planned_var."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import published
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import state as fleet_state
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.payload import fleet_plan

A100 = 81920
HOSTS = ("a", "b", "c", "d")


def host(n: int) -> dict[str, Any]:
    gpus = [{"index": i, "uuid": f"GPU-{i}", "memory_total_mib": A100, "memory_free_mib": A100} for i in range(n)]
    return {"reachable": True, "gpus": gpus}


def dep(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "model": f"/models/{name}", "vllm_version": "0.10.2", **fields}


def running(plan: dict[str, Any], digest: str) -> list[dict[str, Any]]:
    return [
        {"host": a["host"], "name": a["name"], "gpus": [str(g) for g in a["gpus"]], "port": a["port"],
         "state": "running", "plan_digest": digest}
        for a in plan["assignments"]
    ]  # fmt: skip


def publish(deps: list[dict[str, Any]], existing: list[dict[str, Any]] = (), prune: bool = False) -> tuple:
    hosts = {h: host(2) for h in HOSTS}
    plan = fleet_plan(hosts, deps, list(existing), prune=prune)
    state = fleet_state.next_state(None, plan["assignments"])
    plan_id, files = published.publish(plan, state, deps, HOSTS)
    return plan, state, plan_id, {h: json.loads(t) for h, t in files.items()}


def test_plan_path_sits_beside_the_fleet_placements() -> None:
    assert published.plan_path("/var/lib/gpufleet/manifests") == "/var/lib/gpufleet/fleet/plan.json"
    assert fleet_state.state_path("/var/lib/gpufleet/manifests") == "/var/lib/gpufleet/fleet/placements.json"


def test_two_slices_together_are_the_whole_plan() -> None:
    deps = [dep("chat", replicas=4, placement="spread"), dep("big", replicas=1, tensor_parallel_size=2)]
    plan, state, plan_id, records = publish(deps)
    assert set(records) == set(HOSTS) and {r["plan_id"] for r in records.values()} == {plan_id}
    first = published.assemble({h: records[h] for h in ("a", "b")}, deps, {})
    second = published.assemble({h: records[h] for h in ("c", "d")}, deps, {})
    placed = [s["name"] for part in (first, second) for specs in part["plan"]["hosts"].values() for s in specs]
    assert sorted(placed) == sorted(a["name"] for a in plan["assignments"])  # each replica once, on its host
    assert len(placed) == len(set(placed)) == 5
    assert set(first["plan"]["hosts"]) == {"a", "b"} and set(second["plan"]["hosts"]) == {"c", "d"}
    for part in (first, second):
        assert part["fleet_state"] == state and part["plan_id"] == plan_id and part["errors"] == []
    # The same plan gives the same files: a second plan job writes nothing.
    assert publish(deps)[3] == records


def test_removals_stay_on_their_host_and_waves_keep_their_order() -> None:
    deps = [dep("chat", replicas=4, placement="spread", max_unavailable=1), dep("old", replicas=2)]
    first = publish(deps)[0]
    # chat's declaration changed (it rolls, one at a time) and 'old' is gone (pruned).
    plan, _state, _id, records = publish(
        [dep("chat", replicas=4, placement="spread", max_unavailable=1)], running(first, "old"), prune=True
    )
    removed = {h: [r["name"] for r in items] for h, items in plan["remove"].items() if items}
    assert sum(len(v) for v in removed.values()) == 2
    assert len(plan["rollout"]["waves"]) >= 2  # surges where GPUs are free, one in place at a time
    one = published.assemble({"a": records["a"], "b": records["b"]}, [dep("chat", replicas=4, placement="spread",
                             max_unavailable=1)], {})  # fmt: skip
    for h, items in one["plan"]["remove"].items():
        assert [r["name"] for r in items] == removed.get(h, [])
    assert set(one["plan"]["remove"]) == {"a", "b"}
    # A slice's waves: the plan's, in order, with only its hosts' replicas.
    mine = [(w["index"], [e["host"] for e in w["replicas"]]) for w in one["plan"]["rollout"]["waves"]]
    whole = [
        (w["index"], [e["host"] for e in w["replicas"] if e["host"] in ("a", "b")]) for w in plan["rollout"]["waves"]
    ]
    assert mine == [w for w in whole if w[1]]
    assert one["plan"]["rollout"]["deferred"] == {h: plan["rollout"]["deferred"][h] for h in ("a", "b")}


def test_refusals_name_the_hosts_and_say_what_to_do() -> None:
    deps = [dep("chat", replicas=2, placement="spread")]
    _plan, state, plan_id, records = publish(deps)
    cases = [
        ({"a": records["a"], "b": None}, deps, {}, "", "no plan on b"),
        ({"a": records["a"], "b": records["a"]}, deps, {}, "", "written for another host"),
        ({"a": records["a"]}, deps, {}, "f" * 64, f"is not the plan {'f' * 12} asked for"),
        ({"a": records["a"]}, [dep("chat", replicas=3, placement="spread")], {}, "", "gpufleet_deployments changed"),
    ]
    other = publish([dep("chat", replicas=1)])[3]
    cases.append(({"a": records["a"], "b": other["b"]}, deps, {}, "", "the hosts hold different plans"))
    newer = {**state, "generation": state["generation"] + 1}
    cases.append(({"a": records["a"]}, deps, {"a": newer}, "", "newer on a (generation 2)"))
    moved = {**state, "placements": [{**p, "port": 9999} for p in state["placements"]]}
    cases.append(({"a": records["a"]}, deps, {"a": moved}, "", "placements changed since the plan"))
    for recs, declared, kept, expected, message in cases:
        with pytest.raises(GpufleetError) as err:
            published.assemble(recs, declared, kept, expected_id=expected)
        assert message in str(err.value) and "run the plan job again" in str(err.value), str(err.value)
    # Not stale: the placements this plan itself wrote (an earlier slice, a re-run), an older copy, secrets changed.
    ok = published.assemble({"a": records["a"]}, [dep("chat", replicas=2, placement="spread", api_key="k")],
                             {"a": state}, expected_id=plan_id)  # fmt: skip
    assert ok["plan_id"] == plan_id
    older = {**state, "generation": 0}
    assert published.assemble({"a": records["a"]}, deps, {"a": older})["plan_id"] == plan_id


def test_parse_reads_a_slurp_result_and_rejects_junk() -> None:
    import base64

    _plan, _state, plan_id, records = publish([dep("chat")])
    text = json.dumps(records["a"])
    assert published.parse({"content": base64.b64encode(text.encode()).decode(), "encoding": "base64"})["host"] == "a"
    assert published.parse(text)["plan_id"] == plan_id
    for junk in (None, {"failed": True, "msg": "file not found"}, {"content": "!!", "failed": True}, "{", {"v": 1}):
        assert published.parse(junk) is None


def test_sliced_apply_of_a_published_plan_is_allowed(tmp_path: Path, ansible_env: dict[str, str]) -> None:
    """fleet_plan refuses to plan in a slice, but assembles a slice's published plan (and refuses a missing one)."""
    deps = [dep("chat", replicas=2, placement="spread")]
    records = publish(deps)[3]
    (tmp_path / "inv.yml").write_text(
        "all:\n  hosts:\n"
        + "".join(f"    {h}: {{ansible_connection: local, plan_file: {json.dumps(json.dumps(records[h]))}}}\n"
                  for h in ("a", "b"))
        + "    c: {ansible_connection: local}\n"
    )  # fmt: skip
    (tmp_path / "pb.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - gpufleet.vllm.fleet_plan: {{deployments: {json.dumps(deps)}, planned_var: plan_file}}\n"
        "      run_once: true\n      register: planned\n"
        "    - ansible.builtin.debug: {msg: 'HOSTS={{ planned.plan.hosts | list | sort | join(\",\") }}'}\n"
        "      run_once: true\n"
    )
    sliced = ["-e", "awx_job_slice_number=1", "-e", "awx_job_slice_count=2"]
    run = subprocess.run(
        ["ansible-playbook", "-i", "inv.yml", "pb.yml", "--limit", "a,b", *sliced],
        cwd=tmp_path, env=ansible_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "HOSTS=a,b" in run.stdout
    run = subprocess.run(
        ["ansible-playbook", "-i", "inv.yml", "pb.yml", "--limit", "b,c", *sliced],
        cwd=tmp_path, env=ansible_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 2 and "refusing to apply: no plan on c" in run.stdout, run.stdout


def test_publish_then_assemble_through_the_plugin(tmp_path: Path, ansible_env: dict[str, str]) -> None:
    """fleet_plan publish -> the hosts' files -> fleet_plan planned_var: the same plan id, accepted; the digest is of the
    declaration as given, not of the sizes the plugin fills in (model_sizes)."""
    gpus = [{"index": 0, "uuid": "GPU-0", "memory_total_mib": A100, "memory_free_mib": A100}]
    (tmp_path / "inv.yml").write_text(
        "all:\n  hosts:\n"
        + "".join(
            f"    {h}: {{ansible_connection: local, gpufleet_allowed_model_dirs: [/models], gpus: {json.dumps(gpus)}}}\n"
            for h in ("a", "b")
        )
    )
    deps = [dep("chat", replicas=2, placement="spread")]
    (tmp_path / "pb.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - gpufleet.vllm.fleet_plan: {{deployments: {json.dumps(deps)}, publish: true, existing: [],"
        " model_sizes: {chat: 1000000}}\n"
        "      run_once: true\n      register: made\n"
        "    - ansible.builtin.set_fact: {plan_file: '{{ made.published[inventory_hostname] }}'}\n"
        f"    - gpufleet.vllm.fleet_plan: {{deployments: {json.dumps(deps)}, planned_var: plan_file,"
        " plan_id: '{{ made.plan_id }}'}\n"
        "      run_once: true\n      register: planned\n"
        "    - ansible.builtin.debug: {msg: 'SAME={{ planned.plan_id == made.plan_id }}'}\n"
        "      run_once: true\n"
    )
    run = subprocess.run(
        ["ansible-playbook", "-i", "inv.yml", "pb.yml"],
        cwd=tmp_path, env=ansible_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SAME=True" in run.stdout


def test_a_published_plan_carries_the_ray_nodes_and_refuses_a_slice_with_part_of_a_multi_host_replica() -> None:
    """plan.ray (each host's Ray nodes, docs/ray.md) travels in the hosts' parts: an apply of all of a multi-host
    replica's hosts gets exactly fleet_plan's nodes (the Ray play runs them before the batches); an apply of only some
    of them is refused before anything changes, naming the replica and the hosts missing."""
    hosts = {h: host(1) for h in HOSTS}  # one GPU each: TP=2 spans two hosts
    deps = [dep("big", tensor_parallel_size=2, distributed="ray"), dep("chat", replicas=2, placement="spread")]
    plan = fleet_plan(hosts, deps)
    (big,) = [a for a in plan["assignments"] if a["deployment"] == "big"]
    head, worker = big["hosts"]
    state = fleet_state.next_state(None, plan["assignments"])
    plan_id, files = published.publish(plan, state, deps, HOSTS)
    records = {h: json.loads(t) for h, t in files.items()}
    assert records[head]["part"]["ray"] == plan["ray"][head] and records[head]["part"]["ray"][0]["role"] == "head"
    assert records[worker]["part"]["ray_hosts"] == {"big-0": [head, worker]}
    others = [h for h in HOSTS if h not in (head, worker)]
    assert all(records[h]["part"]["ray"] == [] and records[h]["part"]["ray_hosts"] == {} for h in others)
    # The nodes are part of the plan's id: another Ray layout is another plan.
    assert plan_id != published.publish({**plan, "ray": {}}, state, deps, HOSTS)[0]

    both = published.assemble({head: records[head], worker: records[worker]}, deps, {}, expected_id=plan_id)
    assert both["plan"]["ray"] == {head: plan["ray"][head], worker: plan["ray"][worker]}
    rest = published.assemble({h: records[h] for h in others}, deps, {})  # a slice without the replica: fine
    assert rest["plan"]["ray"] == {h: [] for h in others}
    for part in ({head: records[head]}, {worker: records[worker], others[0]: records[others[0]]}):
        missing = worker if head in part else head
        with pytest.raises(GpufleetError) as err:
            published.assemble(part, deps, {}, expected_id=plan_id)
        text = str(err.value)
        assert f"the multi-host replica big-0 runs on {head}, {worker}: {missing} is not in this apply" in text, text
        assert "apply every host of a multi-host replica in the same job" in text
        assert "run the plan job again" not in text  # the plan is fine: the slice is not


def test_apply_planned_runs_the_converge_ray_play_between_the_checks_and_the_batches(
    ansible_env: dict[str, str],
) -> None:
    """playbooks/apply_planned.yml starts the Ray clusters of its hosts' multi-host replicas as converge.yml does: the
    same play (role deployments, entry point ray, every host at once, no serial) after the plan is read back and
    checked, before the rolling batches."""
    import yaml

    root = Path(__file__).resolve().parents[4]

    def plays(name: str) -> list[tuple[str, Any, Any]]:
        found = yaml.safe_load((root / "playbooks" / name).read_text())
        return [
            (p["tasks"][0]["ansible.builtin.import_role"].get("tasks_from"), p["hosts"], p.get("serial")) for p in found
        ]

    converge, planned = plays("converge.yml"), plays("apply_planned.yml")
    assert [p[0] for p in planned] == ["planned", "ray", "rollout"]
    assert planned[1] == next(p for p in converge if p[0] == "ray") and planned[1][2] is None
    assert planned[2] == next(p for p in converge if p[0] == "rollout")
    run = subprocess.run(
        ["ansible-playbook", "--syntax-check", "-i", "localhost,", str(root / "playbooks" / "apply_planned.yml")],
        env=ansible_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
