"""The node agent for real: `--once` from a tree that holds only the shipped module_utils files, against the main
dockerd with vLLM stand-in containers started by `ansible localhost -m gpufleet.vllm.vllm_container`; its metrics
endpoint (the role over SSH on the simulated host gpu-c: test_node_agent_role.py).

Containers are named gpufleet-agent-*, ports 18600-18699; the agent is always limited to them (--names), so it never
touches another test's containers."""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.shipping import MODULE, shipped_files
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu import xid
from fixtures.container import free_port, inspect, logs
from fixtures.hosts import recap
from fixtures.nvml import make_gpu

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "node_agent"
MODULE_UTILS = ROOT / "plugins" / "module_utils"
PYTHON = ROOT / ".venv" / "bin" / "python"
CANARY_KEY = "canary-agentkey-4e7b19"
CANARY_URL = "canary-agentsecret-c0ffee"
PORTS = (18600, 18699)
# Runs the agent module (as `python -m` does) with time.time() frozen at argv[1]: a tick is one pass at one `now`.
FROZEN_CLOCK = (
    "import runpy, sys, time; now = float(sys.argv.pop(1)); time.time = lambda: now; "
    f"runpy.run_module({MODULE!r}, run_name='__main__', alter_sys=True)"
)


STAMPED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z ")  # the agent's UTC stamp of each line


def stamp_of(d: dict[str, Any]) -> str:
    """A container's StartedAt as the agent's run header writes it (UTC, rounded to microseconds)."""
    whole, _dot, frac = d["State"]["StartedAt"].rstrip("Z").partition(".")
    t = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.timezone.utc)
    t += datetime.timedelta(microseconds=round(int((frac + "000000000")[:9]) / 1000))
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def wait_for_text(path: Path, text: str, after: str = "", timeout: float = 240) -> list[str]:
    """The lines of the agent's copy ``path`` once one holds ``text`` (and its run header says ``after``); the bound
    only ends a test that would wait forever (a loaded 2-core machine takes its time)."""
    deadline, lines = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if lines and after in lines[0] and any(text in line for line in lines):
            return lines
        time.sleep(0.2)
    raise AssertionError(f"{path} has no {text!r} after {timeout} s: {lines[-20:]}")


def label_time(text: str) -> float:
    """A gpufleet.serve-until label (UTC, second precision) as a Unix time."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


# ------------------------------------------------------------------------------------------------ static
def test_defaults_and_argument_specs_in_step() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    options = {k: v for spec in specs.values() for k, v in spec["options"].items()}  # main, logs
    assert set(defaults) == set(options)
    for key, opt in options.items():
        if "default" in opt:
            assert opt["default"] == defaults[key], key
        else:  # templated defaults (the host's gpufleet_runtime) are documented without a value
            assert "{{" in str(defaults[key]), key
    for entry in specs:  # every entry point has its tasks file
        assert (ROLE / "tasks" / f"{entry}.yml").exists(), entry


def test_playbook_syntax(ansible_env: dict[str, str]) -> None:
    proc = subprocess.run(
        ["ansible-playbook", "--syntax-check", "-i", "localhost,", str(ROOT / "playbooks" / "node_agent.yml")],
        env=ansible_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------ the agent, main dockerd
@pytest.fixture(scope="module")
def agent_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ansible_collections/gpufleet/vllm/plugins/module_utils/ with only the shipped files (what
    the role puts on a host): the agent must run from exactly that."""
    root = tmp_path_factory.mktemp("agent-tree")
    code = root / "ansible_collections" / "gpufleet" / "vllm" / "plugins" / "module_utils"
    code.mkdir(parents=True)
    for d in (code, *code.parents):
        if d == root:
            break
        (d / "__init__.py").write_text("")
    for f in shipped_files():
        (code / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MODULE_UTILS / f, code / f)
    return root


