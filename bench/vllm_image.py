# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_image no-op speed (goal < 0.3 s module time) next to community.docker.docker_image doing the same no-op.

Two no-ops, each measured for both modules in the same run, alternating:
  base:     the image is present          vllm_image {version, repository}  vs docker_image {name, source: pull}
  derived:  the derived tag is present    vllm_image {+ extra_pip_packages, plugins, pip_find_links}
                                          vs docker_image {name: <derived tag>, source: build, build.path}
"Module time" is the module process alone: each module is run once through ansible with ANSIBLE_KEEP_REMOTE_FILES
so its AnsiballZ payload stays, then that payload is executed --repeat times (python3 AnsiballZ_x.py; arguments are
embedded) and the median wall time taken. The median of a full `ansible localhost -m ...` call is printed too.

Needs the test bed's registry (sim/registry/registry.py up, done here; idempotent) and community.docker: the
`ansible` package is downloaded from PyPI (pip download, once) into bench/out/ and its bundled
ansible_collections/community/docker extracted there. Writes bench/out/vllm_image.json.

Run: ``python bench/vllm_image.py [--repeat 15]``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
COLL = OUT / "collections"
GOAL_S = 0.3
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable

sys.path.insert(0, str(ROOT / "tests"))


def community_docker() -> Path:
    dest = COLL / "ansible_collections" / "community" / "docker"
    if (dest / "plugins" / "modules" / "docker_image.py").exists():
        return dest
    dl = OUT / "dl"
    wheels = sorted(glob.glob(str(dl / "ansible-*.whl")))
    if not wheels:
        subprocess.run([PY, "-m", "pip", "download", "ansible", "--no-deps", "-q", "-d", str(dl)], check=True)
        wheels = sorted(glob.glob(str(dl / "ansible-*.whl")))
    prefix = "ansible_collections/community/docker/"
    with zipfile.ZipFile(wheels[-1]) as z:
        for n in z.namelist():
            if n.startswith(prefix) and not n.endswith("/"):
                z.extract(n, COLL)
    return dest


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["ANSIBLE_COLLECTIONS_PATH"] = f"{ROOT / '.build' / 'collections'}:{COLL}"
    e["ANSIBLE_COLLECTIONS_SCAN_SYS_PATH"] = "false"
    e["ANSIBLE_PYTHON_INTERPRETER"] = PY
    e["ANSIBLE_NOCOLOR"] = "1"
    e["ANSIBLE_LOCALHOST_WARNING"] = "false"
    e["PATH"] = f"{Path(PY).parent}:{e.get('PATH', '')}"
    return e


def ansible(module: str, args: dict, extra_env: dict | None = None) -> tuple[float, dict]:
    e = env()
    e.update(extra_env or {})
    t0 = time.perf_counter()
    r = subprocess.run(
        ["ansible", "localhost", "-o", "-m", module, "-a", json.dumps(args)],
        capture_output=True,
        text=True,
        env=e,
        check=False,
    )
    dt = time.perf_counter() - t0
    line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    try:
        res = json.loads(line.split("=>", 1)[1])
    except (IndexError, ValueError):
        raise SystemExit(f"{module} failed:\n{r.stdout}\n{r.stderr}") from None
    if r.returncode != 0 or res.get("failed"):
        raise SystemExit(f"{module} failed: {res.get('msg')}")
    return dt, res


