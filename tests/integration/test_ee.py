"""The playbooks as AWX runs them (issue #18): ansible-runner starts each job in a fresh container of the collection's
execution environment (sim/images/ee: built from meta/execution-environment.yml's requirement files on the bed's
base image), with the collection installed from its built tarball into the job's private data dir (as AWX's project
sync does), the SSH key from env/ssh_key, over SSH to the simulated hosts (host network).

One scenario, in order: converge, a second converge in a new container (changed=0), a converge with one host
unreachable (its replica stays in the plan: the placements come from the other hosts, no job keeps controller
state), status, stop. Each job's artifacts/<ident>/ holds rc, status, stdout, the job events and the set_stats data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.hosts import SimFleet

pytestmark = [pytest.mark.integration, pytest.mark.multihost, pytest.mark.after_background_builds]

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / ".build" / "fleet"
UNREACHABLE = "10.213.37.250"
PLAYBOOKS = ("converge", "status", "stop")


def chat(max_model_len: int = 2048) -> dict[str, Any]:
    return {
        "name": "eechat",
        "model": str(MODELS / "models" / "tiny-chat"),
        "vllm_version": "0.10.2",
        "replicas": 2,
        "placement": "spread",
        "port": 8300,
        "engine_options": {"max_model_len": max_model_len},
    }


class Job:
    """One finished ansible-runner job: its artifacts/<ident>/ directory."""

    def __init__(self, artifacts: Path, output: str) -> None:
        self.dir = artifacts
        self.output = output  # ansible-runner's own stdout + stderr

    @property
    def rc(self) -> int:
        return int((self.dir / "rc").read_text().strip())

    @property
    def status(self) -> str:
        return (self.dir / "status").read_text().strip()

    @property
    def stdout(self) -> str:
        return (self.dir / "stdout").read_text()

    def events(self) -> list[dict[str, Any]]:
        files = sorted((self.dir / "job_events").glob("*.json"), key=lambda p: int(p.name.split("-")[0]))
        return [json.loads(p.read_text()) for p in files]

    def stats(self) -> dict[str, Any]:
        """The playbook_on_stats event's data: per-host ok/changed/failures/dark and the set_stats data."""
        (stats,) = [e for e in self.events() if e.get("event") == "playbook_on_stats"]
        return stats["event_data"]

    def file(self, name: str) -> dict[str, Any]:
        return json.loads((self.dir / "gpufleet" / name).read_text())

    def why(self) -> str:
        return f"{self.output[-1500:]}\n--- stdout:\n{self.stdout[-4000:] if (self.dir / 'stdout').exists() else ''}"


