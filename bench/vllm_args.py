# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of plugins/module_utils/_vllm/args: checking one vLLM argv against a release's flag table.

Goal (issue 9): < 5 ms per argv, with the table loaded once per module run. Measured side by side in one run:

1. table load: importing vllm_args in a fresh interpreter (parses every table module, as a module run does),
   less a bare interpreter start, and json.loads of each table's text alone;
2. first check against a table (builds the lookup index, once per process per table);
3. one check, warm: a typical 24-token argv that passes, and a broken one (typo with did-you-mean, removed flag,
   bad choice, bad number, tool-choice rule), per table.

Usage: .venv/bin/python bench/vllm_args.py [--reps 2000]
Results also go to bench/out/vllm_args.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
COLLECTIONS = ROOT / ".build" / "collections"
GOAL_MS = 5.0

GOOD = [
    "meta-llama/Llama-3.1-8B-Instruct",
    "--host", "0.0.0.0", "--port", "8000",
    "--served-model-name", "llama", "llama-8b",
    "--max-model-len", "32k",
    "--gpu-memory-utilization", "0.90",
    "--tensor-parallel-size", "2",
    "--dtype", "bfloat16",
    "--max-num-seqs", "128",
    "--enable-auto-tool-choice", "--tool-call-parser", "llama3_json",
    "--trust-remote-code",
]  # fmt: skip
BAD = [
    "meta-llama/Llama-3.1-8B-Instruct",
    "--max-model-length", "32768",
    "--swap-space", "4",
    "--dtype", "fp16",
    "--tensor-parallel-size", "two",
    "--enable-auto-tool-choice",
    "--gpu-memory-utilisation", "0.9",
]  # fmt: skip


def _collection_link() -> None:
    link = COLLECTIONS / "ansible_collections" / "gpufleet" / "vllm"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ROOT)


def _fresh_import(reps: int = 7) -> float:
    """Median time (ms) to import vllm_args (and so parse every table) in a fresh interpreter, as a module run."""
    code = (
        f"import sys, time; sys.path.insert(0, {str(COLLECTIONS)!r}); t = time.perf_counter(); "
        "from ansible_collections.gpufleet.vllm.plugins.module_utils import vllm_args; "
        "print((time.perf_counter() - t) * 1000)"
    )
    runs = [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)]
    for _rep in range(reps - 1):
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
        runs.append(float(out.stdout))
    return statistics.median(runs)


def _per_call(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _rep in range(reps):
        fn()
    return (time.perf_counter() - t) * 1000 / reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--reps", type=int, default=2000)
    args = ap.parse_args()
    _collection_link()
    sys.path.insert(0, str(COLLECTIONS))

    import_ms = _fresh_import()

    from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import args as vllm_args
    from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm.flag_tables import MODULES

    rows = []
    for version in vllm_args.known_versions():
        source = Path(MODULES[version].__file__).read_text(encoding="utf-8")
        text = source.split('r"""', 1)[1].rsplit('"""', 1)[0]
        loads_ms = _per_call(lambda text=text: json.loads(text), 50)
        t = time.perf_counter()
        first = vllm_args.validate_argv(GOOD, version)
        first_ms = (time.perf_counter() - t) * 1000
        assert first == [], first
        assert len(vllm_args.validate_argv(BAD, version)) >= 5
        good_ms = _per_call(lambda v=version: vllm_args.validate_argv(GOOD, v), args.reps)
        bad_ms = _per_call(lambda v=version: vllm_args.validate_argv(BAD, v), max(args.reps // 10, 50))
        rows.append(
            {
                "version": version,
                "actions": len(MODULES[version].TABLE["actions"]),
                "json_loads_ms": round(loads_ms, 3),
                "first_check_ms": round(first_ms, 3),
                "check_ok_ms": round(good_ms, 4),
                "check_broken_ms": round(bad_ms, 4),
            }
        )

    print(f"table load = vllm_args import in a fresh interpreter (all {len(rows)} tables parsed): {import_ms:.1f} ms")
    header = f"{'version':>8} {'flags':>5} {'loads ms':>9} {'1st ms':>7} {'ok argv ms':>11} {'broken ms':>10} ratio"
    print(header)
    for r in rows:
        worst = max(r["check_ok_ms"], r["check_broken_ms"])
        r["ratio_to_goal"] = round(worst / GOAL_MS, 4)
        print(
            f"{r['version']:>8} {r['actions']:>5} {r['json_loads_ms']:>9.2f} {r['first_check_ms']:>7.2f} "
            f"{r['check_ok_ms']:>11.4f} {r['check_broken_ms']:>10.4f} {r['ratio_to_goal']:.3f}"
        )
    worst = max(max(r["check_ok_ms"], r["check_broken_ms"]) for r in rows)
    print(f"goal: one argv < {GOAL_MS} ms; worst per-call {worst:.3f} ms = {worst / GOAL_MS:.3f}x the goal")
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"goal_ms": GOAL_MS, "import_ms": round(import_ms, 2), "tables": rows}
    (OUT / "vllm_args.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0 if worst < GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
