"""Packaging: the execution environment (EE) gets the controller's requirements only, the GPU hosts' requirements
live in their own file, and the test venv installs both."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
# What only the GPU hosts need: the modules that run there and the node agent import these.
HOST_ONLY = {"docker", "huggingface-hub", "nvidia-ml-py", "requests"}
# Needed on both sides: the node agent's exporter (hosts) and fleet_report's /metrics parser (controller).
BOTH = {"prometheus-client"}


def names(path: Path) -> set[str]:
    """Normalized project names of a pip requirements file (comments and -r lines skipped)."""
    out = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.add(re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", line).group(0)).lower())
    return out


def test_ee_definition_names_controller_files() -> None:
    ee = yaml.safe_load((ROOT / "meta" / "execution-environment.yml").read_text())
    assert ee["version"] == 3
    assert ee["dependencies"] == {"python": "requirements.txt", "system": "bindep.txt"}
    for f in ee["dependencies"].values():
        assert (ROOT / f).is_file(), f


def test_controller_and_host_requirements_are_split() -> None:
    controller, host = names(ROOT / "requirements.txt"), names(ROOT / "requirements-host.txt")
    assert HOST_ONLY <= host
    assert not controller & HOST_ONLY
    assert BOTH <= controller and BOTH <= host
    test_reqs = (ROOT / "requirements-test.txt").read_text().splitlines()
    assert "-r requirements.txt" in test_reqs and "-r requirements-host.txt" in test_reqs


def test_ansible_builder_introspect_sees_controller_deps_only(tmp_path: Path) -> None:
    builder = shutil.which("ansible-builder", path=str(Path(sys.executable).parent))
    if builder is None:
        pytest.skip("ansible-builder is not installed (requirements-test.txt)")
    link = tmp_path / "ansible_collections" / "gpufleet" / "vllm"
    link.parent.mkdir(parents=True)
    link.symlink_to(ROOT)
    proc = subprocess.run([builder, "introspect", str(tmp_path)], capture_output=True, text=True, check=True)
    data = yaml.safe_load(proc.stdout.split("---", 1)[1])
    python = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", r).group(0)).lower() for r in data["python"]}
    assert not python & HOST_ONLY, data
    assert python <= names(ROOT / "requirements.txt")
    assert any(s.startswith("openssh-client") for s in data["system"]), data
