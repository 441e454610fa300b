# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The test bed's compile cache for AnsiballZ zip imports (sim/hosts/zipcache.py): CPU of one module run with and without.

Run: ``python bench/zipcache.py [--repeat 10]`` (after hack/setup.sh: the cache is loaded through .venv's .pth).
Ansible is asked once per module to keep the AnsiballZ file it runs on the target (``ANSIBLE_KEEP_REMOTE_FILES``,
local connection); each file is then run --repeat times without and with ``GPUFLEET_ZIPIMPORT_CACHE``, interleaved,
by .venv's Python (the simulated hosts' interpreter). The CPU seconds (user + system) of each run come from
``getrusage(RUSAGE_CHILDREN)``. Prints the median per module and the ratio, and writes bench/out/zipcache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
MODULES = {
    "ansible.builtin.stat": "path=/",
    "gpufleet.vllm.vllm_deployment_info": "",
    "gpufleet.vllm.fleet_apply": "",
}


def payload(module: str, args: str, tmp: Path) -> Path:
    """The AnsiballZ file Ansible runs on the target for module."""
    env = {
        **os.environ,
        "ANSIBLE_KEEP_REMOTE_FILES": "1",
        "ANSIBLE_PIPELINING": "0",
        "ANSIBLE_REMOTE_TMP": str(tmp / "remote"),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".build" / "collections"),
        "ANSIBLE_LOCALHOST_WARNING": "false",
    }
    cmd = [str(ROOT / ".venv" / "bin" / "ansible"), "localhost", "-m", module, "-a", args]
    cmd += ["-e", f"ansible_python_interpreter={PYTHON}"]
    subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    name = f"AnsiballZ_{module.rsplit('.', 1)[-1]}.py"
    found = sorted((tmp / "remote").rglob(name))
    if not found:
        raise SystemExit(f"ansible kept no {name} (is .venv set up? hack/setup.sh)")
    return found[-1]


def cpu_of(path: Path, env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([str(PYTHON), str(path)], env=env, capture_output=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    opts = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpufleet-bench-zipcache-") as tmpdir:
        tmp = Path(tmpdir)
        plain = {k: v for k, v in os.environ.items() if k != "GPUFLEET_ZIPIMPORT_CACHE"}
        cached = {**plain, "GPUFLEET_ZIPIMPORT_CACHE": str(tmp / "cache")}
        for module, args in MODULES.items():
            path = payload(module, args, tmp)
            cpu_of(path, cached)  # fills the cache (a host's first run of this module version)
            runs: dict[str, list[float]] = {"without": [], "with": []}
            for _ in range(opts.repeat):
                runs["without"].append(cpu_of(path, plain))
                runs["with"].append(cpu_of(path, cached))
            without, with_ = statistics.median(runs["without"]), statistics.median(runs["with"])
            results[module] = {
                "without_s": round(without, 3),
                "with_s": round(with_, 3),
                "ratio": round(with_ / without, 2),
            }
            print(f"{module:38s} CPU per run: without {without:.3f} s, with {with_:.3f} s, ratio {with_ / without:.2f}")
    out = ROOT / "bench" / "out" / "zipcache.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"repeat": opts.repeat, "modules": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
