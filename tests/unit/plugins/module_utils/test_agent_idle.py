"""Idle pause, wake on demand and the warm cache (plugins/module_utils/_agent/idle.py, _container/warm.py, the LRU choice
in _gpu/fit.py, the lifecycle record's pause fields, vllm_lifecycle's pause/resume/pin in _container/pausing.py, the
status rows), on a driven clock against an in-memory engine whose vLLM
servers (/metrics, /sleep, /wake_up, /is_sleeping) are dicts."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent import idle
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.loop import tick
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.metrics import render_metrics
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.policy import Policy
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.state import AgentState
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import pausing, warm
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import validate_deployments
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu import fit
from fixtures.fake_runtime import FakeRuntime

NOW = 1_800_000_000.0
METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}
# TYPE vllm:request_success counter
vllm:request_success_total{{finished_reason="stop",engine="0",model_name="m"}} {stop}
vllm:request_success_total{{finished_reason="length",engine="0",model_name="m"}} 2.0
"""


# ------------------------------------------------------------------------------------------------ the LRU choice
def H(name: str, last: float, pausable: bool = True, **held: float) -> fit.Holder:
    return fit.Holder(name, {k.lstrip("g"): v for k, v in held.items()}, last, pausable)


def test_least_recently_used_first_and_only_as_many_as_needed():
    holders = [H("new", 30, g0=400), H("old", 10, g0=400), H("mid", 20, g0=400)]
    assert fit.to_pause({"0": 500}, {"0": -200}, holders) == ["old", "mid"]
    assert fit.to_pause({"0": 500}, {"0": 200}, holders) == ["old"]
    assert fit.to_pause({"0": 500}, {"0": 500}, holders) == []


def test_pinned_never_chosen_and_none_when_not_enough():
    holders = [H("pinned", 1, pausable=False, g0=900), H("b", 5, g0=100)]
    assert fit.to_pause({"0": 500}, {"0": 0}, holders) is None  # b alone frees 100: nothing is chosen
    assert fit.to_pause({"0": 100}, {"0": 0}, holders) == ["b"]


def test_holders_of_other_gpus_are_left_alone():
    holders = [H("other", 1, g1=900), H("here", 9, g0=900)]
    assert fit.to_pause({"0": 900}, {"0": 100}, holders) == ["here"]
    assert fit.to_pause({"0": 500, "1": 500}, {"0": 100, "1": 100}, holders) == ["other", "here"]


def test_share_is_the_utilization_in_thousandths():
    assert fit.share_permille(0.4) + fit.share_permille(0.6) == fit.PERMILLE
    assert fit.share_permille(None) == 900


# ------------------------------------------------------------------------------------------------ pure decisions
def test_activity_from_vllm_metrics():
    act = idle.read_activity(METRICS.format(running=1.0, waiting=0.0, stop=3.0))
    assert act == idle.Activity(served=5.0, running=1.0, waiting=0.0)
    assert idle.read_activity("# TYPE x gauge\nx 1\n") is None
    assert idle.active(act, None) and idle.active(act, 4.0)
    assert not idle.active(idle.Activity(5.0, 0.0, 0.0), 5.0)
    assert idle.active(idle.Activity(5.0, 0.0, 1.0), 5.0) and idle.wake_due(idle.Activity(5.0, 0.0, 1.0))


def test_idle_due_on_a_driven_clock():
    assert not idle.idle_due(NOW, 600, NOW + 599)
    assert idle.idle_due(NOW, 600, NOW + 600)
    assert not idle.idle_due(None, 600, NOW + 10_000)  # no activity seen yet: the first look starts the clock
    assert not idle.idle_due(NOW, None, NOW + 10_000)  # no policy


