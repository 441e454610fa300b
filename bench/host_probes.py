# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the per-converge host probes cost, the old way and the new way side by side, on one simulated host (real SSH):

1. the converge's preflight (role gpu_host, entry point ``interpreter``): a ``raw`` Python that imports every GPU-host
   requirement (before) vs one that finds them with ``importlib.util.find_spec`` (now);
2. the gateway's and the replica guard's "Install HAProxy" on a host that has it: ``ansible.builtin.package``
   (``state: present``: the apt cache read on every run, before) vs the one read-only ``command`` that finds HAProxy's
   binary (now; the package task then skips).

Each variant runs as an ad-hoc ``ansible`` command against the host, ``--repeat`` times, alternating; the CPU seconds
are the whole machine's (``/proc/stat``: the controller's processes, the host's sshd and module) and the wall seconds
the command's. Prints medians, the ratios now/before and the CPU seconds saved per run (each run includes the ad-hoc
command's own start, about 0.6 CPU-s, the same in both: the saving is what a converge saves per host). Run: ``python bench/host_probes.py [--host gpu-a]
[--repeat 5]``; needs the bed (``hack/setup.sh``; ``sim/bed.sh up``). Changes nothing on the host (HAProxy must be
installed there: the bed's hosts have it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / ".build" / "hosts" / "inventory.yml"
IMPORTS = yaml.safe_load((ROOT / "roles" / "gpu_host" / "vars" / "main.yml").read_text())
MODULES = IMPORTS["gpu_host_python_imports"]
FIND_SCRIPT = IMPORTS["gpu_host_find_modules_script"]
DEPLOYMENTS = ROOT / "roles" / "deployments"


def guard_probe_argv() -> list[str]:
    """The replica guard's probe command as the role runs it (its task's argv, the binary's path filled in)."""
    tasks = yaml.safe_load((DEPLOYMENTS / "tasks" / "replica_guard_run.yml").read_text())
    (task,) = [t for t in tasks if t["name"].startswith("Find out what the host has")]
    haproxy = yaml.safe_load((DEPLOYMENTS / "vars" / "main.yml").read_text())["_deployments_guard_bin"]
    return [a.replace("{{ _deployments_guard_bin }}", haproxy) for a in task["ansible.builtin.command"]["argv"]]


def busy_ticks() -> int:
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def interpreter(host: str) -> str:
    """The interpreter Ansible uses on the host: the inventory's, else ANSIBLE_PYTHON_INTERPRETER (hack/env.sh)."""
    inv = yaml.safe_load(INVENTORY.read_text())["all"]
    for level in (inv["children"]["gpu_hosts"]["hosts"][host] or {}, inv.get("vars") or {}):
        if "ansible_python_interpreter" in level:
            return str(level["ansible_python_interpreter"])
    return os.environ.get("ANSIBLE_PYTHON_INTERPRETER", "python3")


def run(host: str, module: str, args: str) -> tuple[float, float]:
    """(CPU seconds of the whole machine, wall seconds) of one ad-hoc run; fails loudly when the run fails."""
    hz = os.sysconf("SC_CLK_TCK")
    env = {**os.environ, "ANSIBLE_PIPELINING": "1", "ANSIBLE_NOCOLOR": "1"}
    cmd = ["ansible", host, "-i", str(INVENTORY), "-m", module, "-a", args]
    t0, c0 = time.monotonic(), busy_ticks()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=300)
    wall, cpu = time.monotonic() - t0, (busy_ticks() - c0) / hz
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return cpu, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="gpu-a")
    ap.add_argument("--repeat", type=int, default=5)
    opts = ap.parse_args()
    if not INVENTORY.exists():
        sys.exit(f"{INVENTORY} is missing: start the bed first (sim/bed.sh up)")
    python = interpreter(opts.host)
    pairs = {
        "preflight (raw)": (
            ("raw", f"{python} -c 'import {', '.join(MODULES)}'"),
            ("raw", f"{python} -c '{FIND_SCRIPT}' {' '.join(MODULES)}"),
        ),
        "HAProxy present": (
            ("ansible.builtin.package", "name=haproxy state=present"),
            ("ansible.builtin.command", json.dumps({"argv": guard_probe_argv()})),
        ),
    }
    run(opts.host, "ansible.builtin.ping", "")  # the SSH master connection and caches, not counted
    print(f"host {opts.host}, {opts.repeat} runs each, medians (whole machine's CPU seconds; wall seconds)")
    print(
        f"{'probe':<18} {'before cpu':>10} {'now cpu':>8} {'ratio':>6} {'saved':>6}   {'before s':>8} {'now s':>6} {'ratio':>6}"
    )
    for name, (before, now) in pairs.items():
        samples: dict[str, list[tuple[float, float]]] = {"before": [], "now": []}
        for _ in range(opts.repeat):
            samples["before"].append(run(opts.host, *before))
            samples["now"].append(run(opts.host, *now))
        b_cpu, n_cpu = (statistics.median(c for c, _ in samples[k]) for k in ("before", "now"))
        b_wall, n_wall = (statistics.median(w for _, w in samples[k]) for k in ("before", "now"))
        print(
            f"{name:<18} {b_cpu:10.2f} {n_cpu:8.2f} {n_cpu / b_cpu:6.2f} {b_cpu - n_cpu:6.2f}   {b_wall:8.2f} {n_wall:6.2f} {n_wall / b_wall:6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