@pytest.mark.integration
class TestAgentOnDockerd:
    @pytest.fixture
    def names(self) -> Iterator[list[str]]:
        made: list[str] = []
        yield made
        for n in made:
            for engine in ("docker", "podman"):
                if shutil.which(engine):
                    subprocess.run([engine, "rm", "-f", f"gpufleet-{n}"], capture_output=True, check=False)

    @pytest.fixture
    def deploy(self, ansible_run, standin_images, standin_model_dir, tmp_path, names, request):
        def run(scenario: str, runtime: str = "docker", **params: Any) -> dict[str, Any]:
            name = f"agent-{scenario}-{uuid.uuid4().hex[:6]}"
            names.append(name)
            images = request.getfixturevalue("podman_bed") if runtime == "podman" else standin_images
            args = {
                "name": name,
                "runtime": runtime,
                "image": images["0.10.2"],
                "model": str(standin_model_dir),
                "gpus": ["0"],
                "port": free_port(*PORTS),
                "host": "127.0.0.1",
                "restart_policy": "no",
                "manifest_dir": str(tmp_path / "manifests"),
                "hf_cache_dir": str(tmp_path / "hf"),
                "compile_cache_dir": str(tmp_path / "cc"),
                "wait_timeout": 60,
                "stop_timeout": 5,
                "api_key": CANARY_KEY,
                **params,
            }
            r = ansible_run.run("vllm_container", args)
            r["_args"] = args
            return r

        return run

    @pytest.fixture
    def agent(self, agent_tree: Path, tmp_path: Path):
        """``agent(names, *args, now=None)``: one tick (``--once``) of the shipped agent. With ``now``, the agent's
        clock (time.time) reads exactly that: the test moves time past a deadline instead of sleeping until it, and
        no deadline depends on how fast this machine runs the steps before the tick."""
        state = tmp_path / "agent-state"

        def once(names: list[str], *extra: str, now: float | None = None) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            env["PYTHONPATH"] = str(agent_tree)
            cmd = [str(PYTHON), "-m", MODULE] if now is None else [str(PYTHON), "-c", FROZEN_CLOCK, repr(now)]
            cmd += ["--once", "--port", "0", "--state-dir", str(state), "--gpufleet-dir", str(tmp_path)]
            cmd += ["--names", ",".join(names), *extra]
            proc = subprocess.run(
                cmd, cwd=agent_tree, env=env, capture_output=True, text=True, timeout=120, check=False
            )
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return proc

        once.state = state  # type: ignore[attr-defined]
        return once

    @staticmethod
    def events(state: Path) -> list[dict[str, Any]]:
        path = state / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    @staticmethod
    def wait_exited(name: str, timeout: float = 30, engine: str = "docker") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = inspect(engine, f"gpufleet-{name}")
            if d and d["State"]["Status"] == "exited":
                return d
            time.sleep(0.2)
        raise AssertionError(f"gpufleet-{name} did not exit within {timeout} s")

    @staticmethod
    def served_then_crashed(name: str, engine: str = "docker") -> None:
        """The container's log shows a server that came up and then died (not a failed start-up)."""
        text = logs(engine, f"gpufleet-{name}")
        up, crash = text.find("Application startup complete"), text.find("EngineCore encountered a fatal error")
        assert 0 <= up < crash, text[-3000:]

    def test_crashed_server_is_restarted_with_backoff(self, deploy, agent, names):
        # wait=False: the stand-in crashes 2 s after it serves, whether or not the module's readiness probe saw it
        # up in that window on a loaded machine; the log shows it served.
        r = deploy("crash", env={"STANDIN_CRASH_AFTER": "2"}, wait=False)
        assert r["_rc"] == 0, r["_output"]
        name = names[0]
        first = self.wait_exited(name)
        assert first["State"]["ExitCode"] == 1
        self.served_then_crashed(name)

        agent([name])
        ev = self.events(agent.state)
        assert [e["event"] for e in ev] == ["failure", "restart"], ev
        assert ev[0]["deployment"] == name and ev[0]["exit_code"] == 1 and ev[0]["failure_class"] == "unknown"
        assert any("EngineCore encountered a fatal error" in line for line in ev[0]["tail"])
        after = inspect("docker", f"gpufleet-{name}")
        assert after["Id"] == first["Id"], "restarted, not recreated"
        assert after["State"]["StartedAt"] != first["State"]["StartedAt"]
        metrics = (agent.state / "metrics.prom").read_text()
        assert f'gpufleet_agent_restarts_total{{deployment="{name}"}} 1.0' in metrics
        assert f'gpufleet_agent_failures_total{{deployment="{name}",failure_class="unknown"}} 1.0' in metrics

        # It crashes again at once: the back-off (10 s after the first restart) holds the next restart. The agent's
        # clock reads 1 s after that restart, however long the crash and this test's steps took.
        restarted_at = json.loads((agent.state / "state.json").read_text())["deployments"][name]["restarts"][-1]
        self.wait_exited(name)
        agent([name], now=restarted_at + 1)
        assert inspect("docker", f"gpufleet-{name}")["State"]["Status"] == "exited"
        assert [e["event"] for e in self.events(agent.state)].count("restart") == 1
        # Without back-off the budget still counts the restart of the previous run (state.json).
        agent([name], "--backoff-base", "0", "--max-restarts", "2")
        assert [e["event"] for e in self.events(agent.state)].count("restart") == 2
        self.wait_exited(name)
        agent([name], "--backoff-base", "0", "--max-restarts", "2")
        kinds = [e["event"] for e in self.events(agent.state)]
        assert kinds.count("restart") == 2 and kinds[-1] == "restart_budget_exhausted"
        assert inspect("docker", f"gpufleet-{name}")["State"]["Status"] == "exited"

    def test_bad_args_is_not_restarted(self, deploy, agent, names):
        r = deploy("badargs", extra_args=["--no-such-flag"], validate_args=False, wait=False)
        assert r["_rc"] == 0, r["_output"]
        name = names[0]
        self.wait_exited(name)
        agent([name])
        agent([name])
        ev = self.events(agent.state)
        assert [e["event"] for e in ev] == ["failure", "not_restarted"], ev
        assert ev[0]["failure_class"] == "bad_args" and ev[0]["exit_code"] == 2
        assert inspect("docker", f"gpufleet-{name}")["State"]["Status"] == "exited"
        metrics = (agent.state / "metrics.prom").read_text()
        assert f'gpufleet_agent_restarts_total{{deployment="{name}"}} 0.0' in metrics
        assert (
            f'gpufleet_agent_last_failure_timestamp_seconds{{deployment="{name}",failure_class="bad_args"}}' in metrics
        )
        assert f'gpufleet_agent_restart_blocked{{deployment="{name}",reason="bad_args"}} 1.0' in metrics

    def test_expired_serve_for_is_stopped_not_removed(self, deploy, agent, names):
        r = deploy("expiry", serve_for="1")  # 1 h: the agent's clock, not this machine's speed, reaches it
        assert r["_rc"] == 0 and r["ready"], r["_output"]
        name = names[0]
        until = label_time(r["serve_until"])  # the lifecycle record's deadline (no longer a label)
        assert "gpufleet.serve-until" not in inspect("docker", f"gpufleet-{name}")["Config"]["Labels"]
        agent([name], now=until - 1)
        assert inspect("docker", f"gpufleet-{name}")["State"]["Running"], "not expired yet"
        assert self.events(agent.state) == []
        agent([name], now=until + 1)
        ev = self.events(agent.state)
        assert [e["event"] for e in ev] == ["expired"] and ev[0]["stopped"] is True
        d = inspect("docker", f"gpufleet-{name}")
        assert d is not None and d["State"]["Status"] == "exited", "stopped, not removed"
        agent([name], now=until + 2)  # exited with 0 after the stop: never restarted
        assert not inspect("docker", f"gpufleet-{name}")["State"]["Running"]
        metrics = (agent.state / "metrics.prom").read_text()
        assert f'gpufleet_agent_expired{{deployment="{name}"}} 1.0' in metrics
        assert f'gpufleet_agent_serve_until_seconds{{deployment="{name}"}} -' in metrics

    def test_serve_for_extended_without_a_restart_and_expiry_respected_by_the_converge(
        self, deploy, agent, names, ansible_run, tmp_path
    ):
        r = deploy("extend", serve_for="1")
        assert r["_rc"] == 0 and r["ready"], r["_output"]
        name, args = names[0], r["_args"]
        first = inspect("docker", f"gpufleet-{name}")
        # serve_for 1 h -> 3 h in the declaration: the same container, serving, the deadline moved by 2 h.
        longer = ansible_run.run("vllm_container", {**args, "serve_for": "3"})
        assert longer["_rc"] == 0 and not longer["changed"], longer["_output"]
        assert longer["container_id"] == first["Id"]
        until = label_time(longer["serve_until"])
        assert until - label_time(r["serve_until"]) == pytest.approx(2 * 3600, abs=2)
        agent([name], now=until - 60)  # past the first deadline, before the new one: serving
        assert inspect("docker", f"gpufleet-{name}")["State"]["Running"]
        agent([name], now=until + 1)
        assert [e["event"] for e in self.events(agent.state)] == ["expired"]
        assert json.loads((tmp_path / "lifecycle" / f"{name}.json").read_text())["expired"]
        # The next converge (its clock: until is in the past once the record says since - 4 h) reports it expired
        # and leaves it stopped: not a drift to fix.
        record = tmp_path / "lifecycle" / f"{name}.json"
        rec = json.loads(record.read_text())
        rec["since"] -= 4 * 3600
        record.write_text(json.dumps(rec))
        again = ansible_run.run("vllm_container", {**args, "serve_for": "3"})
        assert again["_rc"] == 0 and not again["changed"] and again["lifecycle"] == "expired", again["_output"]
        d = inspect("docker", f"gpufleet-{name}")
        assert d["Id"] == first["Id"] and not d["State"]["Running"]

    def test_crash_loop_stops_after_the_budget_with_its_cause(self, deploy, agent, names, ansible_run):
        r = deploy("loop", env={"STANDIN_CRASH_AFTER": "2"}, wait=False, max_failed_restarts=1)
        assert r["_rc"] == 0, r["_output"]
        name = names[0]
        first = self.wait_exited(name)
        agent([name], "--backoff-base", "0")  # failure 1: restarted (1 restart allowed)
        self.wait_exited(name)
        agent([name], "--backoff-base", "0")  # failure 2: the end state
        ev = self.events(agent.state)
        assert [e["event"] for e in ev] == ["failure", "restart", "failure", "gave_up"], ev
        assert ev[-1]["reason"] == "crash_loop" and ev[-1]["failure_class"] == "unknown"
        agent([name], "--backoff-base", "0")
        d = inspect("docker", f"gpufleet-{name}")
        assert d["Id"] == first["Id"] and d["State"]["Status"] == "exited", "stopped for good, not removed"
        metrics = (agent.state / "metrics.prom").read_text()
        assert (
            f'gpufleet_agent_deployment_failed{{deployment="{name}",failure_class="unknown",reason="crash_loop"}} 1.0'
            in metrics
        )
        # The converge reports it failed with the cause instead of starting it again.
        again = ansible_run.run("vllm_container", {**r["_args"], "wait": False})
        assert again["_rc"] != 0 and again.get("lifecycle") == "failed", again["_output"]
        assert "crash_loop" in again["msg"] and again["lifecycle_failed"]["failure_class"] == "unknown"
        assert inspect("docker", f"gpufleet-{name}")["State"]["Status"] == "exited"
        reset = ansible_run.run("vllm_container", {**r["_args"], "wait": False, "reset_failed": True})
        assert reset["_rc"] == 0 and reset["container_id"] == first["Id"], reset["_output"]

    def test_hung_start_is_marked_after_start_timeout(self, deploy, agent, names):
        r = deploy("hang", env={"STANDIN_START_DELAY": "900"}, wait=False, start_timeout=60, max_failed_restarts=0)
        assert r["_rc"] == 0, r["_output"]
        name = names[0]
        t0 = time.time()
        agent([name], now=t0)  # the agent sees it start (running, never answered)
        agent([name], now=t0 + 59)
        assert self.events(agent.state) == [] and inspect("docker", f"gpufleet-{name}")["State"]["Running"]
        agent([name], now=t0 + 60)
        ev = self.events(agent.state)
        assert [e["event"] for e in ev] == ["failure", "gave_up"], ev
        assert ev[0]["reason"] == "start_timeout" and ev[1]["reason"] == "start_timeout"
        assert inspect("docker", f"gpufleet-{name}")["State"]["Status"] == "exited"

    def test_idle_pause_warm_cache_and_a_request_wakes_it(
        self, deploy, agent, names, ansible_run, ansible_env, standin_images, tmp_path
    ):
        """Issue #17 item 3 on one GPU (0.5 + 0.4 + 0.5 of it): idle pause (the pinned one untouched), a converge leaves
        a paused replica asleep, a request straight to it is held by vLLM (0.16+) until the agent wakes it, the warm
        cache puts the least recently used unpinned replica to sleep when a new one needs the GPU, resume.yml (making
        room the same way) and pause.yml, status. The gateway in front (vllm-router) is not part of this test: it
        forwards a request to the replica, which holds it the same way."""
        sleepy = {"image": standin_images["0.33.0"], "sleep_mode": True, "gpus": ["0"], "idle_pause_after": 60}
        a = deploy("idle-a", **sleepy, gpu_memory_utilization=0.5)
        p = deploy("idle-p", **sleepy, gpu_memory_utilization=0.4, pin=True)
        assert a["_rc"] == 0 and p["_rc"] == 0, a["_output"] + p["_output"]
        na, np_ = names
        url = {n: f"http://127.0.0.1:{r['_args']['port']}" for n, r in ((na, a), (np_, p))}

        def asleep(name: str) -> bool:
            return requests.get(f"{url[name]}/is_sleeping", timeout=5).json()["is_sleeping"]

        t0 = time.time()
        agent([na, np_], now=t0)  # the first look starts the idle clock (59 s later: unit-tested)
        agent([na, np_], now=t0 + 60)
        ev = self.events(agent.state)
        assert [(e["event"], e["deployment"], e["reason"]) for e in ev] == [("paused", na, "idle")], ev
        assert asleep(na) and not asleep(np_), "pinned: never paused"
        # The next converge leaves it asleep (paused on purpose is not a drift); serve_for counts on.
        again = ansible_run.run("vllm_container", a["_args"])
        assert again["_rc"] == 0 and not again["changed"] and again["state"] == "paused", again["_output"]
        assert asleep(na)

        # A request straight to the paused replica waits (vLLM holds it) until the agent wakes it.
        auth = {"Authorization": f"Bearer {CANARY_KEY}"}
        model = requests.get(f"{url[na]}/v1/models", headers=auth, timeout=5).json()["data"][0]["id"]
        body = {"model": model, "prompt": "hello", "max_tokens": 4}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            sent = pool.submit(requests.post, f"{url[na]}/v1/completions", json=body, headers=auth, timeout=120)
            deadline = time.monotonic() + 60
            while not any(
                float(v) >= 1
                for v in re.findall(
                    r"^vllm:num_requests_waiting\{.*\} (\S+)$", requests.get(f"{url[na]}/metrics", timeout=5).text, re.M
                )
            ):
                assert time.monotonic() < deadline and not sent.done(), "the request is not waiting at the replica"
                time.sleep(0.1)
            agent([na, np_])
            answer = sent.result(timeout=60)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4, answer.text
        woken = [e for e in self.events(agent.state) if e["event"] == "woken"]
        assert len(woken) == 1 and woken[0]["deployment"] == na and woken[0]["paused_for_room"] == [], woken
        assert not asleep(na)

        # A new replica on the GPU: the least recently used unpinned one (a) goes to sleep, the pinned one stays.
        b = deploy("idle-b", **sleepy, gpu_memory_utilization=0.5)
        nb = names[2]
        url[nb] = f"http://127.0.0.1:{b['_args']['port']}"
        assert b["_rc"] == 0 and b["paused_for_room"] == [na], b["_output"]
        assert asleep(na) and not asleep(np_) and not asleep(nb)

        # resume.yml and pause.yml (the playbooks, on localhost): a wakes, b (now the least recently used) makes room.
        def play(book: str) -> int:
            cmd = ["ansible-playbook", "-i", "localhost,", "-c", "local", str(ROOT / "playbooks" / book)]
            cmd += ["-e", f"deployment={na} gpufleet_hosts=localhost gpufleet_state_dir={tmp_path}"]
            cmd += ["-e", "ansible_python_interpreter={{ ansible_playbook_python }}"]
            out = subprocess.run(cmd, env=ansible_env, capture_output=True, text=True, timeout=300, check=False)
            assert out.returncode == 0, out.stdout + out.stderr
            return recap(out.stdout)["localhost"]["changed"]

        assert play("resume.yml") == 1 and not asleep(na) and asleep(nb) and not asleep(np_)
        assert play("pause.yml") == 1 and asleep(na)

        # Status: paused with how long and why; the pinned one says so.
        info = ansible_run.run("vllm_deployment_info", {"names": [na, np_, nb], "state_dir": str(tmp_path)})
        rows = {d["name"]: d for d in info["deployments"]}
        assert rows[nb]["state"] == "paused" and rows[nb]["lifecycle"] == "paused", rows[nb]
        assert rows[nb]["paused_reason"] == "warm_cache" and rows[nb]["paused_for_s"] is not None
        assert rows[na]["paused_reason"] == "manual" and rows[np_]["pinned"] is True and rows[np_]["state"] == "running"

    def test_secret_canary_never_written(self, deploy, agent, names):
        r = deploy(
            "canary",
            env={"STANDIN_FAIL": "gated"},
            secret_env={"HF_ENDPOINT": f"http://{CANARY_URL}.invalid"},
            wait=False,
        )
        assert r["_rc"] == 0, r["_output"]
        name = names[0]
        self.wait_exited(name)
        assert CANARY_URL in logs("docker", f"gpufleet-{name}"), "the canary must be in the log for this test to mean"
        proc = agent([name])
        ev = self.events(agent.state)
        assert [e["event"] for e in ev] == ["failure", "not_restarted"] and ev[0]["failure_class"] == "hf_auth"
        assert any(failures.MASK in line for line in ev[0]["tail"])
        for path in (p for p in agent.state.rglob("*") if p.is_file()):  # the vLLM log copies too
            text = path.read_text()
            assert CANARY_URL not in text and CANARY_KEY not in text, path.name
        assert CANARY_URL not in proc.stdout + proc.stderr and CANARY_KEY not in proc.stdout + proc.stderr

    @pytest.mark.podman
    def test_podman_crash_restarted_and_secrets_masked(self, deploy, agent, names):
        r = deploy(
            "pdcrash", runtime="podman", gpus=["1"], env={"STANDIN_CRASH_AFTER": "2"}, wait=False, log_max_size="20m"
        )
        assert r["_rc"] == 0, r["_output"]
        r = deploy(
            "pdgated",
            runtime="podman",
            gpus=["1"],
            env={"STANDIN_FAIL": "gated"},
            secret_env={"HF_ENDPOINT": f"http://{CANARY_URL}.invalid"},
            wait=False,
        )
        assert r["_rc"] == 0, r["_output"]
        crash, gated = names
        first = self.wait_exited(crash, engine="podman")
        self.served_then_crashed(crash, engine="podman")
        self.wait_exited(gated, engine="podman")
        assert CANARY_URL in logs("podman", f"gpufleet-{gated}")
        agent(names, "--runtime", "podman")
        ev = {(e["deployment"], e["event"]): e for e in self.events(agent.state)}
        assert set(ev) == {(crash, "failure"), (crash, "restart"), (gated, "failure"), (gated, "not_restarted")}
        assert ev[(gated, "failure")]["failure_class"] == "hf_auth"
        after = inspect("podman", f"gpufleet-{crash}")
        assert after["Id"] == first["Id"] and after["State"]["StartedAt"] != first["State"]["StartedAt"]
        log = after["HostConfig"]["LogConfig"]  # vllm_container's log limits, as podman applied them
        assert (log["Type"], log["Size"]) == ("k8s-file", "20MB"), log
        for path in (p for p in agent.state.rglob("*") if p.is_file()):  # the vLLM log copies too
            text = path.read_text()
            assert CANARY_URL not in text and CANARY_KEY not in text, path.name

    def test_exporter_answers_metrics(self, deploy, agent_tree, tmp_path, names, fake_gpu_env):
        r = deploy("metrics")
        assert r["_rc"] == 0 and r["ready"], r["_output"]
        name = names[0]
        port = free_port(*PORTS)
        # The agent's GPUs: the driver raised Xid 79 (fallen off the bus) and 13 (an application's) on GPU 1.
        gpus = tmp_path / "gpus.json"
        gpus.write_text(json.dumps({"gpus": [make_gpu(0), make_gpu(1, xid_errors=[79, 13])]}))
        env = {k: v for k, v in fake_gpu_env(gpus).items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(agent_tree)
        cmd = [str(PYTHON), "-m", MODULE, "--interval", "0.5", "--port", str(port), "--address", "127.0.0.1"]
        cmd += ["--state-dir", str(tmp_path / "exporter"), "--names", name]
        proc = subprocess.Popen(cmd, cwd=agent_tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            text, deadline = "", time.monotonic() + 180
            want = f'gpufleet_agent_deployment_healthy{{deployment="{name}"}} 1.0'
            while want not in text and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                        text = resp.read().decode()
                except OSError:
                    pass
                time.sleep(0.2)
            assert want in text, text
            assert f'gpufleet_agent_deployment_up{{deployment="{name}"}} 1.0' in text
            assert "gpufleet_agent_tick_duration_seconds" in text and "gpufleet_agent_tick_errors_total 0.0" in text
            assert CANARY_KEY not in text

            # The Xid watch of the shipped agent recorded both Xids where gpu_facts reads them (_gpu/xid.py).
            record = tmp_path / "exporter" / "xid.json"
            sick = make_gpu(1)["uuid"]
            end = time.monotonic() + 180
            while time.monotonic() < end and len(xid.read_record(str(record)).get(sick, [])) < 2:
                time.sleep(0.1)
            assert [e["xid"] for e in xid.read_record(str(record))[sick]] == [79, 13]
            events = [json.loads(line) for line in (tmp_path / "exporter" / "events.jsonl").read_text().splitlines()]
            assert {"event": "xid_watch", "watching": sorted([make_gpu(0)["uuid"], sick])}.items() <= next(
                e for e in events if e["event"] == "xid_watch"
            ).items()
            assert [(e["xid"], e["critical"]) for e in events if e["event"] == "gpu_xid"] == [(79, True), (13, False)]

            # The engine's log is bounded (vllm_container's defaults), and the agent keeps its own copy per run.
            d = inspect("docker", f"gpufleet-{name}")
            assert d["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "50m"}}
            kept = tmp_path / "exporter" / "vllm-logs"
            first = wait_for_text(kept / f"{name}.log", "Application startup complete")
            assert first[0].endswith(f"--- run of container {d['Id'][:12]}, started {stamp_of(d)} ---"), first[0]
            assert all(STAMPED.match(line) for line in first), first
            assert '"GET /health HTTP/1.1" 200' in logs("docker", f"gpufleet-{name}"), "probes must be in the log"
            assert not any('"GET /health' in line for line in first), "successful probes are left out"
            assert not any(CANARY_KEY in line or "\x1b[" in line for line in first)
            # A restart is a new run: the first one becomes .log.1, the new one starts its own file.
            subprocess.run(["docker", "restart", "-t", "5", f"gpufleet-{name}"], check=True, capture_output=True)
            second = wait_for_text(
                kept / f"{name}.log",
                "Application startup complete",
                after=stamp_of(inspect("docker", f"gpufleet-{name}")),
            )
            assert (kept / f"{name}.log.1").read_text().splitlines()[: len(first)] == first
            assert "Application startup complete" in "\n".join(second) and second[0] != first[0]
        finally:
            proc.send_signal(signal.SIGTERM)
            out = proc.communicate(timeout=20)[0].decode()
        assert proc.returncode == 0, out
