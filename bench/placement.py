# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Placement speed: 1,000 hosts x 8 GPUs x 500 deployments (goal < 1 s): a fresh plan, the stable re-run, and the
error path (nothing fits: every deployment gets its per-host reasons).

Run: ``python bench/placement.py [--hosts 1000] [--gpus 8] [--deployments 500] [--repeat 3]``. Prints wall times and
their ratio to the goal; writes bench/out/placement.json. The fleet is generated with a fixed seed: a mix of 80 GiB
and 24 GiB GPU hosts in three zones, deployments of 1/2/4/8 GPUs per replica, 1-3 replicas, spread and binpack, some
with selectors, sizes and port ranges.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / ".build" / "collections"))

from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.placement import plan  # noqa: E402

GOAL_S = 1.0


def fleet(n_hosts: int, n_gpus: int, n_deps: int, seed: int = 7) -> tuple[dict, list]:
    rng = random.Random(seed)
    hosts = {}
    for h in range(n_hosts):
        big = h % 4 != 3
        mem = 81920 if big else 24576
        hosts[f"gpu-{h:04d}"] = {
            "reachable": h % 250 != 249,
            "labels": {"zone": ("eu1", "us1", "ap1")[h % 3], "gpu": "a100" if big else "l4"},
            "gpus": [
                {
                    "index": i,
                    "uuid": f"GPU-{h:04d}-{i}",
                    "name": "A100-SXM4-80GB" if big else "L4",
                    "memory_total_mib": mem,
                    "memory_free_mib": mem - 500,
                    "memory_used_mib": 500,
                }
                for i in range(n_gpus)
            ],
            "reservations": [7] if h % 50 == 0 else [],
            "used_ports": [22, 9100],
        }
    deps = []
    for d in range(n_deps):
        gpr = rng.choice((1, 1, 1, 2, 2, 4, 8))
        dep = {
            "name": f"dep-{d:03d}",
            "model": f"org/model-{d}",
            "replicas": rng.choice((1, 1, 2, 3)),
            "gpus_per_replica": gpr,
            "placement": rng.choice(("spread", "binpack")),
            "num_parameters": rng.choice({1: (1, 7, 8), 2: (8, 13), 4: (13, 70), 8: (70, 110)}[gpr]) * 10**9,
            "model_dtype": "bfloat16",
            "port": 8000 + (d % 20) * 10,
        }
        if d % 5 == 0:
            dep["selector"] = {"zone": rng.choice(("eu1", "us1", "ap1"))}
        if d % 7 == 0:
            dep.pop("port")
            dep["port_range"] = [9000, 9099]
        deps.append(dep)
    return hosts, deps


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _run in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--deployments", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    hosts, deps = fleet(args.hosts, args.gpus, args.deployments)
    fresh_s, result = timed(lambda: plan(hosts, deps), args.repeat)
    existing = [
        {
            "deployment": a["deployment"],
            "replica": a["replica"],
            "host": a["host"],
            "gpus": a["gpus"],
            "port": a["port"],
        }
        for a in result["assignments"]
    ]
    # The re-run sees the memory the first plan's containers now hold.
    used = {(a["host"], g) for a in result["assignments"] for g in a["gpus"]}
    for name, host in hosts.items():
        for gpu in host["gpus"]:
            if (name, gpu["index"]) in used:
                gpu["memory_used_mib"] = int(gpu["memory_total_mib"] * 0.9) + 500
                gpu["memory_free_mib"] = gpu["memory_total_mib"] - gpu["memory_used_mib"]
    rerun_s, again = timed(lambda: plan(hosts, deps, existing), args.repeat)
    moved = [a for a in again["assignments"] if a["action"] != "keep"]
    # The error path: nothing fits, every deployment gets its per-host reasons.
    hosts_bad, deps_bad = fleet(args.hosts, args.gpus, args.deployments)
    for dep in deps_bad:
        dep["vram_mib"] = 10**7
    errors_s, failed = timed(lambda: plan(hosts_bad, deps_bad), 1)
    replicas = len(result["assignments"])
    gpus_used = sum(len(a["gpus"]) for a in result["assignments"])
    print(f"fleet: {args.hosts} hosts x {args.gpus} GPUs, {args.deployments} deployments")
    print(f"placed {replicas} replicas on {gpus_used} GPUs, {len(result['errors'])} unschedulable deployments")
    print(f"fresh plan : {fresh_s:.3f} s  ratio to goal ({GOAL_S:.0f} s): {fresh_s / GOAL_S:.2f}")
    print(
        f"stable rerun: {rerun_s:.3f} s  ratio to goal ({GOAL_S:.0f} s): {rerun_s / GOAL_S:.2f}  (moved: {len(moved)})"
    )
    print(
        f"all unschedulable: {errors_s:.3f} s  ratio to goal ({GOAL_S:.0f} s): {errors_s / GOAL_S:.2f}"
        f"  ({len(failed['errors'])} errors)"
    )
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "placement.json").write_text(
        json.dumps(
            {
                "hosts": args.hosts,
                "gpus_per_host": args.gpus,
                "deployments": args.deployments,
                "replicas": replicas,
                "unschedulable": len(result["errors"]),
                "fresh_s": fresh_s,
                "rerun_s": rerun_s,
                "goal_s": GOAL_S,
                "fresh_ratio": fresh_s / GOAL_S,
                "rerun_ratio": rerun_s / GOAL_S,
                "rerun_moved": len(moved),
                "unschedulable_s": errors_s,
                "unschedulable_ratio": errors_s / GOAL_S,
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if not moved else 1


if __name__ == "__main__":
    sys.exit(main())
