"""Role gpufleet.vllm.node_agent over SSH on the solo simulated host gpu-e (playbooks/node_agent.yml): check mode
starts nothing; the shipped files are byte-identical to the collection's; the agent runs and its exporter asks for
credentials; logs.yml; a second run changes nothing; a killed supervisor is started again. A file of its own (not in
test_node_agent.py, whose agent tests are local) on a host of its own (`sim_solo_host`, not the fleet tests' gpu-a/b/c):
it runs on either xdist worker, beside the fleet tests, never in their chain (tests/conftest.py)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
import yaml
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.shipping import MODULE, shipped_files
from fixtures.container import free_port
from fixtures.hosts import recap

ROOT = Path(__file__).resolve().parents[2]
MODULE_UTILS = ROOT / "plugins" / "module_utils"
PORTS = (18600, 18699)
SIM_INSTALL = "/var/lib/gpufleet/agent-test-code"
SIM_STATE = "/var/lib/gpufleet/agent-test-state"
SIM_PIDFILE = "/run/gpufleet-node-agent-test.pid"


@pytest.mark.integration
@pytest.mark.multihost
def test_role_on_sim_host(sim_solo_host, tmp_path):
    sim_hosts = sim_solo_host
    host = "gpu-e"
    port = free_port(*PORTS)
    extra = {
        "gpufleet_hosts": "gpu_hosts",
        "gpufleet_agent_install_dir": SIM_INSTALL,
        "gpufleet_agent_state_dir": SIM_STATE,
        "gpufleet_agent_pidfile": SIM_PIDFILE,
        "gpufleet_agent_port": port,
        "gpufleet_agent_interval": 1,
        "gpufleet_agent_names": ["agent-sim-none"],
        # Exposed on gpu-e's address (the default is 127.0.0.1), so it asks for credentials (exporter-toolkit style).
        "gpufleet_agent_listen_address": sim_hosts.address(host),
        "gpufleet_agent_web_config": {
            "basic_auth_users": {"prom": bcrypt.hashpw(b"scrape-pw", bcrypt.gensalt(4)).decode()}
        },
    }
    (tmp_path / "vars.yml").write_text(yaml.safe_dump(extra))

    def play(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["ansible-playbook", "-i", str(sim_hosts.inventory), "--limit", host, "-e", f"@{tmp_path / 'vars.yml'}"]
        cmd += [*args, str(ROOT / "playbooks" / "node_agent.yml")]
        proc = subprocess.run(cmd, env=sim_hosts.env, capture_output=True, text=True, timeout=300, check=False)
        proc.stdout += proc.stderr
        return proc

    def agent_pid() -> int | None:
        r = sim_hosts.in_host(host, "cat", SIM_PIDFILE)
        return int(r.stdout) if r.returncode == 0 and r.stdout.strip().isdigit() else None

    try:
        check = play("--check")
        assert check.returncode == 0, check.stdout[-4000:]
        assert agent_pid() is None, "check mode started nothing"

        first = play()
        assert first.returncode == 0, first.stdout[-4000:]
        assert recap(first.stdout)[host]["changed"] > 0

        # The no-drift rule: exactly the shipped files, byte for byte the collection's.
        code = f"{SIM_INSTALL}/ansible_collections/gpufleet/vllm/plugins/module_utils"
        listed = sim_hosts.in_host(host, "find", code, "-type", "f", "-name", "*.py", "-printf", "%P\\n")
        assert sorted(listed.stdout.split()) == sorted([*shipped_files(), "__init__.py"])
        sums = sim_hosts.in_host(host, "sha256sum", *[f"{code}/{f}" for f in shipped_files()])
        assert sums.returncode == 0, sums.stderr
        remote = {str(Path(p).relative_to(code)): s for s, p in (line.split() for line in sums.stdout.splitlines())}
        local = {f: subprocess.check_output(["sha256sum", str(MODULE_UTILS / f)], text=True).split()[0] for f in remote}
        assert remote == local

        # The agent runs (supervised, in gpu-e's namespaces) and answers on gpu-e's address.
        pid = agent_pid()
        assert pid is not None and MODULE in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        url = f"http://{sim_hosts.address(host)}:{port}/metrics"
        auth = {"Authorization": "Basic " + base64.b64encode(b"prom:scrape-pw").decode()}
        text, deadline = "", time.monotonic() + 120
        while "gpufleet_agent_ticks_total" not in text and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=auth), timeout=5) as resp:
                    text = resp.read().decode()
            except OSError:
                time.sleep(0.3)
        assert "gpufleet_agent_ticks_total" in text and "gpufleet_agent_tick_errors_total 0.0" in text, text
        # Without the credentials (or with wrong ones) the exporter answers 401, from this other network namespace.
        for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"prom:wrong").decode()}):
            with pytest.raises(urllib.error.HTTPError) as denied:
                urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5)
            assert denied.value.code == 401
        mode = sim_hosts.in_host(host, "stat", "-c", "%a", f"{SIM_STATE}/web-config.json")
        assert mode.stdout.strip() == "600", mode

        # logs.yml prints the tail of each replica's current run and fetches its files (a run's copy as the agent
        # writes it; the agent's copying itself: test_exporter_answers_metrics).
        run = "2026-01-02T03:04:05.000000Z --- run of container 0123456789ab, started 2026-01-02T03:04:05.000000Z ---"
        lines = "\n".join([run, *(f"2026-01-02T03:04:{10 + i}.000000Z INFO line {i}" for i in range(5))])
        made = sim_hosts.in_host(
            host,
            "sh",
            "-c",
            f"mkdir -p {SIM_STATE}/vllm-logs && printf '%s\\n' \"$0\" > {SIM_STATE}/vllm-logs/agent-sim-none-0.log"
            f" && echo old > {SIM_STATE}/vllm-logs/agent-sim-none-0.log.1 && echo x > {SIM_STATE}/vllm-logs/other.log",
            lines,
        )
        assert made.returncode == 0, made.stderr
        cmd = ["ansible-playbook", "-i", str(sim_hosts.inventory), "--limit", host, "-e", f"@{tmp_path / 'vars.yml'}"]
        cmd += ["-e", f"deployment=agent-sim-none lines=2 fetch=true dest={tmp_path / 'logs'}"]
        shown = subprocess.run(
            [*cmd, str(ROOT / "playbooks" / "logs.yml")], env=sim_hosts.env, capture_output=True, text=True, timeout=300
        )
        assert shown.returncode == 0, shown.stdout[-4000:] + shown.stderr
        assert '"2026-01-02T03:04:13.000000Z INFO line 3",' in shown.stdout and "INFO line 4" in shown.stdout
        assert "INFO line 2" not in shown.stdout and '"x"' not in shown.stdout, "2 lines, of that deployment only"
        fetched = sorted(p.name for p in (tmp_path / "logs" / host).iterdir())
        assert fetched == ["agent-sim-none-0.log", "agent-sim-none-0.log.1"]
        assert (tmp_path / "logs" / host / "agent-sim-none-0.log").read_text() == lines + "\n"

        second = play()
        assert second.returncode == 0, second.stdout[-4000:]
        assert recap(second.stdout)[host]["changed"] == 0, second.stdout[-4000:]
        assert agent_pid() == pid, "an unchanged run leaves the agent running as it is"

        # A killed supervisor is started again by the next run.
        os.kill(pid, signal.SIGKILL)
        third = play()
        assert third.returncode == 0 and recap(third.stdout)[host]["changed"] == 1, third.stdout[-4000:]
        assert agent_pid() not in (None, pid)
    finally:
        stopped = play("-e", "gpufleet_agent_state=stopped")
        sim_hosts.in_host(host, "rm", "-rf", SIM_INSTALL, SIM_STATE)
    assert stopped.returncode == 0, stopped.stdout[-4000:]
    assert agent_pid() is None
