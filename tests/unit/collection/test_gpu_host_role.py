"""Role gpu_host (issue #20): its pinned lock covers requirements-host.txt inside the supported ranges, the imports the
interpreter check tries match those requirements, defaults and argument specs are in step, and the script that
compares a venv with the pins reports exactly the unmet ones."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
ROLE = ROOT / "roles" / "gpu_host"
# distribution -> the module the interpreter check imports (what the modules import on a GPU host)
IMPORT_OF = {
    "docker": "docker",
    "huggingface-hub": "huggingface_hub",
    "nvidia-ml-py": "pynvml",
    "requests": "requests",
    "pyyaml": "yaml",
    "prometheus-client": "prometheus_client",
    "packaging": "packaging",
    "boto3": "boto3",
}


def host_requirements() -> list[Requirement]:
    lines = (ROOT / "requirements-host.txt").read_text().splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROLE / "files" / "requirements-host.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"not NAME==VERSION: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def role_vars() -> dict:
    return yaml.safe_load((ROLE / "vars" / "main.yml").read_text())


def test_lock_pins_every_host_requirement_inside_its_range() -> None:
    pins = lock()
    for req in host_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} of requirements-host.txt is not pinned in the gpu_host lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"


def test_interpreter_check_imports_every_host_requirement() -> None:
    names = {canonicalize_name(r.name) for r in host_requirements()}
    assert names == set(IMPORT_OF), "requirements-host.txt changed: update IMPORT_OF and gpu_host_python_imports"
    assert sorted(role_vars()["gpu_host_python_imports"]) == sorted(IMPORT_OF.values())


def test_defaults_and_argument_specs_in_step() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    assert set(defaults) == set(specs["main"]["options"])
    for key, opt in specs["main"]["options"].items():
        if "default" in opt:
            assert opt["default"] == defaults[key], key
    assert specs["interpreter"]["options"] == {}


def test_unmet_pins_script_reports_exactly_the_unmet_pins() -> None:
    script = role_vars()["gpu_host_unmet_pins_script"]
    have = f"PyYAML=={metadata.version('PyYAML')}"  # the name's case as written in a lock
    older = "packaging==0.1"
    missing = "gpufleet-no-such-dist==1.0"
    out = subprocess.run([sys.executable, "-c", script, have, older, missing], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [older, missing]
