# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of gpufleet.vllm.model_sync, side by side in one run, against the fake hub on loopback.

1. First sync of a ~2 GB model (the module process: python start, imports, resolve, free-space check, download
   with the default backend = huggingface_hub, validation, fsync, swap, manifest) vs `curl` fetching the same files
   from the same server into the same filesystem, on disk and on a tmpfs, interleaved rep by rep.
   Goal: model_sync throughput >= 0.9x curl's (sequential curl, one file after the other, like the module's own
   per-file streams; `curl -Z` with 8 parallel transfers is printed for reference).
   The cost of durability is shown twice: the module's own fsync before the swap (the writeback was started while
   the bytes came in, so only the tail is left), and an fsync of curl's files right after curl (no head start).
2. No-op re-sync of a 50-shard model: wall time of the module process (python start, imports, one revision
   request, stat() of every file). Goal: < 0.3 s.

Usage: python bench/model_sync.py [--dest both|disk|tmpfs] [--backends auto[,builtin]] [--size-mb 2048]
                                  [--shards 4] [--reps 5]
Data lives in a temporary directory under /tmp (removed at the end); results go to bench/out/model_sync-<dest>.json.
Load on the machine moves both sides a lot on a small shared box: compare the ratios of one run, not absolute MB/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
COLLECTIONS = ROOT / ".build" / "collections"
MODULE = "ansible_collections.gpufleet.vllm.plugins.modules.model_sync"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "sim" / "hub" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _collection_link() -> None:
    link = COLLECTIONS / "ansible_collections" / "gpufleet" / "vllm"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ROOT)


def run_module(args: dict, env: dict, work: Path) -> tuple[float, dict]:
    argfile = work / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", MODULE, str(argfile)], env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SystemExit(f"module printed no result:\n{proc.stdout}\n{proc.stderr}") from None
    if result.get("failed"):
        raise SystemExit(f"module failed: {result.get('msg')}")
    return wall, result


