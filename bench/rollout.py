# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rollout time of a flag change of a 3-replica deployment on the simulated hosts (over real SSH), side by side in
one run (docs/rollouts.md):

- ``all at once``: ``max_unavailable: 100%``, ``max_surge: 0`` - every replica replaced in one wave, what a converge
  did before rolling updates (every host in parallel, no gate between replicas of a deployment);
- ``in place, 1 at a time``: ``max_unavailable: 1``, ``max_surge: 0`` - three waves, each gated;
- ``surge (defaults)``: ``max_surge: 1``, ``max_unavailable`` auto - a replica with a free GPU on its host (gpu-a,
  gpu-b) is first started as a gated surge, then replaced in place, then the surge removed; gpu-c has no free GPU,
  so auto is 1 there and its replica is replaced in place in the first wave beside a surge (two waves);
- the two rolling strategies again with ``smoke_test: false``: the gate without its real request (``/health`` and
  ``/v1/models`` only), to see what the smoke completion costs (on the stand-in: little; on real vLLM: one token).

Each round changes ``max_model_len`` (2048 <-> 1024) and times ``playbooks/converge.yml``; the strategies alternate
within a round so that machine load hits them alike. Prints medians and ratios to ``all at once``; writes
bench/out/rollout.json. Run: ``python bench/rollout.py [--repeat 3] [--start-delay 2]``. Needs the bed; holds the
fleet tests' lock.

The stand-in loads in a fraction of a second, where a real server loads its model for seconds to minutes; with that,
the rollout waves would cost next to nothing beside Ansible's own work and every strategy would take about as long.
So the replicas load for ``--start-delay`` seconds (``STANDIN_START_DELAY``, default 2) and every run is checked for
what it claims, from the replicas' own ``/metrics`` after the converge:

- the waves: how many the converge ran (1 all at once, 3 in place one at a time, 2 or more with surges), and each
  replica's ready time (the stand-in's ``process_start_time_seconds``, set once it loaded): all at once, the three
  became ready within one start delay of each other (a few hundredths of a second apart); rolling, each at least half
  a start delay after the previous one (it started only once that one passed its gate, or beside a surge that loaded
  first);
- the gate: the requests each new replica served by the end of the converge (``vllm:request_success_total``) - one
  (the smoke completion) with the gate, none with ``smoke_test: false``.

A run that does not show what its strategy says stops the bench.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import re
import statistics
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_converge import HOSTS_INV, OUT, changed_total, cleanup, converge, deployment, write_inventory

HOSTS = ["gpu-a", "gpu-b", "gpu-c"]
DEP = 7  # bench-7 on port 8470 of each host (placement spread, one replica per host)
STRATEGIES = {
    "all at once": {"max_unavailable": "100%", "max_surge": 0},
    "in place, 1 at a time": {"max_unavailable": 1, "max_surge": 0},
    "surge (defaults)": {},
    "in place, no smoke gate": {"max_unavailable": 1, "max_surge": 0, "smoke_test": False},
    "surge, no smoke gate": {"smoke_test": False},
}


def dep(max_model_len: int, strategy: dict[str, Any], start_delay: float) -> dict[str, Any]:
    d = deployment(DEP, replicas=3, placement="spread", gpu_sharing=False, gpu_memory_utilization=0.5, **strategy)
    d["engine_options"] = {"max_model_len": max_model_len}
    d["env"] = {**d["env"], "STANDIN_START_DELAY": str(start_delay)}
    return d


def replicas() -> dict[str, dict[str, float]]:
    """Each host's replica, from its /metrics: ``ready`` (epoch s) and ``served`` (requests it answered)."""
    hosts = yaml.safe_load(HOSTS_INV.read_text())["all"]["children"]["gpu_hosts"]["hosts"]
    out = {}
    for h in HOSTS:
        url = f"http://{hosts[h]['ansible_host']}:{8400 + 10 * DEP}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        ready, served = 0.0, 0.0
        for line in text.splitlines():
            if line.startswith("process_start_time_seconds "):
                ready = float(line.split()[-1])
            elif line.startswith("vllm:request_success_total{"):
                served += float(line.split()[-1])
        out[h] = {"ready": ready, "served": served}
    return out


