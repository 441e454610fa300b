"""The bed's cache of the imports ansible-playbook finds in module_utils files (sim/controller/depcache.py).

A payload is the same with and without the cache (every file, byte for byte); a second build parses only the module's
own file; a corrupt entry is parsed again; .venv's Python turns it on exactly when GPUFLEET_ANSIBALLZ_CACHE is set
(the .pth file hack/setup.sh writes); a module_common it does not know is left alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
MODULES = ["gpufleet.vllm.fleet_apply", "gpufleet.vllm.gpu_facts", "ansible.builtin.copy"]

# Builds each module's payload as ansible-playbook does (modify_module, no per-run cache) and prints, per module, the
# payload's files with their SHA-256, and the cache's counters.
BUILD = r"""
import base64, hashlib, io, json, os, re, sys, tempfile, zipfile
import ansible.constants as C
import ansible.executor.module_common as mc
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader, module_loader
from ansible.template import Templar

init_plugin_loader([os.environ["ANSIBLE_COLLECTIONS_PATH"]])
templar = Templar(loader=DataLoader())
out = {"patched": getattr(mc._compile_module_ast, "gpufleet_depcache", False), "payloads": {}}
for name in sys.argv[1:]:
    C.DEFAULT_LOCAL_TMP = tempfile.mkdtemp()  # ansible-core's own cache is per run: a new run each
    path = module_loader.find_plugin_with_context(name).plugin_resolved_path
    built = mc.modify_module(module_name=name, module_path=path, module_args={}, templar=templar, task_vars={},
                             module_compression="ZIP_DEFLATED")
    blob = max(re.findall(rb"[A-Za-z0-9+/=]{5000,}", built.b_module_data), key=len)
    z = zipfile.ZipFile(io.BytesIO(base64.b64decode(blob)))
    out["payloads"][name] = {i.filename: hashlib.sha256(z.read(i.filename)).hexdigest() for i in z.infolist()}
dc = sys.modules.get("gpufleet_depcache")
out["stats"] = dict(dc.stats) if dc else None
print(json.dumps(out))
"""


def build(cache: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GPUFLEET_ANSIBALLZ_CACHE"}
    if cache is not None:
        env["GPUFLEET_ANSIBALLZ_CACHE"] = cache
    proc = subprocess.run(
        [str(VENV_PYTHON), "-c", BUILD, *MODULES], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def plain() -> dict:
    if not VENV_PYTHON.exists():
        pytest.skip("no .venv (hack/setup.sh)")
    out = build(None)
    assert out["patched"] is False and out["stats"] is None  # off without the variable
    return out


def test_payloads_are_the_same_and_a_second_build_parses_only_the_modules(plain: dict, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    first = build(cache)
    assert first["patched"] is True
    assert first["payloads"] == plain["payloads"]
    assert first["stats"]["parsed"] > 100  # fleet_apply's payload alone holds 130 files
    second = build(cache)
    assert second["payloads"] == plain["payloads"]
    # each module's own file is parsed (its metadata); every module_utils file's imports come from the cache
    assert second["stats"]["parsed"] == len(MODULES)
    assert second["stats"]["cached"] == first["stats"]["parsed"] - len(MODULES) + first["stats"]["cached"]


def test_corrupt_entries_are_parsed_again(plain: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = build(str(cache))
    entries = [p for p in cache.rglob("*") if p.is_file()]
    assert entries
    for p in entries:
        p.write_text('{"submodules": [[')
    again = build(str(cache))
    assert again["payloads"] == plain["payloads"]
    assert again["stats"] == first["stats"]  # every file parsed again (and its entry written again)


def test_a_module_common_it_does_not_know_is_left_alone() -> None:
    spec = importlib.util.spec_from_file_location("depcache_under_test", ROOT / "sim" / "controller" / "depcache.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    env = os.environ.pop("GPUFLEET_ANSIBALLZ_CACHE", None)
    try:
        spec.loader.exec_module(mod)
    finally:
        if env is not None:
            os.environ["GPUFLEET_ANSIBALLZ_CACHE"] = env
    other = types.SimpleNamespace(_compile_module_ast=lambda name, source: None)
    assert mod.patch(other, "/nonexistent/never-created") is False
    assert not Path("/nonexistent/never-created").exists()
