"""The node agent's decisions (plugins/module_utils/_agent/loop.py) against an in-memory engine: restarts with a budget
and back-off, classes a restart cannot fix, health failures, serve-for expiry, masking, events, metrics, state.
The pure policy, the event log file and the shipped files: test_agent_policy.py, test_agent_events.py,
test_agent_shipping.py."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.cli import build_parser
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.diagnosis import secret_values
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.events import EventLog
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.loop import tick
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.metrics import render_metrics
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.policy import Policy, backoff_s
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.runner import Agent
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.state import AgentState, load_state, save_state
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._utc import stamp
from fixtures.fake_runtime import FakeRuntime

SECRET = "canary-apikey-0a1b2c3d"
SECRET_ENV = "canary-secretenv-9z8y"
NOW = 1_800_000_000.0

CRASH_LOG = [
    "INFO Application startup complete.",
    f"ERROR EngineCore encountered a fatal error (api_key={SECRET})",
    "RuntimeError: CUDA error: an illegal memory access was encountered",
]
LOGS = {
    "bad_args": ["vllm: error: unrecognized arguments: --no-such-flag"],
    "model_not_found": ["huggingface_hub.errors.RepositoryNotFoundError: Repository Not Found for url: x"],
    "hf_auth": [f"401 Client Error. Cannot access gated repo for url http://hub/{SECRET_ENV}/m/config.json"],
    "no_gpu": ["RuntimeError: Failed to infer device type"],
    "kv_cache_too_small": ["ValueError: ... which is larger than the available KV cache memory (1 GiB)"],
}


def iso(t: float) -> str:
    return stamp(t)


class AgentRuntime(FakeRuntime):
    """FakeRuntime (tests/fixtures/fake_runtime.py) with what the agent reads: the managed list, exit codes, restart
    counts, start/finish times, logs and env."""

    name = "fake"

    def add(
        self,
        name: str,
        *,
        status: str = "running",
        exit_code: int | None = None,
        logs: list[str] | None = None,
        serve_until: str | None = None,
        restart_count: int = 0,
        port: int = 18000,
        env: dict[str, str] | None = None,
        secret_keys: list[str] | None = None,
        oom_killed: bool = False,
        container: str | None = None,
    ) -> str:
        labels = lb.build(
            name=name,
            port=port,
            host="127.0.0.1",
            config_hash="h",
            vllm_version="0.10.2",
            model="/models/m",
            gpus=["0"],
            manifest={},
            spec={"secret_env_keys": secret_keys if secret_keys is not None else ["VLLM_API_KEY", "MY_SECRET"]},
            serve_until=serve_until,
            api_key=True,
        )
        self.serial = getattr(self, "serial", 0) + 1
        cid = f"{name}-id-{self.serial}".ljust(64, "0")
        self.c[cid] = {
            "name": container or lb.container_name(name),
            "status": status,
            "labels": labels,
            "env": env if env is not None else {"VLLM_API_KEY": SECRET, "MY_SECRET": SECRET_ENV, "PLAIN": "x"},
            "exit": exit_code,
            "logs": list(logs or []),
            "restart_count": restart_count,
            "started_at": "2026-11-23T10:00:00.123456789Z",
            "finished_at": "0001-01-01T00:00:00Z" if status == "running" else "2026-11-23T10:05:00Z",
            "oom": oom_killed,
        }
        return cid

    def container(self, name: str) -> ContainerState | None:
        cid = self._find(name)
        if cid is None:
            return None
        c = self.c[cid]
        return ContainerState(
            id=cid,
            name=c["name"],
            status=c["status"],
            running=c["status"] == "running",
            exit_code=c.get("exit"),
            restart_count=c["restart_count"],
            labels=c["labels"],
            started_at=c["started_at"],
            finished_at=c["finished_at"],
            oom_killed=c["oom"],
            env=dict(c["env"]),
        )

    def list_managed(self) -> list[ContainerState]:
        return [self.container(cid) for cid, c in self.c.items() if c["labels"].get(lb.MANAGED) == "true"]

    def logs(self, cid: str, tail: int = 300, since: float | None = None, timestamps: bool = False) -> list[str]:
        return self.c[self._find(cid)]["logs"][-tail:]

    def start(self, cid: str) -> None:
        super().start(cid)
        c = self.c[self._find(cid)]
        c["started_at"] = f"2026-11-23T11:{self.calls.count('start'):02d}:00Z"
        c["exit"] = None

    def stop(self, cid: str, timeout: int) -> None:
        super().stop(cid, timeout)
        self.c[self._find(cid)]["exit"] = 0

    def unpause(self, cid: str) -> None:
        self.calls.append("unpause")
        self.c[self._find(cid)]["status"] = "running"

    def crash(self, cid: str, code: int = 1, when: str = "12:00:00") -> None:
        c = self.c[cid]
        c.update(status="exited", exit=code, finished_at=f"2026-11-23T{when}Z")


class Recorder(list):
    def __call__(self, event: dict[str, Any]) -> None:
        self.append(event)

    def kinds(self) -> list[str]:
        return [e["event"] for e in self]


@pytest.fixture
def rt() -> AgentRuntime:
    return AgentRuntime()


@pytest.fixture
def events() -> Recorder:
    return Recorder()


def down(base, timeout):
    return False


def run(rt, state, events, now, policy=None, probe=None, names=None):
    return tick(rt, state, policy or Policy(), events, now=now, probe=probe or (lambda base, t: True), names=names)


# ------------------------------------------------------------------------------------------------ restarts
def test_crash_is_restarted_classified_and_recorded(rt, events):
    cid = rt.add("chat", status="exited", exit_code=1, logs=CRASH_LOG)
    state = run(rt, AgentState(), events, NOW)
    assert rt.calls == ["start"] and rt.c[cid]["status"] == "running"
    assert events.kinds() == ["failure", "restart"]
    fail, restart = events
    assert fail["failure_class"] == "unknown" and fail["exit_code"] == 1 and fail["deployment"] == "chat"
    assert restart["reason"] == "exited" and restart["restarts_total"] == 1
    st = state.deployments["chat"]
    assert st.restarts_total == 1 and st.failures_total == {"unknown": 1} and st.last_failure_class == "unknown"
    # Running and healthy afterwards: nothing more happens.
    run(rt, state, events, NOW + 5)
    assert rt.calls == ["start"] and len(events) == 2


def test_backoff_doubles_between_restarts(rt, events):
    policy = Policy(backoff_base_s=10, backoff_max_s=25, max_restarts=10)
    cid = rt.add("chat", status="exited", exit_code=1, logs=CRASH_LOG)
    state = AgentState()
    run(rt, state, events, NOW, policy)
    assert rt.calls.count("start") == 1
    rt.crash(cid, when="12:00:01")
    run(rt, state, events, NOW + 9, policy)  # back-off after the 1st restart: 10 s
    assert rt.calls.count("start") == 1 and state.deployments["chat"].next_restart_at == NOW + 10
    run(rt, state, events, NOW + 10, policy)
    assert rt.calls.count("start") == 2
    rt.crash(cid, when="12:00:02")
    run(rt, state, events, NOW + 29, policy)  # after the 2nd: 20 s
    assert rt.calls.count("start") == 2
    run(rt, state, events, NOW + 30, policy)
    assert rt.calls.count("start") == 3
    assert [backoff_s(n, policy) for n in range(5)] == [0, 10, 20, 25, 25]  # capped at backoff_max_s
    # One failure event per crash, never one per tick.
    assert events.kinds().count("failure") == 3


def test_budget_exhausted_then_window_slides(rt, events):
    policy = Policy(max_restarts=2, window_s=100, backoff_base_s=0, max_failed_restarts=10)
    cid = rt.add("chat", status="exited", exit_code=1, logs=CRASH_LOG)
    state = AgentState()
    for i in range(4):
        run(rt, state, events, NOW + i, policy)
        rt.crash(cid, when=f"12:00:0{i}")
    assert rt.calls.count("start") == 2
    assert events.kinds().count("restart_budget_exhausted") == 1
    st = state.deployments["chat"]
    assert st.blocked == "budget" and st.next_restart_at == NOW + 100
    assert 'gpufleet_agent_restart_blocked{deployment="chat",reason="budget"} 1.0' in render_metrics(state, NOW)
    run(rt, state, events, NOW + 100, policy)  # the first restart left the window
    assert rt.calls.count("start") == 3 and st.blocked is None


@pytest.mark.parametrize("cls", sorted(LOGS))
def test_classes_a_restart_cannot_fix_are_not_restarted(rt, events, cls):
    rt.add("chat", status="exited", exit_code=1, logs=LOGS[cls])
    state = AgentState()
    for i in range(3):
        run(rt, state, events, NOW + 1000 * i)
    assert rt.calls == []
    assert events.kinds() == ["failure", "not_restarted"]
    assert events[0]["failure_class"] == cls
    assert state.deployments["chat"].blocked == cls
    text = render_metrics(state, NOW)
    assert f'gpufleet_agent_last_failure_timestamp_seconds{{deployment="chat",failure_class="{cls}"}}' in text
    assert 'gpufleet_agent_restarts_total{deployment="chat"} 0.0' in text


def test_exit_code_2_is_bad_args_even_without_a_message(rt, events):
    rt.add("chat", status="exited", exit_code=2, logs=["usage: vllm serve ..."])
    run(rt, AgentState(), events, NOW)
    assert rt.calls == [] and events[0]["failure_class"] == "bad_args"


@pytest.mark.parametrize("code", [0, 143])
def test_clean_stop_is_left_alone(rt, events, code):
    rt.add("chat", status="exited", exit_code=code, logs=["Shutting down"])
    state = run(rt, AgentState(), events, NOW)
    assert rt.calls == [] and events == []
    assert state.deployments["chat"].up is False


def test_engine_restart_loop_of_unfixable_class_is_stopped(rt, events):
    cid = rt.add("chat", logs=LOGS["bad_args"], restart_count=0)
    state = run(rt, AgentState(), events, NOW)
    rt.c[cid]["restart_count"] = 4  # the engine's restart policy restarted it 4 times since
    run(rt, state, events, NOW + 15)
    assert events.kinds() == ["engine_restart", "stopped_restart_loop"]
    assert events[0]["count"] == 4 and rt.calls == ["stop"]
    st = state.deployments["chat"]
    assert st.engine_restarts_total == 4 and st.blocked == "bad_args"
    run(rt, state, events, NOW + 30)  # stopped (exit 0 now): never started again
    assert rt.calls == ["stop"] and len(events) == 2


def test_engine_restart_of_fixable_class_is_only_recorded(rt, events):
    cid = rt.add("chat", logs=CRASH_LOG)
    state = run(rt, AgentState(), events, NOW)
    rt.c[cid]["restart_count"] = 1
    run(rt, state, events, NOW + 15)
    assert events.kinds() == ["engine_restart"] and rt.calls == []
    assert 'gpufleet_agent_engine_restarts_total{deployment="chat"} 1.0' in render_metrics(state, NOW)


def test_new_container_gets_a_fresh_budget(rt, events):
    policy = Policy(max_restarts=1, backoff_base_s=0)
    cid = rt.add("chat", status="exited", exit_code=1, logs=CRASH_LOG)
    state = AgentState()
    run(rt, state, events, NOW, policy)
    rt.crash(cid)
    run(rt, state, events, NOW + 1, policy)
    assert rt.calls.count("start") == 1 and state.deployments["chat"].blocked == "budget"
    del rt.c[cid]  # redeployed by vllm_container: a new container id
    rt.add("chat", status="exited", exit_code=1, logs=CRASH_LOG)
    run(rt, state, events, NOW + 2, policy)
    assert rt.calls.count("start") == 2 and state.deployments["chat"].restarts_total == 2


# ------------------------------------------------------------------------------------------------ health
def test_health_failures_restart_after_n_consecutive(rt, events):
    policy = Policy(health_failures=3, backoff_base_s=0)
    rt.add("chat", logs=CRASH_LOG)
    state = AgentState()
    run(rt, state, events, NOW, policy, probe=lambda b, t: True)  # healthy once since its start
    run(rt, state, events, NOW + 1, policy, probe=down)
    run(rt, state, events, NOW + 2, policy, probe=down)
    assert rt.calls == [] and state.deployments["chat"].health_failures == 2
    run(rt, state, events, NOW + 3, policy, probe=down)
    assert rt.calls == ["stop", "start"]
    assert events.kinds() == ["failure", "restart"] and events[0]["reason"] == "health"
    assert state.deployments["chat"].health_failures == 0


def test_health_failure_resets_on_success(rt, events):
    rt.add("chat")
    state = AgentState()
    seq = iter([True, False, False, True, False, False, True])
    for i in range(7):
        run(rt, state, events, NOW + i, probe=lambda b, t: next(seq))
    assert rt.calls == [] and events == []


def test_starting_server_gets_its_grace(rt, events):
    policy = Policy(health_failures=2, start_grace_s=600, backoff_base_s=0)
    rt.add("chat", logs=["Loading safetensors checkpoint shards"])
    state = AgentState()
    for i in range(5):  # never healthy, within the grace: loading weights, not broken
        run(rt, state, events, NOW + i * 100, policy, probe=down)
    assert rt.calls == [] and events == []
    run(rt, state, events, NOW + 600, policy, probe=down)
    run(rt, state, events, NOW + 601, policy, probe=down)
    assert rt.calls == ["stop", "start"]


def test_probe_gets_the_endpoint_from_labels(rt, events):
    rt.add("chat", port=18642)
    seen = []
    run(rt, AgentState(), events, NOW, probe=lambda base, t: seen.append(base) or True)
    assert seen == ["http://127.0.0.1:18642"]


# ------------------------------------------------------------------------------------------------ expiry
def test_expired_is_stopped_not_removed_and_never_restarted(rt, events):
    cid = rt.add("chat", serve_until=iso(NOW - 1))
    state = run(rt, AgentState(), events, NOW)
    assert rt.calls == ["stop"] and cid in rt.c and rt.c[cid]["status"] == "exited"
    assert events.kinds() == ["expired"] and events[0]["stopped"] is True
    st = state.deployments["chat"]
    assert st.expired and not st.up
    run(rt, state, events, NOW + 60)
    assert rt.calls == ["stop"] and len(events) == 1
    text = render_metrics(state, NOW + 60)
    assert 'gpufleet_agent_expired{deployment="chat"} 1.0' in text
    assert re.search(r'gpufleet_agent_serve_until_seconds\{deployment="chat"\} -6\d\.0', text)
    # Started by hand past its serve-until: stopped again.
    rt.start(cid)
    run(rt, state, events, NOW + 120)
    assert rt.calls[-1] == "stop" and events.kinds() == ["expired", "expired"]


def test_expired_while_crashed_is_not_restarted(rt, events):
    rt.add("chat", status="exited", exit_code=1, logs=CRASH_LOG, serve_until=iso(NOW - 1))
    run(rt, AgentState(), events, NOW)
    assert rt.calls == [] and events.kinds() == ["expired"] and events[0]["stopped"] is False


def test_not_yet_expired_shows_seconds_left(rt, events):
    rt.add("chat", serve_until=iso(NOW + 3600))
    state = run(rt, AgentState(), events, NOW)
    assert rt.calls == []
    assert 'gpufleet_agent_serve_until_seconds{deployment="chat"} 3600.0' in render_metrics(state, NOW)


def test_paused_expired_is_unpaused_then_stopped(rt, events):
    rt.add("chat", status="paused", serve_until=iso(NOW - 1))
    run(rt, AgentState(), events, NOW)
    assert rt.calls == ["unpause", "stop"]


# ------------------------------------------------------------------------------------------------ masking, events
def test_secrets_never_in_events_nor_metrics(rt, events, tmp_path):
    rt.add("chat", status="exited", exit_code=1, logs=[*CRASH_LOG, f"MY_SECRET is {SECRET_ENV}"])
    rt.add("gated", status="exited", exit_code=1, logs=LOGS["hf_auth"])
    log = EventLog(str(tmp_path / "events.jsonl"))
    state = tick(rt, AgentState(), Policy(), lambda e: (events(e), log(e)), now=NOW, probe=lambda b, t: True)
    text = (tmp_path / "events.jsonl").read_text()
    assert SECRET not in text and SECRET_ENV not in text
    assert SECRET not in render_metrics(state, NOW) and SECRET_ENV not in render_metrics(state, NOW)
    tails = [line for e in events for line in e.get("tail", [])]
    assert any("api_key=********" in line for line in tails)
    assert any(f"MY_SECRET is {failures.MASK}" == line for line in tails)
    assert any(f"hub/{failures.MASK}/m" in line for line in tails)  # a secret_env value inside a URL
    for line in text.splitlines():
        rec = json.loads(line)
        assert rec["host"] and rec["ts"].endswith("Z")


def test_secret_values_come_from_the_spec_keys_and_known_names(rt):
    cid = rt.add("chat", env={"VLLM_API_KEY": "k1k1", "MY_SECRET": "s2s2", "OTHER": "o3o3"}, secret_keys=["MY_SECRET"])
    assert sorted(secret_values(rt.container(cid))) == ["k1k1", "s2s2"]


# ------------------------------------------------------------------------------------------------ metrics, state
def test_metrics_text(rt, events):
    rt.add("chat")
    rt.add("crashy", status="exited", exit_code=1, logs=CRASH_LOG)
    state = run(rt, AgentState(), events, NOW, probe=lambda b, t: b.endswith(":18000"))
    state.last_tick_duration_s = 0.25
    text = render_metrics(state, NOW)
    for sample in (
        'gpufleet_agent_deployment_up{deployment="chat"} 1.0',
        'gpufleet_agent_deployment_healthy{deployment="chat"} 1.0',
        'gpufleet_agent_restarts_total{deployment="crashy"} 1.0',
        'gpufleet_agent_failures_total{deployment="crashy",failure_class="unknown"} 1.0',
        "gpufleet_agent_tick_duration_seconds 0.25",
        "gpufleet_agent_ticks_total 1.0",
        "gpufleet_agent_tick_errors_total 0.0",
    ):
        assert sample in text, sample
    assert "# TYPE gpufleet_agent_restarts_total counter" in text


class Broken(AgentRuntime):
    def list_managed(self):
        raise GpufleetError("cannot reach dockerd at unix:///var/run/docker.sock")


def test_tick_errors_are_counted_and_the_tick_goes_on(rt, events):
    state = run(Broken(), AgentState(), events, NOW)
    assert state.tick_errors_total == 1 and events.kinds() == ["agent_error"]

    class OneFails(AgentRuntime):
        def logs(self, cid, tail=300):
            if "bad" in cid:
                raise RuntimeError("boom")
            return super().logs(cid, tail)

    rt2 = OneFails()
    rt2.add("bad", status="exited", exit_code=1)
    rt2.add("good", status="exited", exit_code=1, logs=CRASH_LOG)
    ev = Recorder()
    state = run(rt2, AgentState(), ev, NOW)
    assert state.tick_errors_total == 1 and "restart" in ev.kinds() and "agent_error" in ev.kinds()
    assert "gpufleet_agent_tick_errors_total 1.0" in render_metrics(state, NOW)


def test_names_filter_and_previous_containers_are_skipped(rt, events):
    rt.add("chat", status="exited", exit_code=1, logs=CRASH_LOG)
    rt.add("other", status="exited", exit_code=1, logs=CRASH_LOG)
    rt.add("chat-2", status="exited", exit_code=1, logs=CRASH_LOG, container=lb.previous_name("chat-2"))
    state = run(rt, AgentState(), events, NOW, names=["chat"])
    assert sorted(state.deployments) == ["chat"] and rt.calls == ["start"]


def test_removed_deployment_leaves_the_state(rt, events):
    cid = rt.add("chat")
    state = run(rt, AgentState(), events, NOW)
    del rt.c[cid]
    run(rt, state, events, NOW + 1)
    assert state.deployments == {}


def test_state_round_trip_keeps_the_budget(rt, events, tmp_path):
    policy = Policy(max_restarts=1, backoff_base_s=0)
    cid = rt.add("chat", status="exited", exit_code=1, logs=CRASH_LOG)
    path = str(tmp_path / "state.json")
    save_state(path, run(rt, AgentState(), events, NOW, policy))
    rt.crash(cid)
    state = load_state(path)  # a new process (--once): same budget, same counters
    run(rt, state, events, NOW + 1, policy)
    assert rt.calls.count("start") == 1 and state.deployments["chat"].restarts_total == 1
    assert load_state(str(tmp_path / "missing.json")).deployments == {}
    (tmp_path / "junk.json").write_text("{not json")
    assert load_state(str(tmp_path / "junk.json")).ticks_total == 0


def test_agent_once_writes_state_events_and_metrics(rt, tmp_path):
    rt.add("chat", status="exited", exit_code=1, logs=CRASH_LOG)
    args = build_parser().parse_args(["--once", "--state-dir", str(tmp_path), "--port", "0"])
    agent = Agent(args, rt=rt)
    assert agent.run() == 0
    assert json.loads((tmp_path / "state.json").read_text())["deployments"]["chat"]["restarts_total"] == 1
    kinds = [json.loads(line)["event"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert kinds == ["failure", "restart"]
    assert 'gpufleet_agent_restarts_total{deployment="chat"} 1.0' in (tmp_path / "metrics.prom").read_text()
    kept = (tmp_path / "vllm-logs" / "chat.log").read_text()  # the server's own log, a copy per run (logs.py)
    assert "--- run of container chat-id-1000" in kept and CRASH_LOG[-1] in kept and SECRET not in kept


# ------------------------------------------------------------------------------------------------ the end state (#17)
def crash_loop(rt, cid, state, events, policy, lifecycle_dir, ticks, t0=NOW):
    for i in range(ticks):
        tick(rt, state, policy, events, now=t0 + i, probe=lambda b, t: True, lifecycle_dir=lifecycle_dir)
        if rt.c[cid]["status"] == "running":
            rt.crash(cid, when=f"12:00:{i:02d}")


def test_crash_loop_ends_after_max_failed_restarts_with_its_cause(rt, events, tmp_path):
    policy = Policy(backoff_base_s=0, max_restarts=50)
    lc.update(str(tmp_path), "chat", lambda r: r.update(max_failed_restarts=2))
    cid = rt.add("chat", status="exited", exit_code=1, logs=CRASH_LOG)
    state = AgentState()
    crash_loop(rt, cid, state, events, policy, str(tmp_path), 6)
    assert rt.calls.count("start") == 2, "2 restarts allowed, the 3rd failure ends it"
    assert events.kinds()[-1] == "gave_up" and events.kinds().count("gave_up") == 1
    gave = events[-1]
    assert gave["reason"] == "crash_loop" and gave["failure_class"] == "unknown" and gave["failures_in_row"] == 3
    rec = lc.load(str(tmp_path), "chat")
    assert rec["failed"]["reason"] == "crash_loop" and rec["failed"]["container_id"] == cid
    assert rec["failed"]["config_hash"] == "h" and SECRET not in json.dumps(rec)
    st = state.deployments["chat"]
    assert st.final == "crash_loop" and rt.c[cid]["status"] == "exited"
    text = render_metrics(state, NOW)
    assert 'gpufleet_agent_deployment_failed{deployment="chat",failure_class="unknown",reason="crash_loop"} 1.0' in text
    # The converge clears the record (reset_failed, or a changed configuration): a fresh budget, restarted again.
    lc.update(str(tmp_path), "chat", lambda r: r.pop("failed"))
    rt.crash(cid, when="13:00:00")
    tick(rt, state, policy, events, now=NOW + 100, probe=lambda b, t: True, lifecycle_dir=str(tmp_path))
    assert st.final is None and rt.calls.count("start") == 3 and st.failures_in_row == 1


def test_engine_restart_loop_ends_and_is_stopped(rt, events, tmp_path):
    cid = rt.add("chat", logs=CRASH_LOG)
    state = AgentState()
    tick(rt, state, Policy(), events, now=NOW, probe=lambda b, t: True, lifecycle_dir=str(tmp_path))
    rt.c[cid]["restart_count"] = 2  # unless-stopped restarts it forever
    tick(rt, state, Policy(), events, now=NOW + 15, probe=lambda b, t: True, lifecycle_dir=str(tmp_path))
    assert rt.calls == [] and state.deployments["chat"].final is None
    rt.c[cid]["restart_count"] = 4
    tick(rt, state, Policy(), events, now=NOW + 30, probe=lambda b, t: True, lifecycle_dir=str(tmp_path))
    assert rt.calls == ["stop"] and events.kinds()[-1] == "gave_up" and events[-1]["stopped"] is True
    assert lc.load(str(tmp_path), "chat")["failed"]["reason"] == "crash_loop"
    tick(rt, state, Policy(), events, now=NOW + 45, probe=lambda b, t: True, lifecycle_dir=str(tmp_path))
    assert rt.calls == ["stop"], "never started again"


def test_a_stable_server_is_no_longer_in_a_loop(rt, events):
    policy = Policy(backoff_base_s=0, stable_after_s=600, max_failed_restarts=1)
    cid = rt.add("chat", status="exited", exit_code=1, logs=CRASH_LOG)
    state = AgentState()
    run(rt, state, events, NOW, policy)  # failure 1 -> restart
    run(rt, state, events, NOW + 1, policy)  # sees the new start
    run(rt, state, events, NOW + 700, policy)  # healthy for 700 s: stable
    assert state.deployments["chat"].failures_in_row == 0
    rt.crash(cid, when="13:00:00")
    run(rt, state, events, NOW + 800, policy)
    assert rt.calls.count("start") == 2 and "gave_up" not in events.kinds()


def test_hung_start_is_marked_after_start_timeout(rt, events, tmp_path):
    lc.update(str(tmp_path), "chat", lambda r: r.update(start_timeout_s=60, max_failed_restarts=0))
    cid = rt.add("chat", logs=["Loading safetensors checkpoint shards"])
    state = AgentState()
    for i in range(6):  # never answers; 59 s is still within its start_timeout
        tick(rt, state, Policy(), events, now=NOW + i * 11.8, probe=down, lifecycle_dir=str(tmp_path))
    assert rt.calls == [] and events == []
    tick(rt, state, Policy(), events, now=NOW + 60, probe=down, lifecycle_dir=str(tmp_path))
    assert events.kinds() == ["failure", "gave_up"] and events[0]["reason"] == "start_timeout"
    assert events[0]["waited_s"] == 60 and events[1]["reason"] == "start_timeout"
    assert rt.calls == ["stop"] and rt.c[cid]["status"] == "exited"
    assert lc.load(str(tmp_path), "chat")["failed"]["failure_class"] == "start_timeout"


def test_not_restartable_class_is_recorded_for_the_converge(rt, events, tmp_path):
    rt.add("chat", status="exited", exit_code=1, logs=LOGS["hf_auth"])
    tick(rt, AgentState(), Policy(), events, now=NOW, probe=down, lifecycle_dir=str(tmp_path))
    assert events.kinds() == ["failure", "not_restarted"]
    failed = lc.load(str(tmp_path), "chat")["failed"]
    assert failed["reason"] == "not_restartable" and failed["failure_class"] == "hf_auth"
    assert SECRET_ENV not in json.dumps(failed)


def test_deadline_from_the_lifecycle_record_moves_without_a_restart(rt, events, tmp_path):
    d = str(tmp_path)
    rt.add("chat")
    lc.update(
        d,
        "chat",
        lambda r: lc.converge(
            r, container_id="x", config_hash="h", serve_for_h=1.0, max_failed_restarts=3, start_timeout_s=1800, now=NOW
        ),
    )
    state = AgentState()
    tick(rt, state, Policy(), events, now=NOW + 3599, lifecycle_dir=d)
    assert rt.calls == [] and state.deployments["chat"].serve_until == iso(NOW + 3600)
    lc.update(d, "chat", lambda r: lc.extend(r, 2.0, NOW + 3599))  # extend.yml: 2 h more
    tick(rt, state, Policy(), events, now=NOW + 3601, lifecycle_dir=d)
    assert rt.calls == [] and state.deployments["chat"].serve_until == iso(NOW + 3 * 3600)
    tick(rt, state, Policy(), events, now=NOW + 3 * 3600, lifecycle_dir=d)
    assert rt.calls == ["stop"] and events.kinds() == ["expired"]
    assert lc.load(d, "chat")["expired"]["serve_until"] == iso(NOW + 3 * 3600)


def test_owner_label_in_the_metrics(rt, events):
    cid = rt.add("chat")
    rt.c[cid]["labels"][lb.OWNER] = "team-a"
    state = run(rt, AgentState(), events, NOW)
    assert 'gpufleet_agent_deployment_info{deployment="chat",owner="team-a"} 1.0' in render_metrics(state, NOW)