def waves(stdout: str) -> int:
    """The rollout waves the converge ran (rollout.yml's loop over wave.yml, labelled ``wave N``)."""
    return len(set(re.findall(r"\(item=wave (\d+)\)", stdout)))


def check(
    name: str, strategy: dict[str, Any], seen: dict[str, dict[str, float]], ran: int, start_delay: float
) -> list[float]:
    """The gaps between the replicas' ready times; exits when the run did not do what ``strategy`` says."""
    ready = sorted(r["ready"] for r in seen.values())
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(ready)]
    at_once = strategy.get("max_unavailable") == "100%"
    if at_once and (ready[-1] - ready[0] >= start_delay or ran != 1):
        sys.exit(f"{name}: not one wave ({ran}), or the replicas were ready {gaps} s apart: {seen}")
    waves_ok = ran == 3 if strategy.get("max_surge") == 0 else ran >= 2
    if not at_once and (min(gaps) < start_delay / 2 or not waves_ok):  # all at once: a few hundredths apart
        sys.exit(f"{name}: {ran} waves, replicas ready {gaps} s apart (start delay {start_delay} s): not rolling")
    smoke = 0 if strategy.get("smoke_test") is False else 1
    if any(r["served"] != smoke for r in seen.values()):
        sys.exit(f"{name}: expected {smoke} request (the smoke completion) per new replica: {seen}")
    return gaps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--start-delay", type=float, default=2.0, help="seconds each replica loads (the stand-in's)")
    args = ap.parse_args()
    delay = args.start_delay
    lock = open(HOSTS_INV.parent / ".fleet-tests.lock", "w")  # the fleet tests' lock (tests/fixtures/hosts.py)
    print("waiting for the simulated hosts (.build/hosts/.fleet-tests.lock)", flush=True)
    fcntl.flock(lock, fcntl.LOCK_EX)
    inv = write_inventory("rollout", [], HOSTS)
    cleanup(inv)
    walls: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    gaps: dict[str, list[list[float]]] = {name: [] for name in STRATEGIES}
    length = 2048
    try:
        converge(write_inventory("rollout", [dep(length, {}, delay)], HOSTS))  # set up (not timed): max_model_len 2048
        for _round in range(args.repeat):
            for name, strategy in STRATEGIES.items():
                length = 1024 if length == 2048 else 2048
                wall, proc = converge(write_inventory("rollout", [dep(length, strategy, delay)], HOSTS))
                if not changed_total(proc.stdout):
                    sys.exit(f"{name}: the flag change changed nothing:\n{proc.stdout[-3000:]}")
                walls[name].append(wall)
                ran = waves(proc.stdout)
                gaps[name].append(check(name, strategy, replicas(), ran, delay))
                print(f"{name}: {wall:.1f} s, {ran} wave(s), replicas ready {gaps[name][-1]} s apart", flush=True)
    finally:
        cleanup(inv)
    base = statistics.median(walls["all at once"])
    out = {
        name: {
            "median_s": round(statistics.median(w), 1),
            "runs_s": [round(x, 1) for x in w],
            "ratio_to_all_at_once": round(statistics.median(w) / base, 2),
            "ready_gaps_s": gaps[name],
        }
        for name, w in walls.items()
    }
    out["start_delay_s"] = delay  # type: ignore[assignment]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rollout.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"each replica loads for {delay} s")
    for name in STRATEGIES:
        row = out[name]
        print(f"{name:24} median {row['median_s']:6.1f} s  x{row['ratio_to_all_at_once']}")
    for on_name, off_name in (
        ("in place, 1 at a time", "in place, no smoke gate"),
        ("surge (defaults)", "surge, no smoke gate"),
    ):
        on, off = out[on_name]["median_s"], out[off_name]["median_s"]
        print(f"{on_name} vs {off_name}: smoke gate on/off x{on / off:.2f}")


if __name__ == "__main__":
    main()
