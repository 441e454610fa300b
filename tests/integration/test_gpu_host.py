"""Role gpu_host / playbooks/prepare.yml on a bare simulated host (issue #20).

gpu-d (`sim/hosts/hosts.sh bare gpu-d`, started here only, from nothing each run: `bare-reset` first) has no Python
venv, no /etc/docker/daemon.json and no CDI spec; dockerd runs as the engine package leaves it. The Python
requirements come from a wheelhouse (the air-gapped path: `--no-index --find-links`), downloaded once into
.build/wheelhouse/gpu_host from this machine's pip index/cache; the engine packages are installed on the machine (the
package step is a no-op). The NVIDIA toolkit comes the way it comes on a real host: `gpufleet_install_nvidia_toolkit:
true` with the role's repository variables pointing at the bed's stand-in of NVIDIA's apt repository
(sim/hosts/toolkit/aptrepo.sh: a signed flat repository with a `nvidia-container-toolkit` package of the bed's
nvidia-ctk / nvidia-container-runtime stand-ins), served over HTTP on the hosts' bridge address by this module. gpu-d
has its own /etc/apt, apt state, dpkg database and an overlay on /usr (sim/hosts/README.md "Bare hosts"), so the
package lands in gpu-d only.

One scenario, in order: a converge on the unprepared host fails with "run playbooks/prepare.yml" (no import error);
prepare in check mode touches nothing; prepare makes it ready (daemon.json merged, not clobbered; the toolkit installed
from the repository); a second prepare changes nothing; a converge of one small deployment succeeds; with podman, the CDI spec is generated and regenerated
when the driver version changes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.gateway import bed_wheelhouses
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
APTREPO_SH = ROOT / "sim" / "hosts" / "toolkit" / "aptrepo.sh"
TOOLKIT_VERSION = "1.17.8-1+gpufleet"


def pins() -> list[str]:
    lines = [ln.strip() for ln in LOCK.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def wheelhouse() -> Path:
    """The lock's wheels in one directory: the bed step sim/steps.d/65-wheelhouses.sh fills it whole at set-up (and
    again when the lock changed), for this test and the role's molecule scenario."""
    bed_wheelhouses()
    return WHEELHOUSE


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class AptRepo:
    """The bed's stand-in of NVIDIA's apt repository (aptrepo.sh), served over HTTP where the hosts reach the controller."""

    def __init__(self, address: str) -> None:
        proc = subprocess.run([str(APTREPO_SH)], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"aptrepo.sh:\n{proc.stdout}\n{proc.stderr}"
        self.dir = Path(proc.stdout.strip().splitlines()[-1])
        self.server = ThreadingHTTPServer((address, 0), partial(_QuietHandler, directory=str(self.dir)))
        self.url = f"http://{address}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def role_vars(self) -> dict[str, Any]:
        """The role's variables pointing at it, as a site points them at its mirror (docs/gpu_host.md)."""
        return {
            "gpufleet_install_nvidia_toolkit": True,
            "gpu_host_nvidia_toolkit_repo": {
                "Debian": {
                    "uris": self.url + "/deb/$(ARCH)",
                    "suites": "/",
                    "components": [],
                    "signed_by": self.url + "/gpgkey",
                }
            },
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Bare:
    def __init__(self, sim: SimHosts, workdir: Path, repo: AptRepo) -> None:
        self.sim = sim
        self.workdir = workdir
        self.repo = repo
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
            **self.repo.role_vars(),
        }
        (self.inventory / "group_vars" / "all" / "fleet.yml").write_text(yaml.safe_dump(values))

    def play(self, playbook: str, *args: str, timeout: int = 400) -> subprocess.CompletedProcess[str]:
        cmd = ["ansible-playbook", "-i", str(self.inventory), str(ROOT / "playbooks" / playbook), *args]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        proc.stdout = proc.stdout + proc.stderr
        return proc

    def docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], env=self.docker_env, capture_output=True, text=True, check=False)

    def ssh(self, command: str) -> subprocess.CompletedProcess[str]:
        """A command in a login session on gpu-d (its PATH, its namespaces), as Ansible's sessions run."""
        inv = yaml.safe_load((HD / "inventory.yml").read_text())
        key = inv["all"]["vars"]["ansible_ssh_private_key_file"]
        address = inv["all"]["children"]["gpu_hosts"]["hosts"][HOST]["ansible_host"]
        cmd = ["ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        cmd += ["-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{address}", command]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


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
def bare(sim_hosts: SimHosts, sim_bare_lock: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bare]:
    subprocess.run([str(ROOT / "sim" / "steps.d" / "70-fleet.sh"), "up"], check=True, capture_output=True)
    for step in (["bare-reset", HOST], ["bare", HOST]):
        proc = subprocess.run([str(HOSTS_SH), *step], capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, f"hosts.sh {' '.join(step)}:\n{proc.stdout}\n{proc.stderr}"
    repo = AptRepo(sim_hosts.gateway or "10.213.37.1")
    b = Bare(sim_hosts, tmp_path_factory.mktemp("gpu_host"), repo)
    # A key an operator set before: the merge must keep it.
    (FS / "etc" / "docker").mkdir(parents=True, exist_ok=True)
    (FS / "etc" / "docker" / "daemon.json").write_text('{"log-level": "warn"}\n')
    b.write_inventory([])
    yield b
    b.write_inventory([])
    b.play("stop.yml", "-e", "all=true", "-e", "state=absent")
    subprocess.run([str(HOSTS_SH), "bare-down", HOST], capture_output=True, check=False)
    repo.close()


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
    assert "would install nvidia-container-toolkit from the new repository" in proc.stdout
    assert not (FS / "etc" / "apt" / "sources.list.d" / "nvidia-container-toolkit.sources").exists()
    assert bare.ssh("command -v nvidia-ctk").returncode != 0  # nothing on the host's PATH but what the role installs


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
    # The toolkit: from the bed's repository through the role's repository variables, the key where signed-by says.
    status = bare.ssh("dpkg -s nvidia-container-toolkit")
    assert "Status: install ok installed" in status.stdout, status.stdout + status.stderr
    assert f"Version: {TOOLKIT_VERSION}" in status.stdout
    policy = bare.ssh("apt-cache policy nvidia-container-toolkit").stdout
    assert re.search(
        rf"\*\*\* {re.escape(TOOLKIT_VERSION)} 500\s+500 {re.escape(bare.repo.url)}/deb/amd64\s", policy
    ), policy
    sources = (FS / "etc" / "apt" / "sources.list.d" / "nvidia-container-toolkit.sources").read_text()
    assert f"URIs: {bare.repo.url}/deb/$(ARCH)" in sources, sources
    assert "Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc" in sources, sources
    keyring = FS / "etc" / "apt" / "keyrings" / "nvidia-container-toolkit.asc"
    assert keyring.read_text() == (bare.repo.dir / "gpgkey").read_text()
    assert bare.ssh("command -v nvidia-ctk nvidia-container-runtime").stdout.split() == [
        "/usr/bin/nvidia-ctk",
        "/usr/bin/nvidia-container-runtime",
    ]
    assert "1.17.8-gpufleet-standin" in bare.ssh("nvidia-ctk --version").stdout
    # In gpu-d's /usr layer only, not the machine's.
    assert (HD / "overlay" / "usr" / "upper" / "bin" / "nvidia-ctk").is_file()


def test_second_prepare_changes_nothing(bare: Bare) -> None:
    proc = bare.play("prepare.yml")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap(proc.stdout)[HOST]["changed"] == 0, proc.stdout[-4000:]
    assert "Install the pinned requirements into the venv" in proc.stdout
    assert re.search(
        r"TASK \[gpufleet\.vllm\.gpu_host : Install the NVIDIA Container Toolkit\]\s*\*+\s*ok: \[gpu-d\]", proc.stdout
    )
    assert re.search(
        r"TASK \[gpufleet\.vllm\.gpu_host : Add an apt repository[^\n]*\]\s*\*+\s*ok: \[gpu-d\]", proc.stdout
    )
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
