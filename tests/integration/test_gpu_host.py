"""Role gpu_host / playbooks/prepare.yml on a bare simulated host (issue #20).

gpu-d (`sim/hosts/hosts.sh bare gpu-d`, started here only, from nothing each run: `bare-reset` first) has no Python
venv, no /etc/docker/daemon.json and no CDI spec; dockerd runs as the engine package leaves it. The Python
requirements come from a wheelhouse (the air-gapped path: `--no-index --find-links`), downloaded once into
.build/wheelhouse/gpu_host from this machine's pip index/cache; the engine packages are installed on the machine (the
package step is a no-op), and the NVIDIA toolkit is the bed's stand-in nvidia-ctk on the host's PATH.

One scenario, in order: a converge on the unprepared host fails with "run playbooks/prepare.yml" (no import error);
prepare in check mode touches nothing; prepare makes it ready (daemon.json merged, not clobbered); a second prepare
changes nothing; a converge of one small deployment succeeds; with podman, the CDI spec is generated and regenerated
when the driver version changes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.hosts import HOSTS_SH, SimHosts, recap

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

ROOT = Path(__file__).resolve().parents[2]
HOST = "gpu-d"
HD = ROOT / ".build" / "hosts" / HOST
FS = HD / "fs"
LOCK = ROOT / "roles" / "gpu_host" / "files" / "requirements-host.lock"
WHEELHOUSE = ROOT / ".build" / "wheelhouse" / "gpu_host"
BASE_IMAGE = "gpufleet/bed-base:bookworm"
MODELS = ROOT / ".build" / "fleet"


def pins() -> list[str]:
    lines = [ln.strip() for ln in LOCK.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def wheelhouse() -> Path:
    """The lock's wheels in one directory (kept between runs; downloaded again only when the lock changed)."""
    stamp = WHEELHOUSE / ".lock"
    if stamp.exists() and stamp.read_text() == LOCK.read_text():
        return WHEELHOUSE
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(WHEELHOUSE), *pins()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.skip(f"the lock's wheels cannot be downloaded here (no index or cache): {proc.stderr[-500:]}")
    stamp.write_text(LOCK.read_text())
    return WHEELHOUSE


class Bare:
    def __init__(self, sim: SimHosts, workdir: Path) -> None:
        self.sim = sim
        self.workdir = workdir
        self.inventory = workdir / "inventory"
        self.artifacts = workdir / "artifacts"
        self.env = {**sim.env, "ANSIBLE_PIPELINING": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_SSH_TIMEOUT": "5"}
        self.docker_env = {**os.environ, "DOCKER_HOST": f"unix://{FS / 'run' / 'docker.sock'}"}

    def write_inventory(self, deployments: list[dict[str, Any]], **host_vars: Any) -> None:
        inv = yaml.safe_load((HD / "inventory.yml").read_text())
        inv["all"]["children"]["gpu_hosts"]["hosts"][HOST].update(host_vars)
        (self.inventory / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
        (self.inventory / "hosts.yml").write_text(yaml.safe_dump(inv))
        values = {
            # air-gapped: the wheelhouse only (pip looks at no index)
            "gpufleet_pip_find_links": str(wheelhouse()),
            "gpu_host_pip_no_index": True,
            "gpu_host_check_image": BASE_IMAGE,
            "gpufleet_allowed_model_dirs": [str(MODELS)],
            "gpufleet_artifacts_dir": str(self.artifacts),
            "gpufleet_wait_timeout": 120,
            "gpufleet_deployments": deployments,
        }
        (self.inventory / "group_vars" / "all" / "fleet.yml").write_text(yaml.safe_dump(values))

    def play(self, playbook: str, *args: str, timeout: int = 400) -> subprocess.CompletedProcess[str]:
        cmd = ["ansible-playbook", "-i", str(self.inventory), str(ROOT / "playbooks" / playbook), *args]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        proc.stdout = proc.stdout + proc.stderr
        return proc

    def docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], env=self.docker_env, capture_output=True, text=True, check=False)


def chat() -> dict[str, Any]:
    return {
        "name": "prep-chat",
        "model": str(MODELS / "models" / "tiny-chat"),
        "vllm_version": "0.10.2",
        "port": 8300,
        "served_model_name": ["tiny-chat"],
        "engine_options": {"max_model_len": 2048},
    }


