"""A converge sliced by host (docs/awx.md, "Large fleets") over real SSH on the simulated hosts gpu-a, gpu-b, gpu-c,
and redeploy.yml reading its manifest on the managed host.

One scenario, in order: playbooks/plan.yml over the whole inventory (each host keeps its part, one plan id); the
apply refused without a plan id; slice 1 of 2 (gpu-a, gpu-b, with AWX's slice variables) runs their replicas only;
slice 2 (gpu-c) its own; a full converge afterwards changes nothing (the two slices were one converge); a scale-down
planned and applied to the slice without the removed replica's host leaves that replica running (no slice prunes
another's), the other slice removes it; an apply of the older plan is refused before anything changes. Then
redeploy.yml -e replica=... -e from_host=... runs a replica's manifest from its host on gpu-b under another name
(nothing on the controller).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fixtures.hosts import SimFleet, recap

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ("gpu-a", "gpu-b", "gpu-c")
SLICED = ("-e", "awx_job_slice_count=2")
PLAN_FILE = "/var/lib/gpufleet/fleet/plan.json"


def dep(replicas: int) -> dict[str, Any]:
    return {
        "name": "slice",
        "model": str(ROOT / ".build" / "fleet" / "models" / "tiny-chat"),
        "vllm_version": "0.10.2",
        "replicas": replicas,
        "placement": "spread",
        "port": 8600,
        "engine_options": {"max_model_len": 1024},
    }


@pytest.fixture(scope="module")
def fleet(sim_hosts: Any, sim_fleet_lock: None, tmp_path_factory: pytest.TempPathFactory) -> Any:
    for h in HOSTS:
        if h not in sim_hosts.hosts:
            pytest.skip(f"simulated host {h} is not up")
    subprocess.run([str(ROOT / "sim" / "steps.d" / "70-fleet.sh"), "up"], check=True, capture_output=True)
    f = SimFleet(sim_hosts, tmp_path_factory.mktemp("sliced"), {h: "docker" for h in HOSTS})
    yield f
    f.write_inventory([])
    f.play("stop.yml", "-e", "names=slice,slice-repro", "-e", "state=absent")
    for h in HOSTS:
        sim_hosts.in_host(h, "rm", "-f", PLAN_FILE)


def plan(fleet: SimFleet) -> str:
    proc = fleet.play("plan.yml")
    assert proc.returncode == 0, proc.stdout[-4000:]
    found = re.search(r"plan ([0-9a-f]{64}) kept on 3 host\(s\)", proc.stdout)
    assert found, proc.stdout[-3000:]
    plan_id = found.group(1)
    for h in HOSTS:
        kept = json.loads(fleet.sim.in_host(h, "cat", PLAN_FILE).stdout)
        assert kept["plan_id"] == plan_id and kept["host"] == h
    return plan_id


def apply(fleet: SimFleet, plan_id: str, hosts: str, number: int) -> subprocess.CompletedProcess[str]:
    args = ["-e", f"gpufleet_plan_id={plan_id}", "--limit", hosts, *SLICED, "-e", f"awx_job_slice_number={number}"]
    return fleet.play("apply_planned.yml", *args)


def running(fleet: SimFleet) -> dict[str, tuple[str, str]]:
    """Managed replica name -> (host, container id) of the running ones."""
    return {n: (c["host"], c["id"]) for n, c in fleet.managed("slice").items() if c["status"] == "running"}


def test_two_slices_are_one_converge_and_never_prune_each_other(fleet: SimFleet) -> None:
    fleet.write_inventory([dep(3)])
    plan_id = plan(fleet)
    assert running(fleet) == {}, "the plan job changes nothing but the plan files"

    proc = fleet.play("apply_planned.yml", "--limit", "gpu-a")
    assert proc.returncode != 0 and "say which published plan to apply" in proc.stdout

    proc = apply(fleet, plan_id, "gpu-a,gpu-b", 1)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "this job is slice" not in proc.stdout
    first = running(fleet)
    assert sorted(h for h, _ in first.values()) == ["gpu-a", "gpu-b"], first
    summary = fleet.summary()
    assert summary["ok"] and summary["counts"]["changed"] == 2, summary["counts"]

    proc = apply(fleet, plan_id, "gpu-c", 2)
    assert proc.returncode == 0, proc.stdout[-5000:]
    both = running(fleet)
    assert sorted(h for h, _ in both.values()) == list(HOSTS), both
    assert {n: both[n] for n in first} == first, "slice 2 touched no replica of slice 1"

    # The two slices were one converge: a full converge of the same declaration changes nothing.
    proc = fleet.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert all(r["changed"] == 0 for r in recap(proc.stdout).values()), proc.stdout[-4000:]
    assert running(fleet) == both

    # Scale down to 2: the plan removes one replica; slice 1 (gpu-a, gpu-b) must not remove it wherever it runs.
    fleet.write_inventory([dep(2)])
    new_id = plan(fleet)
    kept = {h: json.loads(fleet.sim.in_host(h, "cat", PLAN_FILE).stdout)["part"] for h in HOSTS}
    gone = [(h, r["name"]) for h in HOSTS for r in kept[h]["remove"]]
    assert len(gone) == 1, kept
    gone_host, gone_name = gone[0]
    own = [h for h in HOSTS if h != gone_host]
    # The old plan is refused before anything changes (the other refusals: test_fleet_published.py).
    proc = apply(fleet, plan_id, ",".join(own), 1)
    assert proc.returncode != 0 and f"is not the plan {plan_id[:12]} asked for" in proc.stdout, proc.stdout[-3000:]
    assert running(fleet) == both
    proc = apply(fleet, new_id, ",".join(own), 1)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert running(fleet) == both, "the slice without the removed replica's host removed nothing"
    proc = apply(fleet, new_id, gone_host, 2)
    assert proc.returncode == 0, proc.stdout[-5000:]
    after = running(fleet)
    assert after == {n: v for n, v in both.items() if n != f"gpufleet-{gone_name}"}, after


def test_redeploy_reads_the_manifest_on_the_managed_host(fleet: SimFleet) -> None:
    # A replica of another host, run again on gpu-b (4 GPUs: its last one is free) under another name and port.
    container, (host, _id) = next((n, v) for n, v in sorted(running(fleet).items()) if v[0] != "gpu-b")
    source = container.removeprefix("gpufleet-")
    overrides = json.dumps({"overrides": {"name": "slice-repro", "port": 8610, "gpus": ["3"]}})
    proc = fleet.play("redeploy.yml", "-e", f"replica={source}", "-e", f"from_host={host}", "--limit", "gpu-b",
                      "-e", overrides)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "gpufleet-slice-repro serves at" in proc.stdout
    repro = fleet.managed("slice-repro")["gpufleet-slice-repro"]
    assert repro["host"] == "gpu-b" and repro["status"] == "running"
    original = fleet.managed(source)[f"gpufleet-{source}"]["args"]
    assert repro["args"][repro["args"].index("--max-model-len") + 1] == original[original.index("--max-model-len") + 1]
    proc = fleet.play("redeploy.yml", "-e", "replica=slice-9", "--limit", "gpu-b")
    assert proc.returncode != 0 and "gpu-b has no manifest of slice-9" in proc.stdout, proc.stdout[-3000:]
    proc = fleet.play("redeploy.yml", "-e", "replica=slice-0", "-e", "manifest=/x.json", "--limit", "gpu-b")
    assert proc.returncode != 0 and "say which manifest to redeploy, one of" in proc.stdout, proc.stdout[-3000:]