class RunnerFleet(SimFleet):
    """The simulated hosts driven by ansible-runner jobs in the EE container (private data dir ``pdd``)."""

    def __init__(self, sim: Any, workdir: Path, image: str, tarball: Path) -> None:
        super().__init__(sim, workdir, {name: "docker" for name in sim.names})
        self.image = image
        self.pdd = workdir / "pdd"
        (self.pdd / "project").mkdir(parents=True)
        (self.pdd / "env").mkdir()
        for name in PLAYBOOKS:  # AWX offers project playbooks only: one-line wrappers (docs/awx.md)
            (self.pdd / "project" / f"{name}.yml").write_text(
                f"---\n- name: {name}\n  ansible.builtin.import_playbook: gpufleet.vllm.{name}\n"
            )
        # The collection from its tarball into the job's requirements_collections, as AWX's project sync does.
        proc = subprocess.run(
            ["ansible-galaxy", "collection", "install", "--offline", "--force", "-p", str(self.pdd / "requirements_collections"),
             str(tarball)],
            env=self.env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        key = yaml.safe_load(sim.inventory.read_text())["all"]["vars"]["ansible_ssh_private_key_file"]
        shutil.copy(key, self.pdd / "env" / "ssh_key")
        envvars = {
            "ANSIBLE_COLLECTIONS_PATH": "/runner/requirements_collections",
            "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
            "ANSIBLE_PIPELINING": "1",
            "ANSIBLE_SSH_TIMEOUT": "5",
            "ANSIBLE_SSH_RETRIES": "2",
            "ANSIBLE_HOST_KEY_CHECKING": "false",
        }
        (self.pdd / "env" / "envvars").write_text(yaml.safe_dump(envvars))
        self.idents = 0

    def write_job_inventory(self, deployments: list[dict[str, Any]], **kw: Any) -> None:
        """The bed's inventory for the job: no controller path in it (the key comes from env/ssh_key, the artifacts
        go to the runner's artifact dir by default)."""
        self.write_inventory(deployments, **kw)
        dest = self.pdd / "inventory"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(self.inventory, dest)
        inv = yaml.safe_load((dest / "hosts.yml").read_text())
        inv["all"]["vars"].pop("ansible_ssh_private_key_file")
        (dest / "hosts.yml").write_text(yaml.safe_dump(inv))
        values = yaml.safe_load((dest / "group_vars" / "all" / "fleet.yml").read_text())
        values.pop("gpufleet_artifacts_dir")
        (dest / "group_vars" / "all" / "fleet.yml").write_text(yaml.safe_dump(values))

    def job(self, playbook: str, extravars: dict[str, Any] | None = None, timeout: int = 600) -> Job:
        self.idents += 1
        ident = f"{self.idents:02d}-{playbook}"
        (self.pdd / "env" / "extravars").write_text(yaml.safe_dump(extravars or {}))
        cmd = [
            "ansible-runner", "run", str(self.pdd), "-p", f"{playbook}.yml", "--ident", ident,
            "--process-isolation", "--process-isolation-executable", "docker", "--container-image", self.image,
            "--container-option=--network=host",
        ]  # fmt: skip
        # Nothing of this process's Ansible set-up reaches the job: only the private data dir does.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "GPUFLEET_"))}
        env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        return Job(self.pdd / "artifacts" / ident, proc.stdout + proc.stderr)

    def kept_state(self, host: str) -> dict[str, Any] | None:
        out = self.sim.in_host(host, "cat", "/var/lib/gpufleet/fleet/placements.json")
        return json.loads(out.stdout) if out.returncode == 0 else None


@pytest.fixture(scope="module")
def ee_image() -> str:
    if not shutil.which("docker"):
        pytest.skip("docker is not installed")
    proc = subprocess.run(
        [str(ROOT / "sim" / "images" / "ee" / "build.sh")], capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tarball(ansible_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collection")
    proc = subprocess.run(
        ["ansible-galaxy", "collection", "build", "--output-path", str(out), str(ROOT)],
        env=ansible_env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("gpufleet-vllm-*.tar.gz")
    return built


@pytest.fixture(scope="module")
def fleet(
    sim_hosts: Any, sim_fleet_lock: None, ee_image: str, tarball: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    subprocess.run([str(ROOT / "sim" / "steps.d" / "70-fleet.sh"), "up"], check=True, capture_output=True)
    f = RunnerFleet(sim_hosts, tmp_path_factory.mktemp("ee"), ee_image, tarball)
    f.write_inventory([])
    proc = f.play("stop.yml", "-e", "all=true", "-e", "state=absent")  # start from a fleet without managed containers
    assert proc.returncode == 0, proc.stdout[-3000:]
    for host in sim_hosts.names:  # and without the placements an earlier test left on the hosts
        sim_hosts.in_host(host, "rm", "-f", "/var/lib/gpufleet/fleet/placements.json")
    yield f
    f.write_inventory([])
    f.play("stop.yml", "-e", "all=true", "-e", "state=absent")


def test_converge_in_the_ee(fleet: RunnerFleet) -> None:
    fleet.write_job_inventory([chat()])
    job = fleet.job("converge")
    assert job.rc == 0 and job.status == "successful", job.why()
    # The job ran in the EE container from the tarball's collection: ansible-runner's command is a docker run.
    command = json.loads((job.dir / "command").read_text())["command"]
    assert command[:2] == ["docker", "run"] and fleet.image in command
    # Artifacts: events, stdout, the summary file in the runner's artifact dir, and the set_stats data.
    assert any(e.get("event") == "runner_on_ok" for e in job.events())
    summary = job.file("converge-summary.json")
    assert summary["ok"] is True and summary["counts"]["changed"] == 2, summary["counts"]
    published = job.stats()["artifact_data"]["gpufleet_converge_summary"]
    assert published == summary
    assert len({r["host"] for r in summary["deployments"]["eechat"]["replicas"]}) == 2  # spread
    assert set(fleet.managed("eechat")) == {"gpufleet-eechat-0", "gpufleet-eechat-1"}
    # No state in the private data dir: the placements live on the hosts, each with the whole fleet's copy.
    assert not list(fleet.pdd.rglob("placements.json"))
    kept = {h: fleet.kept_state(h) for h in fleet.sim.names}
    assert all(k is not None for k in kept.values()), kept
    assert len({json.dumps(k, sort_keys=True) for k in kept.values()}) == 1
    assert sorted(p["replica"] for p in kept["gpu-a"]["placements"]) == [0, 1]


def test_second_job_in_a_fresh_container_changes_nothing(fleet: RunnerFleet) -> None:
    before = {n: c["id"] for n, c in fleet.managed("eechat").items()}
    job = fleet.job("converge")
    assert job.rc == 0, job.why()
    stats = job.stats()
    assert set(stats["ok"]) == set(fleet.sim.names) and not stats["changed"], stats["changed"]
    counts = job.file("converge-summary.json")["counts"]
    assert (counts["ok"], counts["changed"], counts["failed"]) == (2, 0, 0), counts
    assert {n: c["id"] for n, c in fleet.managed("eechat").items()} == before


def test_unreachable_host_keeps_its_replica_across_jobs(fleet: RunnerFleet) -> None:
    kept = fleet.kept_state("gpu-a")
    assert kept is not None
    placed = {f"{p['deployment']}-{p['replica']}": p["host"] for p in kept["placements"]}
    lost = placed["eechat-1"]
    # A flag change while one host cannot be reached: a new job, a new container, no controller state.
    fleet.write_job_inventory([chat(max_model_len=1024)], address_override={lost: UNREACHABLE})
    job = fleet.job("converge")
    assert job.rc == 4, job.why()  # ansible-playbook's exit code for unreachable hosts
    summary = job.file("converge-summary.json")
    assert summary["unreachable_hosts"] == [lost]
    rows = {r["name"]: r for r in summary["deployments"]["eechat"]["replicas"]}
    assert rows["eechat-1"]["host"] == lost and rows["eechat-1"]["status"] == "unreachable"  # kept, not moved
    assert rows["eechat-0"]["host"] == placed["eechat-0"] and rows["eechat-0"]["status"] == "changed"
    assert f"{lost} is unreachable; its placement is kept" in job.stdout
    assert job.stats()["dark"] == {lost: 1}


def test_status_and_stop_in_the_ee(fleet: RunnerFleet) -> None:
    fleet.write_job_inventory([chat(max_model_len=1024)])
    job = fleet.job("status")
    assert job.rc == 0, job.why()
    report = job.stats()["artifact_data"]["gpufleet_status"]
    assert report == job.file("status.json")
    assert sorted(r["name"] for r in report["rows"]) == ["eechat-0", "eechat-1"]
    assert {r["state"] for r in report["rows"]} == {"running"}
    job = fleet.job("stop", {"all": "true", "state": "absent"})
    assert job.rc == 0, job.why()
    assert fleet.managed("eechat") == {}
