# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rollout time of a flag change of a 3-replica deployment on the simulated hosts (over real SSH), side by side in
one run (docs/rollouts.md):

- ``all at once``: ``max_unavailable: 100%``, ``max_surge: 0`` - every replica replaced in one wave, what a converge
  did before rolling updates (every host in parallel, no gate between replicas of a deployment);
- ``in place, 1 at a time``: ``max_unavailable: 1``, ``max_surge: 0`` - three waves, each gated;
- ``surge, 1 at a time``: the defaults (``max_surge: 1``, ``max_unavailable`` auto = 0 where GPUs are free) - each
  replica first started as a gated surge, then replaced in place, then the surge removed;
- the two rolling strategies again with ``smoke_test: false``: the gate without its real request (``/health`` and
  ``/v1/models`` only), to see what the smoke completion costs (on the stand-in: little; on real vLLM: one token).

Each round changes ``max_model_len`` (2048 <-> 1024) and times ``playbooks/converge.yml``; the strategies alternate
within a round so that machine load hits them alike. Prints medians and ratios to ``all at once``; writes
bench/out/rollout.json. Run: ``python bench/rollout.py [--repeat 3]``. Needs the bed; holds the fleet tests' lock.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_converge import HOSTS_INV, OUT, changed_total, cleanup, converge, deployment, write_inventory

HOSTS = ["gpu-a", "gpu-b", "gpu-c"]
STRATEGIES = {
    "all at once": {"max_unavailable": "100%", "max_surge": 0},
    "in place, 1 at a time": {"max_unavailable": 1, "max_surge": 0},
    "surge, 1 at a time": {},
    "in place, no smoke gate": {"max_unavailable": 1, "max_surge": 0, "smoke_test": False},
    "surge, no smoke gate": {"smoke_test": False},
}


def dep(max_model_len: int, strategy: dict[str, Any]) -> dict[str, Any]:
    d = deployment(7, replicas=3, placement="spread", gpu_sharing=False, gpu_memory_utilization=0.5, **strategy)
    d["engine_options"] = {"max_model_len": max_model_len}
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    lock = open(HOSTS_INV.parent / ".fleet-tests.lock", "w")  # the fleet tests' lock (tests/fixtures/hosts.py)
    print("waiting for the simulated hosts (.build/hosts/.fleet-tests.lock)", flush=True)
    fcntl.flock(lock, fcntl.LOCK_EX)
    inv = write_inventory("rollout", [], HOSTS)
    cleanup(inv)
    walls: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    length = 2048
    try:
        converge(write_inventory("rollout", [dep(length, {})], HOSTS))  # set up (not timed): max_model_len 2048
        for _round in range(args.repeat):
            for name, strategy in STRATEGIES.items():
                length = 1024 if length == 2048 else 2048
                wall, proc = converge(write_inventory("rollout", [dep(length, strategy)], HOSTS))
                if not changed_total(proc.stdout):
                    sys.exit(f"{name}: the flag change changed nothing:\n{proc.stdout[-3000:]}")
                walls[name].append(wall)
                print(f"{name}: {wall:.1f} s", flush=True)
    finally:
        cleanup(inv)
    base = statistics.median(walls["all at once"])
    out = {
        name: {
            "median_s": round(statistics.median(w), 1),
            "runs_s": [round(x, 1) for x in w],
            "ratio_to_all_at_once": round(statistics.median(w) / base, 2),
        }
        for name, w in walls.items()
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rollout.json").write_text(json.dumps(out, indent=2) + "\n")
    for name, row in out.items():
        print(f"{name:24} median {row['median_s']:6.1f} s  x{row['ratio_to_all_at_once']}")


if __name__ == "__main__":
    main()
