# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Generate the vLLM flag table of one (or more) vLLM releases from the real vLLM argument parser.

    .venv/bin/python tools/vllm_flags/generate.py 0.10.2 [0.33.0 ...]

For each version it builds a throwaway venv under .cache/vllm-flags/<version>/ (git-ignored):

1. ``pip install --no-deps vllm==X`` (the ~440 MB wheel), then deletes the compiled ``.so`` files of vLLM (they are
   never loaded to build the parser; this frees ~1.3 GB).
2. ``torch==2.13.0``: the CPU wheel that lies on this machine's disk (pip finds it through /etc/xdg/pip); a dry run
   checks first that pip would not download a (multi-GB) CUDA build, and the tool stops if it would.
3. The few pure-Python packages the parser's import chain needs, found by trying: import, read the first missing
   module, install its distribution pinned to the LOWEST version vLLM X allows (so the set matches the release's
   era: an old vLLM with today's transformers/fastapi does not import), repeat.
4. Runs tools/vllm_flags/_dump.py in that venv (CPU platform selected in code before vLLM is imported) and writes
   plugins/module_utils/_vllm/flag_tables/v<X_Y_Z>.py plus the package's __init__.py listing every table.

Options: --keep-venv (the opt-in real-parser test reuses it), --venv-only (build/refresh the venv, write nothing),
--cache DIR (default .cache/vllm-flags). No network is used after the installs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DUMP = Path(__file__).resolve().parent / "_dump.py"
TABLES = ROOT / "plugins" / "module_utils" / "_vllm" / "flag_tables"
DEFAULT_CACHE = ROOT / ".cache" / "vllm-flags"
TORCH = "torch==2.13.0"

# Import name -> distribution name, where they differ.
MODULE_TO_DIST = {
    "yaml": "pyyaml",
    "zmq": "pyzmq",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "google": "protobuf",
    "cpuinfo": "py-cpuinfo",
    "pythonjsonlogger": "python-json-logger",
    "mistral_common": "mistral-common",
    "partial_json_parser": "partial-json-parser",
    "openai_harmony": "openai-harmony",
    "prometheus_fastapi_instrumentator": "prometheus-fastapi-instrumentator",
    "lmformatenforcer": "lm-format-enforcer",
    "outlines_core": "outlines-core",
    "compressed_tensors": "compressed-tensors",
    "huggingface_hub": "huggingface-hub",
    "multipart": "python-multipart",
    "dotenv": "python-dotenv",
    "sklearn": "scikit-learn",
    "model_hosting_container_standards": "model-hosting-container-standards",
}
# Never installed: the GPU stack (torch comes from the local CPU wheel only).
NEVER = {"torch", "torchvision", "torchaudio", "xformers", "flashinfer-python", "triton", "nvidia-ml-py"}


def log(msg: str) -> None:
    print(f"[vllm-flags] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, text=True, check=False, **kw)


def venv_dir(version: str, cache: Path) -> Path:
    return cache / version / "venv"


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"no site-packages in {venv}")
    return found[0]


def vllm_requirements(venv: Path, version: str) -> dict[str, Requirement]:
    """vLLM's own Requires-Dist (markers evaluated for this interpreter, extras left out)."""
    meta = site_packages(venv) / f"vllm-{version}.dist-info" / "METADATA"
    env = default_environment()
    env["extra"] = ""
    reqs: dict[str, Requirement] = {}
    for line in meta.read_text(encoding="utf-8").splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        reqs[canonicalize_name(req.name)] = req
    return reqs


def lowest_pin(req: Requirement | None, dist: str) -> str:
    """The lowest version the requirement allows, as `dist==X` (or the bare name when there is no lower bound)."""
    if req is None:
        return dist
    if req.extras:  # e.g. fastapi[standard]: the extras bring modules imported at run time (python-multipart)
        dist = f"{dist}[{','.join(sorted(req.extras))}]"
    for spec in req.specifier:
        if spec.operator in ("==", "==="):
            return f"{dist}=={spec.version}"
    for spec in req.specifier:
        if spec.operator in (">=", "~=") and "*" not in spec.version:
            return f"{dist}=={spec.version}"
    return f"{dist}{req.specifier}"


def pip(venv: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args]
    proc = run(cmd, capture_output=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"pip failed: {' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def install_torch(venv: Path) -> None:
    """The CPU torch wheel from the local disk; refuse anything that would be downloaded."""
    report = venv.parent / "torch-report.json"
    pip(venv, "install", "--dry-run", "--ignore-installed", "--no-deps", "--report", str(report), TORCH)
    items = json.loads(report.read_text())["install"]
    url = items[0]["download_info"]["url"]
    ver = items[0]["metadata"]["version"]
    if not url.startswith("file://") or "+cpu" not in ver:
        raise SystemExit(
            f"pip would fetch {ver} from {url}: not the local CPU wheel of {TORCH}. Put the CPU wheel in pip's "
            "find-links (see /etc/xdg/pip) or pass --torch-wheel; a CUDA torch is never installed here."
        )
    pip(venv, "install", TORCH)
    log(f"torch {ver} from {url}")


def write_constraints(venv: Path, reqs: dict[str, Requirement]) -> Path:
    """torch==2.13.0 and vLLM's bounds of the seed distributions (the ones installed directly, which a later
    install must not move). vLLM's bounds of transitive dependencies are left out: one that no index can satisfy
    (0.33.0 asks for a certifi newer than PyPI's) would otherwise make every install impossible."""
    lines = [TORCH]
    for name, req in sorted(reqs.items()):
        if name in NEVER or name not in SEED:
            continue
        if str(req.specifier):
            lines.append(f"{name}{req.specifier}")
    path = venv.parent / "constraints.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def probe(venv: Path) -> tuple[str | None, str]:
    proc = run([str(venv / "bin" / "python"), str(DUMP), "probe"], capture_output=True, cwd=venv.parent)
    m = re.search(r"^MISSING (\S+)", proc.stdout, re.M)
    if m:
        return m.group(1), proc.stdout + proc.stderr
    if proc.returncode != 0 or "OK" not in proc.stdout:
        raise SystemExit(f"importing the vLLM parser failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return None, ""


# What the parser's import chain needed in 0.8.5 - 0.33.0: installed first in ONE pip call (those that are
# requirements of the version at hand, pinned low), so that the try-import loop has little left to find
# (each try imports torch and vLLM: ~10 s).
SEED = (
    "aiohttp blake3 cachetools cbor2 cloudpickle diskcache fastapi llguidance msgspec numpy openai "
    "openai-harmony orjson packaging partial-json-parser pillow prometheus-client prometheus-fastapi-instrumentator "
    "psutil py-cpuinfo pybase64 pydantic pyyaml pyzmq regex setproctitle transformers watchfiles xgrammar"
).split()


def install_seed(venv: Path, reqs: dict[str, Requirement], constraints: Path) -> list[str]:
    specs = [lowest_pin(reqs[d], d) for d in SEED if d in reqs]
    log(f"seed: pip install {len(specs)} distributions the parser is known to import")
    proc = pip(venv, "install", "--only-binary", ":all:", "-c", str(constraints), *specs, check=False)
    if proc.returncode != 0:
        # e.g. 0.33.0 requires a certifi newer than any on the index: keep only the torch constraint
        log("  seed install failed under all of vLLM's bounds; retrying with the torch constraint alone")
        only_torch = constraints.with_name("constraints-torch.txt")
        only_torch.write_text(TORCH + "\n")
        proc = pip(venv, "install", "--only-binary", ":all:", "-c", str(only_torch), *specs, check=False)
    if proc.returncode != 0:
        log("  seed install failed; the try-import loop installs them one by one")
        return []
    return [canonicalize_name(d) for d in SEED if d in reqs]


def install_import_chain(venv: Path, version: str) -> list[str]:
    reqs = vllm_requirements(venv, version)
    constraints = write_constraints(venv, reqs)
    installed: list[str] = install_seed(venv, reqs, constraints) if not (venv / ".seeded").exists() else []
    (venv / ".seeded").write_text("\n".join(installed) + "\n")
    seeded = set(installed)
    for _attempt in range(80):
        missing, output = probe(venv)
        if missing is None:
            return installed
        top = missing.split(".")[0]
        dist = canonicalize_name(MODULE_TO_DIST.get(top, top))
        if dist in seeded:  # seeded, yet still missing: its pinned version lacks the module; retry unpinned
            seeded.discard(dist)
            installed.remove(dist)
        if dist in NEVER or dist in installed:
            raise SystemExit(f"vLLM {version}: module {missing!r} still missing after installing {dist}:\n{output}")
        attempts = [lowest_pin(reqs.get(dist), dist)]
        if dist in reqs and str(reqs[dist].specifier):
            extras = f"[{','.join(sorted(reqs[dist].extras))}]" if reqs[dist].extras else ""
            attempts.append(f"{dist}{extras}{reqs[dist].specifier}")
        elif dist not in reqs:
            log(f"  {dist} is not a requirement of vLLM {version} itself (a dependency of one): unpinned")
        for spec in attempts:
            log(f"import needs {missing} -> pip install {spec}")
            proc = pip(venv, "install", "--only-binary", ":all:", "-c", str(constraints), spec, check=False)
            if proc.returncode == 0:
                break
            log(f"  failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        else:
            # The release may need a version this index does not have (yet): drop vLLM's bound for it, warn.
            if dist in reqs:
                log(f"  WARNING: no installable {dist} in {reqs[dist].specifier}; using the newest {dist} available")
                reqs.pop(dist)
                constraints = write_constraints(venv, reqs)
            proc = pip(venv, "install", "--only-binary", ":all:", "-c", str(constraints), dist, check=False)
            if proc.returncode != 0:
                log(f"  retrying {dist} with --no-deps")
                pip(venv, "install", "--only-binary", ":all:", "--no-deps", dist)
        installed.append(dist)
    raise SystemExit("too many missing modules; giving up")


def build_venv(version: str, cache: Path) -> Path:
    venv = venv_dir(version, cache)
    if (venv / ".ready").exists():
        log(f"reusing {venv}")
        return venv
    t0 = time.monotonic()
    if not (venv / ".base-ready").exists():  # else: resume a run that stopped in the import chain
        if venv.exists():
            shutil.rmtree(venv)
        venv.parent.mkdir(parents=True, exist_ok=True)
        base = getattr(sys, "_base_executable", sys.executable)
        if run([base, "-m", "venv", str(venv)]).returncode != 0:
            raise SystemExit("python -m venv failed")
        pip(venv, "install", "--no-deps", f"vllm=={version}")
        sos = list((site_packages(venv) / "vllm").rglob("*.so"))
        freed = sum(p.stat().st_size for p in sos)
        for p in sos:
            p.unlink()
        log(f"vllm {version} installed, {len(sos)} compiled .so files deleted ({freed / 2**20:.0f} MiB)")
        install_torch(venv)
        (venv / ".base-ready").write_text("vllm + torch\n")
    installed = install_import_chain(venv, version)
    (venv / ".ready").write_text(json.dumps({"installed": installed}))
    log(f"venv ready in {time.monotonic() - t0:.0f} s: {venv} (import chain: {', '.join(installed)})")
    return venv


def module_name(version: str) -> str:
    return "v" + re.sub(r"[^0-9a-zA-Z]+", "_", version)


WIDTH = 118  # ansible-test's pep8 allows 160, ruff here 120: the JSON text must fit too


def render_json(value, indent: int = 0, prefix: int = 0) -> str:
    """Sorted JSON, each object/list on one line when it fits in WIDTH, else one item per line (recursively).

    Stable across runs (diffs between releases stay readable); long strings are cut by the dump.
    ``prefix``: characters already on the line before the value (a key).
    """
    flat = json.dumps(value, sort_keys=True)
    if indent + prefix + len(flat) <= WIDTH or not isinstance(value, (dict, list)) or not value:
        return flat
    pad = " " * (indent + 1)
    if isinstance(value, dict):
        items = []
        for key in sorted(value):
            head = f"{json.dumps(key)}: "
            items.append(pad + head + render_json(value[key], indent + 1, len(head)))
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + render_json(v, indent + 1) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def write_table(version: str, table: dict) -> Path:
    text = render_json(table)
    too_long = [line for line in text.splitlines() if len(line) > WIDTH]
    if too_long:
        raise SystemExit(f"table lines longer than {WIDTH}: {too_long[:3]}")
    if '"""' in text or text.endswith("\\"):
        raise SystemExit('table text contains """ and cannot be embedded in a raw string')
    json.loads(text)
    path = TABLES / f"{module_name(version)}.py"
    path.write_text(
        f"# Generated by tools/vllm_flags/generate.py from the real parser of vLLM {version}: do not edit.\n"
        f"# Regenerate: .venv/bin/python tools/vllm_flags/generate.py {version}\n"
        '"""vLLM ' + version + ' command-line flags (data module, see docs/vllm-flags.md)."""\n\n'
        "from __future__ import annotations\n\n"
        "import json\n\n"
        'TABLE = json.loads(\n    r"""\n' + text + '\n"""\n)\n',
        encoding="utf-8",
    )
    return path


def version_key(v: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[._]", v))


def write_index() -> Path:
    versions = []
    for path in TABLES.glob("v*.py"):
        m = re.search(r"^# Regenerate: .*generate\.py (\S+)$", path.read_text(encoding="utf-8"), re.M)
        if m:
            versions.append(m.group(1))
    versions.sort(key=version_key)
    mods = [module_name(v) for v in versions]
    base = "ansible_collections.gpufleet.vllm.plugins.module_utils._vllm.flag_tables"
    text = (
        "# Generated by tools/vllm_flags/generate.py: do not edit.\n"
        '"""vLLM flag tables, one data module per vLLM release (see docs/vllm-flags.md).\n\n'
        "The modules are imported by name (not found at run time) so that AnsiballZ ships them with a module.\n"
        '"""\n\n'
        "from __future__ import annotations\n\n"
        f"from {base} import (\n" + "".join(f"    {m},\n" for m in mods) + ")\n\n"
        "# Oldest first; the last one is the newest release with a table.\n"
        "MODULES = {\n" + "".join(f'    "{v}": {m},\n' for v, m in zip(versions, mods, strict=True)) + "}\n"
        "VERSIONS = tuple(MODULES)\n"
    )
    path = TABLES / "__init__.py"
    path.write_text(text, encoding="utf-8")
    return path


def generate(version: str, cache: Path, keep: bool) -> dict:
    t0 = time.monotonic()
    venv = build_venv(version, cache)
    out = venv.parent / "table.json"
    t1 = time.monotonic()
    proc = run([str(venv / "bin" / "python"), str(DUMP), "dump", str(out)], capture_output=True, cwd=venv.parent)
    if proc.returncode != 0:
        raise SystemExit(f"dump failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    table = json.loads(out.read_text())
    if table["version"] != version:
        raise SystemExit(f"venv has vLLM {table['version']}, expected {version}")
    table["generated"] = dt.date.today().isoformat()
    path = write_table(version, table)
    log(f"{path.relative_to(ROOT)}: {len(table['actions'])} actions, dump {time.monotonic() - t1:.1f} s")
    if not keep:
        shutil.rmtree(venv.parent)
        log(f"removed {venv.parent}")
    return {"version": version, "seconds": round(time.monotonic() - t0), "actions": len(table["actions"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("versions", nargs="+", help="vLLM release(s), e.g. 0.10.2")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("GPUFLEET_VLLM_FLAGS_CACHE", DEFAULT_CACHE)))
    ap.add_argument("--keep-venv", action="store_true", help="keep the venv (the real-parser test reuses it)")
    ap.add_argument("--venv-only", action="store_true", help="only build the venv (kept), write no table")
    args = ap.parse_args()
    for version in args.versions:
        if not re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", version):
            ap.error(f"{version!r} is not a vLLM release number like 0.10.2")
        if args.venv_only:
            print(venv_dir(version, args.cache))
            build_venv(version, args.cache)
            continue
        print(json.dumps(generate(version, args.cache, args.keep_venv)))
    if not args.venv_only:
        log(f"{write_index().relative_to(ROOT)} lists the tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