def run_curl(urls: list[tuple[str, str]], dest: Path, parallel: bool) -> float:
    cmd = ["curl", "-sS", "--no-progress-meter", "--fail", "--create-dirs"]
    if parallel:
        cmd += ["-Z", "--parallel-max", "8"]
    for url, rel in urls:
        cmd += ["-o", str(dest / rel), url]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def fsync_all(dest: Path) -> float:
    """fsync every file and directory under dest (what the module does before its swap), timed."""
    t = time.perf_counter()
    for dirpath, _dirs, files in os.walk(dest, topdown=False):
        for fn in files:
            fd = os.open(os.path.join(dirpath, fn), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - t


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--size-mb", type=int, default=2048, help="total weight size of the big model")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--noop-shards", type=int, default=50)
    ap.add_argument("--noop-reps", type=int, default=7)
    ap.add_argument(
        "--dest",
        choices=["both", "disk", "tmpfs"],
        default="both",
        help="where both sides write: the disk under /tmp, a tmpfs (takes the disk's writeback out of the race), "
        "or both, interleaved rep by rep",
    )
    ap.add_argument(
        "--backends",
        default="auto",
        help="comma-separated download_backend values to time (auto = the default: huggingface_hub; builtin)",
    )
    a = ap.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the baseline")
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    dests = ["disk", "tmpfs"] if a.dest == "both" else [a.dest]
    _collection_link()
    make_repo = _load("make_repo")
    work = Path(tempfile.mkdtemp(prefix="gpufleet-bench-model-sync-"))
    hub_root = work / "hub"
    hub_root.mkdir()
    proc = None
    roots = {d: work / f"dest-{d}" for d in dests}
    mounted: list[Path] = []
    try:
        for d, root in roots.items():
            root.mkdir()
            if d == "tmpfs":
                size = f"{a.size_mb * 2 + 512}m"
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], check=True)
                mounted.append(root)
        t = time.perf_counter()
        shard_bytes = a.size_mb * 1024 * 1024 // a.shards
        big_sha = make_repo.make_repo(hub_root, "bench/big", shards=a.shards, shard_bytes=shard_bytes, original=True)
        many_sha = make_repo.make_repo(hub_root, "bench/many", shards=a.noop_shards, shard_bytes=64 * 1024)
        print(f"generated repos in {time.perf_counter() - t:.1f}s under {work}", flush=True)
        port_file = work / "port"
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "sim" / "hub" / "fakehub.py"),
                "--root",
                str(hub_root),
                "--port-file",
                str(port_file),
            ],
            stdout=subprocess.DEVNULL,
        )
        while not port_file.exists():
            time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{port_file.read_text()}"
        env = {
            **os.environ,
            "PYTHONPATH": str(COLLECTIONS),
            "HF_ENDPOINT": endpoint,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HOME": str(work / "hf-home"),
        }
        env.pop("HF_TOKEN", None)

        # the files model_sync fetches by default (no original/ duplicates), fetched by curl too
        repo = json.loads((hub_root / "bench" / "big" / "repo.json").read_text())
        files = {p: f["size"] for p, f in repo["commits"][big_sha]["files"].items()}
        sys.path.insert(0, str(COLLECTIONS))
        from ansible_collections.gpufleet.vllm.plugins.module_utils._model import hub as model_hub

        wanted = model_hub.select(files, *model_hub.effective_patterns(files, None, None))
        total = sum(wanted.values())
        urls = [(f"{endpoint}/bench/big/resolve/{big_sha}/{p}", p) for p in sorted(wanted)]
        for blob in (hub_root / "bench" / "big" / "blobs").iterdir():  # warm the page cache for both sides
            with blob.open("rb") as f:
                while f.read(1 << 24):
                    pass

        kinds = ["curl", "curl-parallel", *(f"module:{b}" for b in backends)]
        walls = {d: {k: [] for k in kinds} for d in dests}
        curl_fsync = {d: [] for d in dests}
        mod_timings: dict[str, dict[str, list[dict]]] = {d: {b: [] for b in backends} for d in dests}
        loads = [loadavg()]
        for i in range(a.reps):
            for d in dests:
                for kind in kinds:  # interleaved, so drift hits all of them alike
                    dest = roots[d] / f"{kind.replace(':', '-')}-{i}"
                    extra = ""
                    if kind.startswith("module:"):
                        backend = kind.split(":", 1)[1]
                        args = {
                            "name": "big",
                            "source": "hf",
                            "repo_id": "bench/big",
                            "models_root": str(dest),
                            "download_backend": backend,
                        }
                        wall, r = run_module(args, env, work)
                        assert r["changed"] and r["size_bytes"] == total, r
                        mod_timings[d][backend].append(r.get("timings") or {})
                        extra = f"  ({', '.join(f'{k} {v:.2f}s' for k, v in (r.get('timings') or {}).items())})"
                    else:
                        wall = run_curl(urls, dest, parallel=kind == "curl-parallel")
                        if kind == "curl":
                            curl_fsync[d].append(fsync_all(dest))
                            extra = f"  (then fsync of its files {curl_fsync[d][-1]:.2f}s, not counted)"
                    walls[d][kind].append(wall)
                    shutil.rmtree(dest)
                    os.sync()  # flush this run's writeback so it does not slow the next one
                    print(f"  rep {i} {d:5s} {kind:22s} {wall:5.2f}s{extra}", flush=True)
            loads.append(loadavg())

        def tput(ws: list[float]) -> float:
            return total / statistics.median(ws) / 1e6

        # no-op re-sync of a 50-shard model
        models = work / "noop-models"
        run_module({"name": "many", "source": "hf", "repo_id": "bench/many", "models_root": str(models)}, env, work)
        noop_branch, noop_commit = [], []
        for _rep in range(a.noop_reps):
            w, r = run_module(
                {"name": "many", "source": "hf", "repo_id": "bench/many", "models_root": str(models)}, env, work
            )
            assert r["changed"] is False, r
            noop_branch.append(w)
            w, r = run_module(
                {
                    "name": "many",
                    "source": "hf",
                    "repo_id": "bench/many",
                    "revision": many_sha,
                    "models_root": str(models),
                },
                env,
                work,
            )
            noop_commit.append(w)
        t0 = time.perf_counter()
        for _rep in range(a.noop_reps):
            subprocess.run([sys.executable, "-c", "import ansible.module_utils.basic"], env=env, check=True)
        python_floor = (time.perf_counter() - t0) / a.noop_reps
        loads.append(loadavg())

        print()
        print(f"load average (1/5/15 min) during the run: {' → '.join(loads)} on {os.cpu_count()} CPUs")
        OUT.mkdir(parents=True, exist_ok=True)
        for d in dests:
            w = walls[d]
            res: dict = {
                "dest": d,
                "bytes": total,
                "files": len(wanted),
                "load": loads,
                "curl_seq_MBps": round(tput(w["curl"]), 1),
                "curl_parallel_MBps": round(tput(w["curl-parallel"]), 1),
                "curl_then_fsync_s": round(statistics.median(curl_fsync[d]), 3),
            }
            print(f"first sync of {total / 1e9:.2f} GB ({len(wanted)} files) from a loopback fake hub, written to {d}:")
            print(f"  curl (sequential)                 {res['curl_seq_MBps']:8.1f} MB/s")
            print(f"  curl -Z (8 parallel)              {res['curl_parallel_MBps']:8.1f} MB/s")
            for b in backends:
                mbps = tput(w[f"module:{b}"])
                fs_tail = statistics.median([t.get("fsync", 0.0) for t in mod_timings[d][b]])
                key = "model_sync" if b == "auto" else f"model_sync_{b}"
                res[f"{key}_MBps"] = round(mbps, 1)
                res[f"{key}_ratio_vs_curl"] = round(mbps / tput(w["curl"]), 3)
                res[f"{key}_ratio_vs_curl_parallel"] = round(mbps / tput(w["curl-parallel"]), 3)
                res[f"{key}_fsync_s"] = round(fs_tail, 3)
                # each module run against the curl run just before it (same moment's load), median over reps
                paired = statistics.median(c / m for c, m in zip(w["curl"], w[f"module:{b}"], strict=True))
                res[f"{key}_paired_ratio_vs_curl"] = round(paired, 3)
                label = f"model_sync ({'default' if b == 'auto' else b})"
                print(f"  {label:33s} {mbps:8.1f} MB/s")
                print(f"    ratio / curl                    {res[f'{key}_ratio_vs_curl']:.2f}x  (goal >= 0.9)")
                print(f"    median of per-rep ratios / curl {paired:.2f}x  (each run vs the curl run just before it)")
                print(f"    ratio / curl -Z                 {res[f'{key}_ratio_vs_curl_parallel']:.2f}x")
                print(f"    its fsync before the swap       {fs_tail:.2f} s (included above)")
            print(f"  fsync of curl's files after curl  {res['curl_then_fsync_s']:.2f} s (not included above)")
            if "model_sync_ratio_vs_curl" in res:  # the names earlier runs used
                res["ratio_vs_curl"] = res["model_sync_ratio_vs_curl"]
                res["ratio_vs_curl_parallel"] = res["model_sync_ratio_vs_curl_parallel"]
            res.update(
                noop_50_shards_branch_s=round(statistics.median(noop_branch), 3),
                noop_50_shards_commit_s=round(statistics.median(noop_commit), 3),
                python_plus_ansible_import_s=round(python_floor, 3),
                raw={
                    "walls": w,
                    "curl_fsync": curl_fsync[d],
                    "module_timings": mod_timings[d],
                    "noop_branch": noop_branch,
                },
            )
            (OUT / f"model_sync-{d}.json").write_text(json.dumps(res, indent=1))
        print(f"no-op re-sync of a {a.noop_shards}-shard model (module process wall time, median of {a.noop_reps}):")
        print(f"  revision=main (one revision request)  {statistics.median(noop_branch):.3f} s  (goal < 0.3)")
        print(f"  revision=<commit sha> (no request)    {statistics.median(noop_commit):.3f} s")
        print(f"  floor: python + ansible import        {python_floor:.3f} s")
    finally:
        for m in mounted:
            subprocess.run(["umount", str(m)], check=False)
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
