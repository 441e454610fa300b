# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet converge speed on the simulated hosts (over real SSH), measured side by side in one run:

1. no-op converge of 3 hosts x 4 deployments (one replica of each deployment on every host: 12 servers),
   ``playbooks/converge.yml`` wall time (goal < 10 s);
2. no-op converge of 8 deployments on one host: ``playbooks/converge.yml`` vs an equivalent hand-written
   ``community.docker.docker_container`` playbook (same image, argv, env, GPUs, mounts, host network, IPC) on the
   same host (goal <= 0.5x). community.docker comes from the PyPI ``ansible`` package (wheel in bench/out/dl/,
   downloaded when missing; Galaxy is unreachable), unpacked into bench/out/collections/.

Run: ``python bench/fleet_converge.py [--repeat 3] [--part 1|2|all] [--keep]``. Needs the bed (``hack/setup.sh``).
Prints median wall times and ratios; writes bench/out/fleet_converge.json and its inventories under bench/out/fleet/.
Both parts set up their servers first (not timed), then time no-op runs; the servers are removed at the end
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
WORK = OUT / "fleet"
MODELS = ROOT / ".build" / "fleet"
HOSTS_INV = ROOT / ".build" / "hosts" / "inventory.yml"
IMAGE = "vllm/vllm-openai:v0.10.2"
GOAL_NOOP_S = 10.0
GOAL_RATIO = 0.5


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        PATH=f"{ROOT / '.venv' / 'bin'}:{e.get('PATH', '')}",
        ANSIBLE_COLLECTIONS_PATH=f"{ROOT / '.build' / 'collections'}:{OUT / 'collections'}",
        ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
        ANSIBLE_PYTHON_INTERPRETER=str(ROOT / ".venv" / "bin" / "python"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_PIPELINING="1",
        ANSIBLE_HOST_KEY_CHECKING="false",
        ANSIBLE_DEPRECATION_WARNINGS="false",
    )
    return e


def run(cmd: list[str], check: bool = True, timeout: int = 900) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - t0
    if check and proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return wall, proc


def changed_total(stdout: str) -> int:
    import re

    return sum(int(n) for n in re.findall(r"changed=(\d+)", stdout.split("PLAY RECAP")[-1]))


def write_inventory(name: str, deployments: list[dict[str, Any]], hosts: list[str]) -> Path:
    inv = WORK / name
    if inv.exists():
        shutil.rmtree(inv)
    (inv / "group_vars" / "all").mkdir(parents=True)
    base = yaml.safe_load(HOSTS_INV.read_text())
    group = base["all"]["children"]["gpu_hosts"]["hosts"]
    base["all"]["children"]["gpu_hosts"]["hosts"] = {h: v for h, v in group.items() if h in hosts}
    (inv / "hosts.yml").write_text(yaml.safe_dump(base))
    (inv / "group_vars" / "all" / "fleet.yml").write_text(
        yaml.safe_dump(
            {
                "gpufleet_allowed_model_dirs": [str(MODELS)],
                "gpufleet_artifacts_dir": str(WORK / f"{name}-artifacts"),
                "gpufleet_show_plan": False,
                "gpufleet_deployments": deployments,
            }
        )
    )
    return inv


def deployment(i: int, **extra: Any) -> dict[str, Any]:
    dep = {
        "name": f"bench-{i}",
        "model": str(MODELS / "models" / "tiny-chat"),
        "vllm_version": "0.10.2",
        "port": 8400 + 10 * i,
        "gpu_sharing": True,
        "gpu_memory_utilization": 0.1,
        "engine_options": {"max_model_len": 1024},
        "env": {"VLLM_LOGGING_LEVEL": "INFO"},
    }
    dep.update(extra)
    return dep


def converge(inv: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    return run(["ansible-playbook", "-i", str(inv), str(ROOT / "playbooks" / "converge.yml"), *args])


def cleanup(inv: Path) -> None:
    run(
        [
            "ansible-playbook",
            "-i",
            str(inv),
            str(ROOT / "playbooks" / "stop.yml"),
            "-e",
            "all=true",
            "-e",
            "state=absent",
        ],
        check=False,
    )


def median_noop(label: str, cmd_run: Any, repeat: int) -> dict[str, Any]:
    walls = []
    for _round in range(repeat):
        wall, proc = cmd_run()
        changed = changed_total(proc.stdout)
        if changed:
            sys.exit(f"{label}: a no-op run reported changed={changed}:\n{proc.stdout[-3000:]}")
        walls.append(wall)
    return {"median_s": round(statistics.median(walls), 2), "runs_s": [round(w, 2) for w in walls]}


def part1(repeat: int, keep: bool) -> dict[str, Any]:
    # One replica of each of 4 deployments on each of the 3 hosts (pinned spread: replicas=3, spread).
    deps = [deployment(i, replicas=3, placement="spread") for i in range(4)]
    inv = write_inventory("noop-3x4", deps, ["gpu-a", "gpu-b", "gpu-c"])
    wall = converge(inv)[0]
    print(f"part 1 set-up converge (12 servers): {wall:.1f} s")
    res = median_noop("part 1", lambda: converge(inv), repeat)
    res.update(goal_s=GOAL_NOOP_S, servers=12, hosts=3, deployments=4)
    print(
        f"part 1: no-op converge, 3 hosts x 4 deployments: median {res['median_s']} s (goal < {GOAL_NOOP_S} s) runs {res['runs_s']}"
    )
    if not keep:
        cleanup(inv)
    return res


def community_docker() -> Path:
    """community.docker from the PyPI `ansible` wheel, unpacked once into bench/out/collections."""
    dest = OUT / "collections" / "ansible_collections" / "community" / "docker"
    if (dest / "plugins" / "modules" / "docker_container.py").exists():
        return dest
    wheels = sorted((OUT / "dl").glob("ansible-*.whl"))
    if not wheels:
        (OUT / "dl").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "pip"), "download", "--no-deps", "-q", "-d", str(OUT / "dl"), "ansible"],
            check=True,
        )
        wheels = sorted((OUT / "dl").glob("ansible-*.whl"))
    prefix = "ansible_collections/community/docker/"
    with zipfile.ZipFile(wheels[-1]) as zf:
        for member in zf.namelist():
            if member.startswith(prefix) and not member.endswith("/"):
                target = OUT / "collections" / member
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(member))
    return dest