def test_lifecycle_pause_fields(tmp_path):
    rec: dict[str, Any] = {}
    lc.converge(rec, container_id="c1", config_hash="h", serve_for_h=2.0, max_failed_restarts=3,
                start_timeout_s=60, now=NOW, idle_pause_after_s=600, pin=False)  # fmt: skip
    assert lc.pausable(rec) and not lc.is_pinned(rec)
    lc.pause(rec, "idle", NOW + 10)
    lc.pause(rec, "warm_cache", NOW + 20)  # the first pause's time and reason stay
    s = lc.summary(rec, NOW + 70)
    assert (s["lifecycle"], s["paused_for_s"], s["paused_reason"]) == ("paused", 60.0, "idle")
    assert s["serve_until_ts"] == NOW + 2 * 3600  # serve_for counts on while paused
    assert lc.summary(rec, NOW + 2 * 3600)["lifecycle"] == "expired"
    rec["pinned"] = True  # pin.yml's host-side flag wins over the deployment's pin
    assert lc.is_pinned(rec) and not lc.pausable(rec)
    rec["pinned"] = False
    rec["pin"] = True
    assert not lc.is_pinned(rec)
    lc.resume(rec)
    assert lc.summary(rec, NOW + 80)["lifecycle"] is None
    lc.pause(rec, "idle", NOW)
    lc.converge(rec, container_id="c2", config_hash="h2", serve_for_h=2.0, max_failed_restarts=3,
                start_timeout_s=60, now=NOW)  # fmt: skip
    assert lc.paused(rec) is None and not lc.pausable(rec)  # a new container starts awake; no policy given


def test_schema_idle_pause_after_and_pin():
    base = {"name": "chat", "model": "org/m", "engine_options": {"sleep_mode": True}}
    dep = validate_deployments([{**base, "idle_pause_after": "30m", "pin": True}])[0]
    assert (dep["idle_pause_after"], dep["pin"]) == (1800, True)
    with pytest.raises(GpufleetError) as e:
        validate_deployments([{**base, "engine_options": {}, "idle_pause_after": 60, "pin": "yes"}])
    assert "idle_pause_after: needs engine_options.sleep_mode" in str(e.value) and "pin: must be true" in str(e.value)


# ------------------------------------------------------------------------------------------------ the engine
class Host(FakeRuntime):
    """Managed containers on GPUs, each with a fake vLLM server: {sleeping, stop, running, waiting}."""

    def add(self, name: str, port: int, gpus: list[str] | None = None) -> str:
        labels = lb.build(name=name, port=port, host="127.0.0.1", config_hash="h", vllm_version="0.33.0",
                          model="/m", gpus=gpus or ["0"], manifest={}, spec={}, sleep_mode=True)  # fmt: skip
        cid = f"{name}-id".ljust(64, "0")
        self.c[cid] = {"name": lb.container_name(name), "status": "running", "labels": labels, "env": {}}
        self.servers[f"http://127.0.0.1:{port}"] = {"sleeping": False, "stop": 0.0, "running": 0.0, "waiting": 0.0}
        return cid

    def __init__(self) -> None:
        super().__init__()
        self.servers: dict[str, dict[str, Any]] = {}


@pytest.fixture
def host(monkeypatch) -> Host:
    h = Host()

    def http(url, method="GET", api_key=None, timeout=2.0, body=None, json_body=False):
        base, path = url.rsplit("/", 1)
        srv = h.servers[base]
        if path == "metrics":
            return 200, METRICS.format(running=srv["running"], waiting=srv["waiting"], stop=srv["stop"]).encode()
        raise AssertionError(url)

    def set_sleep(value):
        def act(base, *args):
            h.servers[base]["sleeping"] = value
            h.calls.append(f"{'sleep' if value else 'wake'} {base.rsplit(':', 1)[1]}")
            return True

        return act

    monkeypatch.setattr(rd, "http", http)
    monkeypatch.setattr(rd, "sleep", set_sleep(True))
    monkeypatch.setattr(rd, "wake_up", set_sleep(False))
    monkeypatch.setattr(rd, "is_sleeping", lambda base, key: h.servers[base]["sleeping"])
    return h


def converge(state_dir, name, cid, idle_after=600, pin=False, util=0.5, now=NOW):
    lc.update(str(state_dir), name, lambda r: lc.converge(
        r, container_id=cid, config_hash="h", serve_for_h=None, max_failed_restarts=3, start_timeout_s=60, now=now,
        idle_pause_after_s=idle_after, pin=pin, gpu_memory_utilization=util))  # fmt: skip


class Events(list):
    def __call__(self, event):
        self.append(event)


