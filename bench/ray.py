# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge-to-ready of a multi-host replica (docs/ray.md) vs the same replica on one host, side by side in one run:

1. ``one``: TP=2 on gpu-a's two GPUs (distributed: none): ``playbooks/converge.yml`` from nothing to the replica
   passing its readiness gate;
2. ``wide``: TP=2 over gpu-a + gpu-b, one GPU each (reservations leave one free GPU per host, so the planner spans
   hosts): the same converge, which also starts the Ray head and worker and waits for the cluster.

Same stand-in image with real Ray (gpufleet/bed-vllm-ray, sim/images/ray.sh), same model, same run; each case is
removed (state: absent) before the next. Prints the median wall times and the ratio wide / one. Not in the test
command. Run: ``python bench/ray.py [--repeat 3]``; needs the bed (``hack/setup.sh``); writes bench/out/ray.json.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_converge import HOSTS_INV, MODELS, OUT, ROOT, WORK, run, write_inventory

PORT = 8395
HOSTS = ["gpu-a", "gpu-b"]
# A 2-core bed starts Ray's agents slowly; a 100 MB object store, not Ray's share of the machine (test_ray.py).
RAY_ENV = {
    "RAY_agent_register_timeout_ms": "300000",
    "RAY_raylet_start_wait_time_s": "300",
    "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": "100000000",
}


def deployment(image: str, distributed: str, state: str = "present") -> dict[str, Any]:
    pin = {"host": "gpu-a"} if distributed == "none" else {}  # the head's host: the same server host either way
    return {
        **pin,
        "name": "raybench",
        "model": str(MODELS / "models" / "tp-model"),
        "image": image,
        "tensor_parallel_size": 2,
        "distributed": distributed,
        "port": PORT,
        "env": RAY_ENV,
        "state": state,
    }


def inventory(case: str, image: str, state: str = "present") -> Path:
    inv = write_inventory(f"ray-{case}", [deployment(image, "ray" if case == "wide" else "none", state)], HOSTS)
    if case == "wide":
        (inv / "host_vars").mkdir()
        for host, reserved in (("gpu-a", [1]), ("gpu-b", [1, 2, 3])):
            (inv / "host_vars" / f"{host}.yml").write_text(f"gpufleet_gpu_reservations: {reserved}\n")
    return inv


def converge(inv: Path) -> float:
    wall, _proc = run(["ansible-playbook", "-i", str(inv), str(ROOT / "playbooks" / "converge.yml")], timeout=900)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(ROOT / "sim" / "steps.d" / "70-fleet.sh"), "up"], check=True)
    subprocess.run([str(ROOT / "sim" / "images" / "ray.sh"), "load", *HOSTS], check=True, capture_output=True)
    image = subprocess.run(
        [str(ROOT / "sim" / "images" / "ray.sh"), "ref"], check=True, capture_output=True, text=True
    ).stdout.strip()
    lock = open(HOSTS_INV.parent / ".fleet-tests.lock", "w")  # the fleet tests' lock, held until exit
    print("waiting for the simulated hosts (.build/hosts/.fleet-tests.lock)", flush=True)
    fcntl.flock(lock, fcntl.LOCK_EX)
    walls: dict[str, list[float]] = {"one": [], "wide": []}
    for _round in range(args.repeat):
        for case in ("one", "wide"):  # interleaved: both see the same machine load
            converge(inventory(case, image, "absent"))  # from nothing (not timed)
            walls[case].append(converge(inventory(case, image)))
            converge(inventory(case, image, "absent"))
    result = {
        case: {"median_s": round(statistics.median(w), 2), "runs_s": [round(x, 2) for x in w]}
        for case, w in walls.items()
    }
    result["ratio_wide_over_one"] = round(result["wide"]["median_s"] / result["one"]["median_s"], 2)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ray.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"converge to ready, TP=2 on one host:       {result['one']['median_s']} s (median of {args.repeat})")
    print(f"converge to ready, TP=2 over 2 hosts (Ray): {result['wide']['median_s']} s (median of {args.repeat})")
    print(f"ratio wide / one: {result['ratio_wide_over_one']}")


if __name__ == "__main__":
    main()
