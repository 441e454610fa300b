"""Benchmark of gpufleet.vllm.vllm_container, side by side with community.docker.docker_container, in one run.

1. No-op converge time: the same server (image, argv, env, GPU device request, mounts, host network, ipc, restart
   policy, labels) already running; each module is asked again. Measured two ways, alternating the modules:
   - per task: a play looping the task N times, (T(N) - T(1)) / (N - 1), which removes ansible-playbook start-up;
   - per playbook: wall time of a one-task ansible-playbook run (what a user waits for).
   Both modules must report changed=false on every no-op run, or the comparison is void (it is checked).
2. Return delay: a fresh start of the stand-in; a prober in this process polls /health every 5 ms; the delay from
   its first 200 to the module's ``readiness.ready_at`` (module side) and to ansible-playbook's exit (user side).

community.docker comes from PyPI's ``ansible`` package (Galaxy is unreachable), downloaded into bench/out/.
Writes only under bench/out/. Usage: .venv/bin/python bench/vllm_container.py [--n 10] [--starts 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
IMAGE = "vllm/vllm-openai:v0.10.2"
PORT_OURS, PORT_CD = 18901, 18902


def community_docker() -> Path:
    """bench/out/collections with community.docker extracted from the PyPI `ansible` wheel."""
    coll = OUT / "collections"
    if (coll / "ansible_collections" / "community" / "docker").is_dir():
        return coll
    pkgs = OUT / "pkgs"
    pkgs.mkdir(parents=True, exist_ok=True)
    if not list(pkgs.glob("ansible-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "ansible", "--no-deps", "-d", str(pkgs), "-q"], check=True
        )
    wheel = sorted(pkgs.glob("ansible-*.whl"))[-1]
    with zipfile.ZipFile(wheel) as z:
        for n in z.namelist():
            if n.startswith("ansible_collections/community/docker/"):
                z.extract(n, coll)
    return coll


def env_for(cd_coll: Path, ours: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = f"{ours}:{cd_coll}"
    env["ANSIBLE_COLLECTIONS_SCAN_SYS_PATH"] = "false"
    env["ANSIBLE_PYTHON_INTERPRETER"] = str(ROOT / ".venv" / "bin" / "python")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_LOCALHOST_WARNING"] = "false"
    env["ANSIBLE_INVENTORY_UNPARSED_WARNING"] = "false"
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.builtin.default"
    env["ANSIBLE_CALLBACK_RESULT_FORMAT"] = "json"
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"
    return env


def tasks(model: str, work: Path) -> dict[str, dict]:
    """The two equivalent task bodies."""
    ours = {
        "gpufleet.vllm.vllm_container": {
            "name": "bench-ours",
            "image": IMAGE,
            "model": model,
            "host": "127.0.0.1",
            "port": PORT_OURS,
            "gpus": ["0"],
            "env": {"BENCH": "1", "OTHER": "x"},
            "hf_cache_dir": str(work / "hf"),
            "compile_cache_dir": str(work / "cc"),
            "manifest_dir": str(work / "manifests"),
            "stop_timeout": 5,
        }
    }
    cd = {
        "community.docker.docker_container": {
            "name": "gpufleet-bench-cd",
            "image": IMAGE,
            "command": [model, "--host", "127.0.0.1", "--port", str(PORT_CD)],
            "env": {"BENCH": "1", "OTHER": "x"},
            # driver + count: 0 avoid community.docker's recreate-every-run trap with device_requests
            "device_requests": [{"driver": "nvidia", "count": 0, "device_ids": ["0"], "capabilities": [["gpu"]]}],
            "volumes": [
                f"{work / 'hf'}:/root/.cache/huggingface:rw",
                f"{work / 'cc' / 'bench-ours'}:/root/.cache/vllm:rw",
                f"{model}:{model}:ro",
            ],
            "network_mode": "host",
            "ipc_mode": "host",
            "restart_policy": "unless-stopped",
            "labels": {"bench": "community.docker"},
            "state": "started",
            "stop_timeout": 5,
        }
    }
    return {"ours": ours, "cd": cd}


def playbook(path: Path, task: dict, loops: int) -> None:
    t = dict(task)
    t["register"] = "r"
    if loops > 1:
        t["loop"] = list(range(loops))
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local", "tasks": [t]}]
    path.write_text(json.dumps(play))


def run_playbook(path: Path, env: dict[str, str], verbose: bool = False) -> tuple[float, str]:
    t0 = time.perf_counter()
    cmd = ["ansible-playbook", "-i", "localhost,", str(path), *(["-v"] if verbose else [])]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{path.name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
    return dt, r.stdout


def task_result(stdout: str) -> dict:
    """The result dict `-v` prints after "changed: [localhost] => "."""
    idx = stdout.find("[localhost] => {")
    return json.JSONDecoder().raw_decode(stdout[idx + len("[localhost] => ") :])[0]


def payloads(pbs: dict[str, Path], env: dict[str, str], work: Path) -> dict[str, Path]:
    """The AnsiballZ payload of each module's no-op task (ANSIBLE_KEEP_REMOTE_FILES), to time the module alone."""
    out = {}
    for k, path in pbs.items():
        tmp = work / f"remote-tmp-{k}"
        e = {**env, "ANSIBLE_KEEP_REMOTE_FILES": "1", "ANSIBLE_REMOTE_TMP": str(tmp)}
        run_playbook(path, e)
        out[k] = next(tmp.glob("ansible-tmp-*/AnsiballZ_*.py"))
    return out