def agent(host, state, events, tmp_path, now):
    return tick(host, state, Policy(), events, now=now, probe=lambda base, t: True, lifecycle_dir=str(tmp_path))


def test_idle_pause_after_no_request_for_that_long_pinned_never(host, tmp_path):
    a, p = host.add("a", 18001), host.add("p", 18002)
    converge(tmp_path, "a", a)
    converge(tmp_path, "p", p, pin=True, util=0.4)
    state, events = AgentState(), Events()
    agent(host, state, events, tmp_path, NOW)  # first look: activity starts the clock
    host.servers["http://127.0.0.1:18001"]["stop"] = 1.0  # a served a request at NOW + 100
    agent(host, state, events, tmp_path, NOW + 100)
    agent(host, state, events, tmp_path, NOW + 699)
    assert events == [] and "sleep 18001" not in host.calls
    agent(host, state, events, tmp_path, NOW + 700)
    assert [(e["event"], e["deployment"], e["reason"]) for e in events] == [("paused", "a", "idle")]
    assert events[0]["idle_s"] == 600.0 and host.servers["http://127.0.0.1:18001"]["sleeping"]
    assert not host.servers["http://127.0.0.1:18002"]["sleeping"]  # pinned: never paused
    assert lc.summary(lc.load(str(tmp_path), "a"), NOW + 760)["paused_for_s"] == 60.0
    text = render_metrics(state, now=NOW + 760)
    assert 'gpufleet_agent_deployment_paused_seconds{deployment="a",reason="idle"} 60.0' in text
    assert 'gpufleet_agent_deployment_paused_seconds{deployment="p"' not in text
    agent(host, state, events, tmp_path, NOW + 10_000)
    assert len(events) == 1 and not host.servers["http://127.0.0.1:18002"]["sleeping"]


def test_a_waiting_request_wakes_it_and_the_lru_makes_room(host, tmp_path):
    old, new, pinned, sleeper = (host.add(n, 18010 + i) for i, n in enumerate(("old", "new", "pinned", "sleeper")))
    converge(tmp_path, "old", old, util=0.3)
    converge(tmp_path, "new", new, util=0.3)
    converge(tmp_path, "pinned", pinned, pin=True, util=0.3)
    converge(tmp_path, "sleeper", sleeper, util=0.4)
    for name, last in (("old", NOW - 50), ("new", NOW - 10), ("pinned", NOW - 100)):
        lc.update(str(tmp_path), name, lambda r, last=last: r.update(last_active=last, served_seen=2.0))
    lc.update(str(tmp_path), "sleeper", lambda r: lc.pause(r, "idle", NOW - 300))
    host.servers["http://127.0.0.1:18013"]["sleeping"] = True
    state, events = AgentState(), Events()
    agent(host, state, events, tmp_path, NOW)
    assert "wake 18013" not in host.calls  # nobody waits: it sleeps on
    host.servers["http://127.0.0.1:18013"]["waiting"] = 1.0  # a request arrived: vLLM holds it while asleep
    agent(host, state, events, tmp_path, NOW + 5)
    # 0.3 x 3 awake + 0.4 > 1: the least recently used unpinned one (old) goes to sleep first, pinned never.
    assert [c for c in host.calls if c.startswith(("sleep", "wake"))] == ["sleep 18010", "wake 18013"]
    woken = next(e for e in events if e["event"] == "woken")
    assert woken["paused_for_room"] == ["old"] and woken["slept_s"] == 305.0
    assert {"event": "paused", "deployment": "old", "reason": "warm_cache", "for": "sleeper"} in events
    assert lc.paused(lc.load(str(tmp_path), "sleeper")) is None
    assert lc.paused(lc.load(str(tmp_path), "old"))["reason"] == "warm_cache"


def test_wake_blocked_when_only_pinned_replicas_hold_the_gpu(host, tmp_path):
    p, s = host.add("p", 18020), host.add("s", 18021)
    converge(tmp_path, "p", p, pin=True, util=0.9)
    converge(tmp_path, "s", s, util=0.5)
    lc.update(str(tmp_path), "s", lambda r: lc.pause(r, "manual", NOW))
    host.servers["http://127.0.0.1:18021"].update(sleeping=True, waiting=1.0)
    state, events = AgentState(), Events()
    agent(host, state, events, tmp_path, NOW)
    agent(host, state, events, tmp_path, NOW + 5)
    assert [e["event"] for e in events] == ["wake_blocked"]  # once, not every tick
    assert "p (kept)" in events[0]["hint"] and host.servers["http://127.0.0.1:18021"]["sleeping"]


