# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of model_sync's S3 source, side by side in one run, against a local S3 (moto's server on loopback,
sim/s3/s3server.py, signatures enforced).

A ~1 GB model (random safetensors shards + config and tokenizer) is uploaded once; then, interleaved rep by rep:

- ``boto3``: a Python process that imports boto3 and calls ``download_file`` for every object, one after the other,
  with boto3's default settings (TransferConfig: 8 MiB parts, 10 threads per file) - the baseline;
- ``model_sync``: the module as a process (what AnsiballZ runs: python start, imports, listing, free-space check,
  parallel ranged GETs, validation, fsync of every file, swap, manifest) into a fresh models root.

Both write to the same filesystem. Goal: model_sync / boto3 >= 1.0 (throughput ratio, i.e. boto3's seconds over
the module's). ``--part-mb 8,16,32`` adds runs of the module with other range sizes (GPUFLEET_S3_PART_MB).

Usage: python bench/s3_sync.py [--size-mb 1024] [--shards 4] [--reps 3] [--workers 8] [--part-mb 16]
Results: bench/out/s3_sync.json. Compare the ratios of one run: the load of a small shared box moves both sides.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
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
BUCKET = "bench-models"

BASELINE = r"""
import json, os, sys, boto3
a = json.loads(sys.argv[1])
c = boto3.client("s3", endpoint_url=a["endpoint_url"], region_name="us-east-1",
                 aws_access_key_id=a["key"], aws_secret_access_key=a["secret"])
for key in a["keys"]:
    dest = os.path.join(a["dest"], key.split("/", 1)[1])
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    c.download_file(a["bucket"], key, dest)
"""


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _collection_link() -> None:
    link = COLLECTIONS / "ansible_collections" / "gpufleet" / "vllm"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ROOT)


def _upload(srv, size_mb: int, shards: int, work: Path) -> list[str]:
    from boto3.s3.transfer import TransferConfig

    gen = _load("bench_make_repo", ROOT / "sim" / "hub" / "make_repo.py")
    c = srv.client()
    c.create_bucket(Bucket=BUCKET)
    files = gen.model_files(shards=shards, shard_bytes=(size_mb << 20) // shards, workdir=work)
    keys = []
    for rel, data in files.items():
        key = f"m/{rel}"
        if isinstance(data, Path):
            with open(data, "r+b") as f:  # random bytes after the header (the generator's are a pattern)
                f.seek(4096)
                left = data.stat().st_size - 4096
                while left > 0:
                    n = min(left, 8 << 20)
                    f.write(os.urandom(n))
                    left -= n
            c.upload_file(str(data), BUCKET, key, Config=TransferConfig(multipart_chunksize=64 << 20))
            data.unlink()
        else:
            c.put_object(Bucket=BUCKET, Key=key, Body=data)
        keys.append(key)
    return keys


def _run_module(srv, root: Path, workers: int, part_mb: int | None) -> dict:
    args = {"name": "m", "source": "s3", "s3_url": f"s3://{BUCKET}/m", "endpoint_url": srv.url,
            "region": "us-east-1", "models_root": str(root), "max_workers": workers, **srv.credentials}  # fmt: skip
    argfile = root.parent / f"args-{time.time_ns()}.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = {**os.environ, "PYTHONPATH": str(COLLECTIONS)}
    if part_mb:
        env["GPUFLEET_S3_PART_MB"] = str(part_mb)
    t = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", MODULE, str(argfile)], env=env, capture_output=True, text=True, check=False
    )
    wall = time.monotonic() - t
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if res.get("failed"):
        raise SystemExit(f"model_sync failed: {res.get('msg')}")
    return {"wall": wall, "timings": res.get("timings"), "bytes": res["size_bytes"]}


def _run_boto3(srv, dest: Path, keys: list[str]) -> float:
    a = {"endpoint_url": srv.url, "key": srv.credentials["aws_access_key_id"],
         "secret": srv.credentials["aws_secret_access_key"], "bucket": BUCKET, "keys": keys, "dest": str(dest)}  # fmt: skip
    t = time.monotonic()
    subprocess.run([sys.executable, "-c", BASELINE, json.dumps(a)], check=True)
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--part-mb", default="", help="extra module runs with these range sizes, e.g. 8,32")
    args = ap.parse_args()
    _collection_link()
    fx = _load("bench_s3_fixture", ROOT / "tests" / "fixtures" / "s3.py")
    base = Path(tempfile.mkdtemp(prefix="gpufleet-bench-s3-", dir="/var/tmp"))
    srv = fx.start_s3(base / "srv")
    load = [os.getloadavg()[0]]
    rows: list[dict] = []
    try:
        t = time.monotonic()
        keys = _upload(srv, args.size_mb, args.shards, base)
        print(f"uploaded {len(keys)} objects ({args.size_mb} MiB) in {time.monotonic() - t:.1f}s", flush=True)
        extra = [int(x) for x in args.part_mb.split(",") if x.strip()]
        for rep in range(args.reps):
            row: dict = {"rep": rep}
            d = base / f"boto3-{rep}"
            row["boto3"] = _run_boto3(srv, d, keys)
            shutil.rmtree(d)
            r = base / f"ms-{rep}" / "models"
            r.parent.mkdir()
            m = _run_module(srv, r, args.workers, None)
            row["model_sync"], row["timings"], size = m["wall"], m["timings"], m["bytes"]
            shutil.rmtree(r.parent)
            for mb in extra:
                r = base / f"ms-{rep}-{mb}" / "models"
                r.parent.mkdir()
                row[f"model_sync_{mb}mib"] = _run_module(srv, r, args.workers, mb)["wall"]
                shutil.rmtree(r.parent)
            row["ratio"] = row["boto3"] / row["model_sync"]
            rows.append(row)
            more = "".join(f"  {mb} MiB {row[f'model_sync_{mb}mib']:.2f}s" for mb in extra)
            print(f"rep {rep}: boto3 download_file {row['boto3']:.2f}s  model_sync {row['model_sync']:.2f}s "
                  f"(x{row['ratio']:.2f}; {row['timings']}){more}", flush=True)  # fmt: skip
        load.append(os.getloadavg()[0])
    finally:
        fx.stop_s3(srv)
        shutil.rmtree(base, ignore_errors=True)
    b = statistics.median(r["boto3"] for r in rows)
    m = statistics.median(r["model_sync"] for r in rows)
    summary = {"size_bytes": size, "reps": rows, "boto3_median_s": b, "model_sync_median_s": m, "ratio": b / m,
               "paired_ratio": statistics.median(r["ratio"] for r in rows), "load": load}  # fmt: skip
    print(f"median: boto3 {b:.2f}s ({size / b / 1e6:.0f} MB/s), model_sync {m:.2f}s ({size / m / 1e6:.0f} MB/s): "
          f"model_sync / boto3 = {b / m:.2f}x (paired {summary['paired_ratio']:.2f}x); load {load[0]:.1f} -> {load[-1]:.1f}")  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "s3_sync.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