def time_payload(payload: Path) -> tuple[float, dict]:
    py = str(ROOT / ".venv" / "bin" / "python")
    t0 = time.perf_counter()
    r = subprocess.run([py, str(payload)], capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    return dt, json.loads(r.stdout)


def changed_count(stdout: str) -> int:
    for line in stdout.splitlines():
        if line.startswith("localhost") and "changed=" in line:
            return int(line.split("changed=")[1].split()[0])
    return -1


def prober(port: int, stop: threading.Event, first: dict) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as r:
                if r.status == 200 and "t" not in first:
                    first["t"] = time.time()
        except OSError:
            pass
        time.sleep(0.005)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10, help="loop length for the per-task no-op time")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--starts", type=int, default=3, help="fresh starts for the return delay")
    ap.add_argument("--collections", default=str(ROOT / ".build" / "collections"), help="where gpufleet.vllm is")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    cd_coll = community_docker()
    env = env_for(cd_coll, Path(a.collections))
    work = Path(tempfile.mkdtemp(prefix="bench-vllm-container-", dir=OUT))
    model = work / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["Qwen3ForCausalLM"], "max_position_embeddings": 4096}')
    (work / "cc" / "bench-ours").mkdir(parents=True)
    (work / "hf").mkdir()
    bodies = tasks(str(model), work)
    pb = {}
    # The floor of a per-task time: a task that does nothing (ansible.builtin.ping), measured the same way.
    floor_body = {"ansible.builtin.ping": {}}
    for k, body in {**bodies, "floor": floor_body}.items():
        for n in (1, a.n):
            pb[(k, n)] = work / f"{k}-{n}.json"
            playbook(pb[(k, n)], body, n)
    results: dict = {"n": a.n, "rounds": a.rounds}
    try:
        for k in bodies:  # create both once
            run_playbook(pb[(k, 1)], env)
        one: dict[str, list[float]] = {"ours": [], "cd": [], "floor": []}
        per_task: dict[str, list[float]] = {"ours": [], "cd": [], "floor": []}
        flaps = {"ours": 0, "cd": 0, "floor": 0}
        for _round in range(a.rounds):
            for k in (*bodies, "floor"):
                t1, out1 = run_playbook(pb[(k, 1)], env)
                tn, outn = run_playbook(pb[(k, a.n)], env)
                flaps[k] += changed_count(out1) + changed_count(outn)
                one[k].append(t1)
                per_task[k].append((tn - t1) / (a.n - 1))
        med = {k: statistics.median(v) for k, v in per_task.items()}
        med1 = {k: statistics.median(v) for k, v in one.items()}
        results["noop"] = {
            "per_task_s": med,
            "per_playbook_s": med1,
            "ratio_per_task": med["ours"] / med["cd"],
            "ratio_per_playbook": med1["ours"] / med1["cd"],
            "changed_on_noop_runs": flaps,
        }
        print(f"no-op converge, per task   : ours {med['ours']:.3f} s  community.docker {med['cd']:.3f} s  "
              f"ratio {med['ours'] / med['cd']:.2f}  (goal <= 0.5)")  # fmt: skip
        print(f"no-op converge, per playbook: ours {med1['ours']:.3f} s  community.docker {med1['cd']:.3f} s  "
              f"ratio {med1['ours'] / med1['cd']:.2f}")  # fmt: skip
        print(f"changed=true on no-op runs  : ours {flaps['ours']}  community.docker {flaps['cd']}  (must be 0)")
        fl = med["floor"]
        results["noop"]["per_task_floor_s"] = fl
        results["noop"]["per_task_lowest_possible_ratio"] = fl / med["cd"]
        print(f"  per-task floor (a looped ansible.builtin.ping) {fl:.3f} s; above it: ours {med['ours'] - fl:.3f} s  "
              f"community.docker {med['cd'] - fl:.3f} s  ratio {(med['ours'] - fl) / max(med['cd'] - fl, 1e-9):.2f}; "
              f"a module taking no time at all would be at {fl / med['cd']:.2f}")  # fmt: skip

        # The module alone (its AnsiballZ payload run directly on the host), alternating, a.n x a.rounds each.
        ping = work / "ping.json"
        playbook(ping, {"ansible.builtin.ping": {}}, 1)
        pls = payloads({**{k: pb[(k, 1)] for k in bodies}, "floor": ping}, env, work)
        mod: dict[str, list[float]] = {"ours": [], "cd": [], "floor": []}
        for _round in range(a.n * a.rounds):
            for k, pl in pls.items():
                dt, res = time_payload(pl)
                if res.get("changed"):
                    flaps[k] += 1
                mod[k].append(dt)
        medm = {k: statistics.median(v) for k, v in mod.items()}
        results["noop"]["module_only_s"] = medm
        results["noop"]["ratio_module_only"] = medm["ours"] / medm["cd"]
        print(f"no-op converge, module only : ours {medm['ours']:.3f} s  community.docker {medm['cd']:.3f} s  "
              f"ratio {medm['ours'] / medm['cd']:.2f}  (goal <= 0.5)")  # fmt: skip
        net = {k: medm[k] - medm["floor"] for k in ("ours", "cd")}
        results["noop"]["module_net_of_floor_s"] = net
        results["noop"]["ratio_module_net_of_floor"] = net["ours"] / net["cd"] if net["cd"] > 0 else None
        print(f"  floor (ansible.builtin.ping payload) {medm['floor']:.3f} s; above it: ours {net['ours']:.3f} s  "
              f"community.docker {net['cd']:.3f} s  ratio {net['ours'] / max(net['cd'], 1e-9):.2f}")  # fmt: skip
        # The fastest run of each (the one least disturbed by other load on a shared machine), as a second view.
        mn = {k: min(v) for k, v in mod.items()}
        results["noop"]["module_only_min_s"] = mn
        print(f"  fastest runs, module only: ours {mn['ours']:.3f} s  community.docker {mn['cd']:.3f} s  ratio "
              f"{mn['ours'] / mn['cd']:.2f}; floor {mn['floor']:.3f} s; above it: ours {mn['ours'] - mn['floor']:.3f} s  "
              f"community.docker {mn['cd'] - mn['floor']:.3f} s")  # fmt: skip

        # Return delay after a fresh start.
        absent = work / "absent.json"
        absent.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "connection": "local", "tasks": [
            {"gpufleet.vllm.vllm_container": {"name": "bench-ours", "state": "absent",
                                              "manifest_dir": str(work / "manifests")}}]}]))  # fmt: skip
        start = work / "start.json"
        body = json.loads(json.dumps(bodies["ours"]))
        body["gpufleet.vllm.vllm_container"]["env"]["STANDIN_START_DELAY"] = "2"
        start.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "connection": "local",
                                      "tasks": [body]}]))  # fmt: skip
        module_delays, user_delays = [], []
        for _start in range(a.starts):
            run_playbook(absent, env)
            first: dict = {}
            stop = threading.Event()
            th = threading.Thread(target=prober, args=(PORT_OURS, stop, first), daemon=True)
            th.start()
            out = run_playbook(start, env, verbose=True)[1]
            t_exit = time.time()
            stop.set()
            th.join()
            res = task_result(out)
            ready_at = res["readiness"]["ready_at"]
            if "t" not in first:
                raise SystemExit("the prober never saw /health answer")
            module_delays.append(ready_at - first["t"])
            user_delays.append(t_exit - first["t"])
        results["return_delay"] = {
            "module_s": module_delays,
            "playbook_exit_s": user_delays,
            "median_module_s": statistics.median(module_delays),
            "median_playbook_exit_s": statistics.median(user_delays),
        }
        print(f"first /health -> module ready: median {statistics.median(module_delays) * 1000:.0f} ms "
              f"(runs: {', '.join(f'{d * 1000:.0f}' for d in module_delays)} ms; goal <= 500 ms)")  # fmt: skip
        print(f"first /health -> ansible-playbook exit: median {statistics.median(user_delays) * 1000:.0f} ms")
    finally:
        subprocess.run(
            ["docker", "rm", "-f", "gpufleet-bench-ours", "gpufleet-bench-cd"], capture_output=True, check=False
        )
        (OUT / "vllm_container.json").write_text(json.dumps(results, indent=2) + "\n")
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