def test_make_room_in_check_mode_touches_nothing(host, tmp_path):
    a = host.add("a", 18030)
    converge(tmp_path, "a", a, util=0.6)
    assert warm.make_room(host, str(tmp_path), "b", ["0"], 0.6, NOW, check_mode=True) == ["a"]
    assert lc.paused(lc.load(str(tmp_path), "a")) is None and host.calls == []
    assert warm.make_room(host, str(tmp_path), "b", ["1"], 0.6, NOW) == []  # another GPU: room already
    assert warm.make_room(host, str(tmp_path), "b", ["0"], 0.6, NOW) == ["a"]
    assert host.calls == ["sleep 18030"] and lc.paused(lc.load(str(tmp_path), "a"))["reason"] == "warm_cache"


# ------------------------------------------------------------------------------------------------ vllm_lifecycle
def test_pause_resume_pin_round_trip(host, tmp_path):
    a, b = host.add("chat-0", 18040), host.add("other", 18041)
    converge(tmp_path, "chat-0", a, util=0.6)
    converge(tmp_path, "other", b, util=0.6, idle_after=None)
    params = {"deployment": "chat", "state_dir": str(tmp_path)}
    assert pausing.act_host({**params, "action": "pause"}, host, True, NOW)["changed"]  # check mode: nothing done
    assert host.calls == [] and lc.paused(lc.load(str(tmp_path), "chat-0")) is None
    out = pausing.act_host({**params, "action": "pause"}, host, False, NOW)
    assert out["changed"] and out["replicas"][0]["name"] == "chat-0" and host.calls == ["sleep 18040"]
    assert lc.paused(lc.load(str(tmp_path), "chat-0")) == {"at": NOW, "reason": "manual"}
    assert not pausing.act_host({**params, "action": "pause"}, host, False, NOW)["changed"]  # idempotent
    # other (0.6, no idle policy: never put to sleep) holds GPU 0: resume cannot make room and says so.
    with pytest.raises(GpufleetError, match=r"other \(kept\)"):
        pausing.act_host({**params, "action": "resume"}, host, False, NOW + 60)
    host.servers["http://127.0.0.1:18041"]["sleeping"] = True
    lc.update(str(tmp_path), "other", lambda r: lc.pause(r, "manual", NOW))
    out = pausing.act_host({**params, "action": "resume"}, host, False, NOW + 60)
    assert out["changed"] and host.calls[-1] == "wake 18040" and lc.paused(lc.load(str(tmp_path), "chat-0")) is None
    assert not pausing.act_host({**params, "action": "resume"}, host, False, NOW + 61)["changed"]
    assert pausing.act_host({**params, "action": "pin"}, host, False, NOW)["changed"]
    assert lc.is_pinned(lc.load(str(tmp_path), "chat-0"))
    assert not pausing.act_host({**params, "action": "pin"}, host, False, NOW)["changed"]
    pausing.act_host({**params, "action": "unpin"}, host, False, NOW)
    assert lc.pausable(lc.load(str(tmp_path), "chat-0"))


def test_status_shows_paused_with_how_long_and_why():
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.status import status_report, status_table

    d = {"name": "chat-0", "state": "paused", "phase": "paused", "lifecycle": "paused", "paused_for_s": 750.0,
         "paused_reason": "idle", "pinned": False, "gpus": ["0"], "model": "/m"}  # fmt: skip
    report = status_report({"gpu-a": [d]})
    row = report["rows"][0]
    assert (row["state"], row["paused_for_s"], row["paused_reason"]) == ("paused", 750.0, "idle")
    assert "paused 12m (idle)" in "\n".join(status_table(report))