def docker_playbook(host: str, deps: list[dict[str, Any]]) -> Path:
    """The hand-written equivalent: one docker_container task looping over the same 8 servers."""
    items = []
    for d in deps:
        items.append(
            {
                "name": f"cd-{d['name']}",
                "port": d["port"] + 5,
                "gpu": str(d["gpus"][0]),
            }
        )
    model = str(MODELS / "models" / "tiny-chat")
    play = [
        {
            "name": "vLLM servers with community.docker",
            "hosts": host,
            "gather_facts": False,
            "tasks": [
                {
                    "name": "vLLM container",
                    "community.docker.docker_container": {
                        "name": "{{ item.name }}",
                        "image": IMAGE,
                        "state": "started",
                        "restart_policy": "unless-stopped",
                        "network_mode": "host",
                        "ipc_mode": "host",
                        "command": [
                            model,
                            "--host",
                            "0.0.0.0",
                            "--port",
                            "{{ item.port }}",
                            "--served-model-name",
                            "{{ item.name }}",
                            "--tensor-parallel-size",
                            "1",
                            "--gpu-memory-utilization",
                            "0.1",
                            "--max-model-len",
                            "1024",
                        ],
                        "env": {"VLLM_LOGGING_LEVEL": "INFO"},
                        "mounts": [{"type": "bind", "source": model, "target": model, "read_only": True}],
                        "device_requests": [
                            {
                                "driver": "nvidia",
                                "count": 0,
                                "device_ids": ["{{ item.gpu }}"],
                                "capabilities": [["gpu"]],
                            }
                        ],
                        "labels": {"bench": "community.docker"},
                    },
                    "loop": items,
                    "loop_control": {"label": "{{ item.name }}"},
                },
            ],
        }
    ]
    path = WORK / "community-docker.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return path


def part2(repeat: int, keep: bool) -> dict[str, Any]:
    host = "gpu-b"  # 4 GPUs: two servers per GPU (gpu_sharing)
    deps = [deployment(i, host=host, gpus=[i % 4]) for i in range(8)]
    inv = write_inventory("noop-1x8", deps, [host])
    wall = converge(inv)[0]
    print(f"part 2 set-up converge (8 servers on {host}): {wall:.1f} s")
    community_docker()
    book = docker_playbook(host, deps)
    cd_cmd = ["ansible-playbook", "-i", str(inv), str(book)]
    wall = run(cd_cmd)[0]
    print(f"part 2 set-up community.docker (8 servers on {host}): {wall:.1f} s")
    ours_list, theirs_list = [], []
    for _round in range(repeat):  # interleaved, so both see the same machine load
        ours_list.append(median_noop("part 2 ours", lambda: converge(inv), 1)["median_s"])
        theirs_list.append(median_noop("part 2 community.docker", lambda: run(cd_cmd), 1)["median_s"])
    ours, theirs = statistics.median(ours_list), statistics.median(theirs_list)
    res = {
        "ours_median_s": ours,
        "ours_runs_s": ours_list,
        "community_docker_median_s": theirs,
        "community_docker_runs_s": theirs_list,
        "ratio": round(ours / theirs, 2),
        "goal_ratio": GOAL_RATIO,
    }
    print(
        f"part 2: no-op, 8 deployments on one host: converge.yml {ours} s vs community.docker {theirs} s "
        f"-> ratio {res['ratio']} (goal <= {GOAL_RATIO})"
    )
    if not keep:
        cleanup(inv)
        for d in deps:
            run(
                [
                    "ansible",
                    host,
                    "-i",
                    str(inv),
                    "-m",
                    "community.docker.docker_container",
                    "-a",
                    f"name=cd-{d['name']} state=absent",
                ],
                check=False,
            )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--part", choices=["1", "2", "all"], default="all")
    ap.add_argument("--keep", action="store_true", help="leave the servers running")
    args = ap.parse_args()
    if not HOSTS_INV.exists():
        sys.exit("the simulated hosts are not up: run hack/setup.sh (or sim/hosts/hosts.sh up)")
    subprocess.run([str(ROOT / "sim" / "steps.d" / "70-fleet.sh"), "up"], check=True)
    # The fleet tests take the same lock (tests/fixtures/hosts.py: sim_fleet_lock): both stop every managed server.
    lock = open(HOSTS_INV.parent / ".fleet-tests.lock", "w")  # held until the process exits
    print("waiting for the simulated hosts (.build/hosts/.fleet-tests.lock)", flush=True)
    fcntl.flock(lock, fcntl.LOCK_EX)
    WORK.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count()}
    if args.part in ("1", "all"):
        result["noop_3_hosts_x_4_deployments"] = part1(args.repeat, args.keep)
    if args.part in ("2", "all"):
        result["noop_8_deployments_one_host_vs_community_docker"] = part2(args.repeat, args.keep)
    (OUT / "fleet_converge.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT / 'fleet_converge.json'}")


if __name__ == "__main__":
    main()
