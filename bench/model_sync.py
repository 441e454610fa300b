# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of gpufleet.vllm.model_sync, side by side in one run, against the fake hub on loopback.

1. First sync of a ~2 GB model (model_sync process: resolve, free-space check, download with huggingface_hub,
   validation, swap, manifest) vs `curl` fetching the same files from the same server into the same filesystem.
   Goal: model_sync throughput >= 0.9x curl's.
2. No-op re-sync of a 50-shard model: wall time of the module process (python start, imports, one revision
   request, stat() of every file). Goal: < 0.3 s.

Usage: python bench/model_sync.py [--size-mb 2048] [--shards 4] [--reps 3] [--dest disk|tmpfs]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--size-mb", type=int, default=2048, help="total weight size of the big model")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--noop-shards", type=int, default=50)
    ap.add_argument("--noop-reps", type=int, default=7)
    ap.add_argument(
        "--dest",
        choices=["disk", "tmpfs"],
        default="disk",
        help="where both sides write: the disk under /tmp, or a tmpfs (takes the disk's writeback out of the race)",
    )
    a = ap.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the baseline")
    _collection_link()
    make_repo = _load("make_repo")
    work = Path(tempfile.mkdtemp(prefix="gpufleet-bench-model-sync-"))
    hub_root = work / "hub"
    hub_root.mkdir()
    proc = None
    dest_root = work / "dest"
    dest_root.mkdir()
    mounted = False
    try:
        if a.dest == "tmpfs":
            size = f"{a.size_mb * 2 + 512}m"
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(dest_root)], check=True)
            mounted = True
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
        from ansible_collections.gpufleet.vllm.plugins.module_utils import model_hub

        wanted = model_hub.select(files, *model_hub.effective_patterns(files, None, None))
        total = sum(wanted.values())
        urls = [(f"{endpoint}/bench/big/resolve/{big_sha}/{p}", p) for p in sorted(wanted)]
        for blob in (hub_root / "bench" / "big" / "blobs").iterdir():  # warm the page cache for both sides
            with blob.open("rb") as f:
                while f.read(1 << 24):
                    pass

        walls: dict[str, list[float]] = {"curl": [], "curl-parallel": [], "module": []}
        for i in range(a.reps):
            for kind in ("curl", "curl-parallel", "module"):  # interleaved, so drift hits all three alike
                dest = dest_root / f"{kind}-{i}"
                if kind == "module":
                    args = {"name": "big", "source": "hf", "repo_id": "bench/big", "models_root": str(dest)}
                    wall, r = run_module(args, env, work)
                    assert r["changed"] and r["size_bytes"] == total, r
                else:
                    wall = run_curl(urls, dest, parallel=kind == "curl-parallel")
                walls[kind].append(wall)
                shutil.rmtree(dest)
                os.sync()  # flush this run's writeback so it does not slow the next one
                print(f"  rep {i} {kind}: {wall:.2f}s", flush=True)
        curl_seq, curl_par, mod = walls["curl"], walls["curl-parallel"], walls["module"]

        def tput(walls: list[float]) -> float:
            return total / statistics.median(walls) / 1e6

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

        res = {
            "dest": a.dest,
            "bytes": total,
            "files": len(wanted),
            "curl_seq_MBps": round(tput(curl_seq), 1),
            "curl_parallel_MBps": round(tput(curl_par), 1),
            "model_sync_MBps": round(tput(mod), 1),
            "ratio_vs_curl": round(tput(mod) / tput(curl_seq), 3),
            "ratio_vs_curl_parallel": round(tput(mod) / tput(curl_par), 3),
            "noop_50_shards_branch_s": round(statistics.median(noop_branch), 3),
            "noop_50_shards_commit_s": round(statistics.median(noop_commit), 3),
            "python_plus_ansible_import_s": round(python_floor, 3),
            "raw": {"curl_seq": curl_seq, "curl_parallel": curl_par, "module": mod, "noop_branch": noop_branch},
        }
        print()
        print(
            f"first sync of {total / 1e9:.2f} GB ({len(wanted)} files) from a loopback fake hub, written to {a.dest}:"
        )
        print(f"  curl (sequential)        {res['curl_seq_MBps']:8.1f} MB/s")
        print(f"  curl -Z (8 parallel)     {res['curl_parallel_MBps']:8.1f} MB/s")
        print(f"  model_sync (module)      {res['model_sync_MBps']:8.1f} MB/s")
        print(f"  ratio model_sync / curl          {res['ratio_vs_curl']:.2f}x  (goal >= 0.9)")
        print(f"  ratio model_sync / curl -Z       {res['ratio_vs_curl_parallel']:.2f}x")
        print(f"no-op re-sync of a {a.noop_shards}-shard model (module process wall time, median of {a.noop_reps}):")
        print(f"  revision=main (one revision request)  {res['noop_50_shards_branch_s']:.3f} s  (goal < 0.3)")
        print(f"  revision=<commit sha> (no request)    {res['noop_50_shards_commit_s']:.3f} s")
        print(f"  floor: python + ansible import        {res['python_plus_ansible_import_s']:.3f} s")
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"model_sync-{a.dest}.json").write_text(json.dumps(res, indent=1))
    finally:
        if mounted:
            subprocess.run(["umount", str(dest_root)], check=False)
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