# ------------------------------------------------------------------------------------------------ the planner
def test_placement_counts_pausable_replicas_as_room_and_never_pinned_ones():
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.placement import plan

    def gpu(used: int) -> dict:
        return {"index": 0, "uuid": "GPU-0", "memory_total_mib": 80000, "memory_free_mib": 80000 - used,
                "memory_used_mib": used}  # fmt: skip

    sleepy = {"engine_options": {"sleep_mode": True}, "gpu_sharing": True, "idle_pause_after": 60}
    chat = {"name": "chat", "model": "org/chat", "gpu_memory_utilization": 0.5, **sleepy}
    new = {"name": "new", "model": "org/new", "gpu_memory_utilization": 0.6, "gpu_sharing": True, "port": 8100}
    hosts = {"gpu-a": {"reachable": True, "labels": {}, "gpus": [gpu(40000)]}}
    existing = [{"deployment": "chat", "replica": 0, "host": "gpu-a", "gpus": [0], "port": 8000}]
    result = plan(hosts, [chat, new], existing)
    assert not result["errors"] and {(a["name"], a["host"], tuple(a["gpus"])) for a in result["assignments"]} == {
        ("chat-0", "gpu-a", (0,)),
        ("new-0", "gpu-a", (0,)),
    }
    assert any("new-0: placed on gpu-a GPU 0 by the warm cache" in w for w in result["warnings"])
    # Planned again once chat sleeps (the GPU holds new's 0.6 + what chat keeps asleep): both stay where they are.
    hosts["gpu-a"]["gpus"] = [gpu(49500)]
    existing.append({"deployment": "new", "replica": 0, "host": "gpu-a", "gpus": [0], "port": 8100})
    again = plan(hosts, [chat, new], existing)
    assert not again["errors"] and not again["removals"], again
    assert {a["name"]: a["action"] for a in again["assignments"]} == {"chat-0": "keep", "new-0": "keep"}
    # A pinned (or unpausable) replica is never counted as room: the new one does not fit.
    pinned = plan({"gpu-a": {"reachable": True, "labels": {}, "gpus": [gpu(40000)]}}, [{**chat, "pin": True}, new],
                  existing[:1])  # fmt: skip
    assert [e["deployment"] for e in pinned["errors"]] == ["new"]


# ------------------------------------------------------------------------------------------------ vllm_container
def test_a_start_makes_room_check_mode_agrees_and_a_converge_leaves_it_asleep(fake_runtime, tmp_path, monkeypatch):
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container import deployment as ct
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cs

    asleep: dict[str, bool] = {}
    monkeypatch.setattr(rd, "is_sleeping", lambda base, key: asleep.get(base, False))
    monkeypatch.setattr(rd, "sleep", lambda base, key, level: asleep.update({base: True}) or True)
    monkeypatch.setattr(rd, "wake_up", lambda base, key: asleep.update({base: False}) or True)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")

    def run(name: str, port: int, check: bool = False, **kw: Any) -> dict[str, Any]:
        p = {o.name: o.default for o in cs.OPTIONS}
        p.update(name=name, image="img", model=str(tmp_path / "model"), port=port, host="127.0.0.1", gpus=["0"],
                 manifest_dir=str(tmp_path / "manifests"), sleep_mode=True, gpu_memory_utilization=0.6, **kw)  # fmt: skip
        gpu = {"index": 0, "uuid": "GPU-0", "name": "H100", "memory_total_mib": 80000, "memory_free_mib": 80000}
        return ct.Deployment(p, fake_runtime, check, gpu_facts_fn=lambda: ([gpu], None)).run()

    assert run("a", 18100, idle_pause_after=60)["paused_for_room"] == []
    pred = run("b", 18101, check=True)
    assert pred["paused_for_room"] == ["a"] and "sleep gpufleet-a" in pred["actions"][0] and not asleep
    real = run("b", 18101)
    assert real["paused_for_room"] == ["a"] and real["actions"][: len(pred["actions"])] == pred["actions"]
    assert asleep == {"http://127.0.0.1:18100": True}
    assert lc.paused(lc.load(str(tmp_path), "a"))["reason"] == "warm_cache"
    again = run("a", 18100, idle_pause_after=60)  # the converge: paused on purpose is not a drift
    assert not again["changed"] and again["state"] == "paused" and asleep["http://127.0.0.1:18100"]