def payload(module: str, args: dict) -> Path:
    """Run once keeping the AnsiballZ file; return its path (a copy under bench/out/payloads/)."""
    tmp = Path(tempfile.mkdtemp(prefix="ansiballz-", dir=OUT))
    try:
        _dt, res = ansible(module, args, {"ANSIBLE_KEEP_REMOTE_FILES": "1", "ANSIBLE_REMOTE_TMP": str(tmp)})
        if res.get("changed"):
            raise SystemExit(f"{module} {args} is not a no-op (changed): prepare it first")
        (found,) = glob.glob(str(tmp / "**" / "AnsiballZ_*.py"), recursive=True)
        dest = OUT / "payloads" / f"{module.rsplit('.', 1)[-1]}-{abs(hash(json.dumps(args))) % 10**8}.py"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found, dest)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_payload(p: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of one run of the module process (cpu = user + sys, less sensitive to a busy machine)."""
    c0 = _children_cpu()
    t0 = time.perf_counter()
    r = subprocess.run([PY, str(p)], capture_output=True, text=True, env=env(), check=False)
    dt = time.perf_counter() - t0
    cpu = _children_cpu() - c0
    res = json.loads(r.stdout)
    if res.get("failed") or res.get("changed"):
        raise SystemExit(f"{p.name}: not a no-op: {res.get('msg') or res.get('actions')}")
    return dt, cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    community_docker()
    subprocess.run([PY, str(ROOT / "sim" / "registry" / "registry.py"), "up"], check=True, capture_output=True)
    from fixtures.registry import make_wheel  # the tests' wheel maker: no network needed

    repo = f"127.0.0.1:{os.environ.get('GPUFLEET_REGISTRY_PORT', '5000')}/vllm/vllm-openai"
    wh = OUT / "bench-wheels"
    make_wheel(wh / "index", "gpufleet-benchpkg", "1.0", {"gpufleet_benchpkg/__init__.py": "V = 1\n"})
    plugin = make_wheel(wh / "plugins", "gpufleet-benchplugin", "0.1", {"gpufleet_benchplugin/__init__.py": "P = 1\n"})
    base_args = {"version": "0.10.2", "repository": repo}
    derived_args = {
        **base_args,
        "extra_pip_packages": ["gpufleet-benchpkg==1.0"],
        "plugins": [str(plugin)],
        "pip_find_links": [str(wh / "index")],
        "pip_no_index": True,
        "derived_repository": "gpufleet-bench/vllm-openai",
    }
    # Prepare: pull the base and build the derived image (no-ops from then on).
    _dt, derived = ansible("gpufleet.vllm.vllm_image", derived_args)
    ctx = OUT / "bench-ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(f"FROM {repo}:v0.10.2\n")
    d_name, d_tag = derived["image"].rsplit(":", 1)
    cases = {
        "base": (
            ("gpufleet.vllm.vllm_image", base_args),
            ("community.docker.docker_image", {"name": repo, "tag": "v0.10.2", "source": "pull"}),
        ),
        "derived": (
            ("gpufleet.vllm.vllm_image", derived_args),
            (
                "community.docker.docker_image",
                {"name": d_name, "tag": d_tag, "source": "build", "build": {"path": str(ctx)}},
            ),
        ),
    }
    report: dict = {"goal_module_s": GOAL_S, "repeat": a.repeat, "loadavg": os.getloadavg()[0], "cases": {}}
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus (wall times grow with it; cpu less so)")
    print(f"{'case':8} {'module':32} {'module s':>9} {'min s':>7} {'cpu s':>7} {'ansible s':>10}")
    for case, mods in cases.items():
        payloads = [payload(m, args) for m, args in mods]
        times: list[list[float]] = [[], []]
        cpus: list[list[float]] = [[], []]
        for _rep in range(a.repeat):  # alternate so drift hits both alike
            for i, p in enumerate(payloads):
                wall, cpu = run_payload(p)
                times[i].append(wall)
                cpus[i].append(cpu)
        full = [[ansible(m, args)[0] for _rep in range(max(3, a.repeat // 3))] for m, args in mods]
        med = [statistics.median(t) for t in times]
        cmed = [statistics.median(t) for t in cpus]
        mins = [min(t) for t in times]
        fmed = [statistics.median(t) for t in full]
        report["cases"][case] = {
            mods[i][0]: {
                "module_s": round(med[i], 4),
                "module_cpu_s": round(cmed[i], 4),
                "ansible_s": round(fmed[i], 4),
            }
            for i in range(2)
        }
        report["cases"][case]["ratio_vllm_image_over_docker_image"] = round(med[0] / med[1], 3)
        for i in range(2):
            print(f"{case:8} {mods[i][0]:32} {med[i]:9.3f} {mins[i]:7.3f} {cmed[i]:7.3f} {fmed[i]:10.3f}")
        print(f"{case:8} ratio vllm_image / docker_image module time: {med[0] / med[1]:.2f}; goal {GOAL_S}s (median): "
              f"{'met' if med[0] < GOAL_S else 'NOT met'} ({med[0] / GOAL_S:.2f} of it; min {mins[0]:.3f}s)")  # fmt: skip
    # Floor: the cheapest module there is (AnsiballZ unpacking + ansible's module_utils import), same measure.
    ping = payload("ansible.builtin.ping", {"data": "pong"})
    floor = [run_payload(ping) for _rep in range(a.repeat)]
    fl_wall, fl_cpu = statistics.median(f[0] for f in floor), statistics.median(f[1] for f in floor)
    report["floor_ansible_builtin_ping"] = {"module_s": round(fl_wall, 4), "module_cpu_s": round(fl_cpu, 4)}
    print(f"{'floor':8} {'ansible.builtin.ping':32} {fl_wall:9.3f} {min(f[0] for f in floor):7.3f} {fl_cpu:7.3f}")
    # Derived images of earlier runs (older bases) are only clutter.
    old = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "gpufleet-bench/vllm-openai"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    for ref in old:
        if ref != derived["image"]:
            subprocess.run(["docker", "rmi", ref], capture_output=True, check=False)
    (OUT / "vllm_image.json").write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(OUT / "payloads", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