@pytest.fixture(scope="module")
def bare(sim_hosts: SimHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bare]:
    subprocess.run([str(ROOT / "sim" / "steps.d" / "70-fleet.sh"), "up"], check=True, capture_output=True)
    for step in (["bare-reset", HOST], ["bare", HOST]):
        proc = subprocess.run([str(HOSTS_SH), *step], capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, f"hosts.sh {' '.join(step)}:\n{proc.stdout}\n{proc.stderr}"
    b = Bare(sim_hosts, tmp_path_factory.mktemp("gpu_host"))
    # A key an operator set before: the merge must keep it.
    (FS / "etc" / "docker").mkdir(parents=True, exist_ok=True)
    (FS / "etc" / "docker" / "daemon.json").write_text('{"log-level": "warn"}\n')
    b.write_inventory([])
    yield b
    b.write_inventory([])
    b.play("stop.yml", "-e", "all=true", "-e", "state=absent")
    subprocess.run([str(HOSTS_SH), "bare-down", HOST], capture_output=True, check=False)


def test_converge_on_an_unprepared_host_says_run_prepare(bare: Bare) -> None:
    assert not (FS / "opt" / "gpufleet" / "venv").exists()
    bare.write_inventory([chat()])
    proc = bare.play("converge.yml")
    assert proc.returncode != 0
    assert "gpu-d is not prepared for gpufleet" in proc.stdout, proc.stdout[-3000:]
    assert "/opt/gpufleet/venv/bin/python does not exist" in proc.stdout
    assert "playbooks/prepare.yml" in proc.stdout
    assert "Traceback" not in proc.stdout and "ModuleNotFoundError" not in proc.stdout
    assert "List the managed deployments and the GPUs" not in proc.stdout  # stopped in the preflight


def test_check_mode_shows_the_changes_and_touches_nothing(bare: Bare) -> None:
    bare.write_inventory([])
    proc = bare.play("prepare.yml", "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap(proc.stdout)[HOST]["changed"] > 0
    assert '"nvidia"' in proc.stdout  # the daemon.json diff
    assert "the checks (GPUs, docker, a GPU container) run after a real run" in proc.stdout
    assert not (FS / "opt" / "gpufleet" / "venv").exists()
    assert json.loads((FS / "etc" / "docker" / "daemon.json").read_text()) == {"log-level": "warn"}


def test_prepare_makes_the_host_ready(bare: Bare) -> None:
    proc = bare.play("prepare.yml", "--diff")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert re.search(
        r"gpu-d is ready for gpufleet: Python /opt/gpufleet/venv with the host requirements; 2 GPU\(s\), "
        r"driver 550\.54\.15 \(nvml\); docker \S+ answers; a container with every GPU ran \(--gpus all\)",
        proc.stdout,
    ), proc.stdout[-3000:]
    daemon = json.loads((FS / "etc" / "docker" / "daemon.json").read_text())
    assert daemon == {"log-level": "warn", "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}
    assert "nvidia" in json.loads(bare.docker("info", "--format", "{{json .Runtimes}}").stdout)  # restarted
    installed = (FS / "opt" / "gpufleet" / "venv" / "gpufleet-requirements.txt").read_text().split()
    assert installed == pins()


def test_second_prepare_changes_nothing(bare: Bare) -> None:
    proc = bare.play("prepare.yml")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap(proc.stdout)[HOST]["changed"] == 0, proc.stdout[-4000:]
    assert "Install the pinned requirements into the venv" in proc.stdout
    assert "gpu-d is ready for gpufleet" in proc.stdout


def test_converge_one_deployment_on_the_prepared_host(bare: Bare) -> None:
    bare.write_inventory([chat()])
    proc = bare.play("converge.yml")
    assert proc.returncode == 0, proc.stdout[-5000:]
    summary = json.loads((bare.artifacts / "converge-summary.json").read_text())
    row = summary["deployments"]["prep-chat"]["replicas"][0]
    assert (row["host"], row["status"]) == (HOST, "changed"), row
    with urllib.request.urlopen(row["endpoint"] + "/v1/models", timeout=5) as resp:
        assert resp.status == 200


def test_podman_cdi_spec_follows_the_driver_version(bare: Bare) -> None:
    bare.write_inventory([], gpufleet_runtime="podman", gpu_host_check_image=f"docker.io/{BASE_IMAGE}")
    proc = bare.play("prepare.yml")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "podman 4.3.1 answers; a container with every GPU ran (--device nvidia.com/gpu=all)" in proc.stdout
    spec = FS / "etc" / "cdi" / "nvidia.yaml"
    assert "# driver 550.54.15" in spec.read_text()
    assert (FS / "var" / "lib" / "gpufleet" / "nvidia-cdi.driver").read_text().strip() == "550.54.15"
    # A driver upgrade (the host's fake NVML now reports another version): the next run regenerates the spec.
    gpus = json.loads((HD / "fake-gpus.json").read_text())
    gpus["driver_version"] = "560.35.03"
    (HD / "fake-gpus.json").write_text(json.dumps(gpus))
    proc = bare.play("prepare.yml")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert re.search(
        r"TASK \[gpufleet\.vllm\.gpu_host : Generate the CDI spec[^\n]*\]\s*\*+\s*changed: \[gpu-d\]", proc.stdout
    )
    assert "# driver 560.35.03" in spec.read_text()
    assert recap(proc.stdout)[HOST]["changed"] == 2  # the spec and its recorded driver version
