"""The vllm_container state machine against an in-memory engine: plans, check mode, rollback, pre-checks."""

from __future__ import annotations

import socket

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import deployment as ct
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import info
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import prechecks as pc
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cs
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

_real_port_in_use = pc.port_in_use


@pytest.fixture
def rt(fake_runtime, tmp_path):
    """The in-memory engine of tests/fixtures/fake_runtime.py, with a model directory."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    fake_runtime.tmp = tmp_path
    return fake_runtime


def P(rt, **kw):
    p = {o.name: o.default for o in cs.OPTIONS}
    p.update(
        name="t", image="img", model=str(rt.tmp / "model"), port=18000, host="127.0.0.1",
        manifest_dir=str(rt.tmp / "manifests"), hf_cache_dir=str(rt.tmp / "hf"), compile_cache_dir=str(rt.tmp / "cc"),
    )  # fmt: skip
    p.update(kw)
    return p


def facts(*gpus):
    return lambda: (list(gpus), None)


def GPU(i, total=80000, free=80000):
    return {"index": i, "uuid": f"GPU-{i}", "name": "H100", "memory_total_mib": total, "memory_free_mib": free}


def run(rt, check=False, gf=None, **kw):
    return ct.Deployment(P(rt, **kw), rt, check, gpu_facts_fn=gf or facts(GPU(0), GPU(1))).run()


def test_create_noop_change_and_check_mode_agree(rt):
    pred = run(rt, check=True, gpus=["0"])
    assert pred["changed"] and rt.calls == []
    real = run(rt, gpus=["0"])
    assert real["changed"] and real["actions"][: len(pred["actions"])] == pred["actions"]
    assert run(rt, check=True, gpus=["0"])["changed"] is False
    calls = list(rt.calls)
    noop = run(rt, gpus=["0"])
    assert noop["changed"] is False and rt.calls == calls
    pred = run(rt, check=True, gpus=["0"], env={"A": "1"})
    assert pred["changed"] and rt.calls == calls
    real = run(rt, gpus=["0"], env={"A": "1"})
    assert real["changed"] and real["changed_keys"] == ["env"] and real["changed_env_keys"] == ["A"]
    # Removing the env var recreates too.
    assert run(rt, gpus=["0"])["changed"]
    assert [c["name"] for c in rt.c.values()] == ["gpufleet-t"]


def test_gpus_all_is_every_gpu_of_the_host_by_index_and_tp_their_count(rt):
    two = facts(GPU(0), GPU(1))
    first = run(rt, gf=two, gpus=["all"])
    assert first["changed"] and first["spec"]["gpus"] == ["0", "1"]
    assert first["argv"][first["argv"].index("--tensor-parallel-size") + 1] == "2"
    # The same GPUs named one by one (what the fleet passes) are the same container: no change.
    assert run(rt, gpus=["0", "1"], tensor_parallel_size=2)["changed"] is False
    assert run(rt, gf=two, gpus=["all"])["changed"] is False
    # A third GPU on the host changes the hash (a recreate on all three, TP 3); an explicit TP must match the count.
    three = run(rt, check=True, gf=facts(GPU(0), GPU(1), GPU(2)), gpus=["all"])
    assert three["changed"] and three["spec"]["gpus"] == ["0", "1", "2"]
    assert three["argv"][three["argv"].index("--tensor-parallel-size") + 1] == "3"
    with pytest.raises(GpufleetError) as e:
        run(rt, check=True, gf=facts(GPU(0), GPU(1), GPU(2)), gpus=["all"], tensor_parallel_size=2)
    assert e.value.details["precheck"] == ["tp_mismatch"]
    warned: list[str] = []
    no_facts = ct.Deployment(P(rt, gpus=["all"]), rt, True, gpu_facts_fn=lambda: (None, "no NVML"), warn=warned.append)
    assert no_facts.run()["spec"]["gpus"] == ["all"] and any("gpus: all kept" in w for w in warned)


def test_failed_replacement_rolls_back(rt):
    run(rt, gpus=["0"])
    old = rt._find("gpufleet-t")
    with pytest.raises(GpufleetError) as e:
        run(rt, gpus=["0"], env={"FAIL": "1"})
    d = e.value.details
    assert d["failure_class"] == "gpu_oom" and d["rolled_back"] is True and d["rollback_ready"] is True
    assert list(rt.c) == [old] and rt.c[old]["name"] == "gpufleet-t" and rt.c[old]["status"] == "running"


def test_smoke_failure_rolls_back_and_smoke_test_false_skips_it(rt):
    """Issue #15: a replacement that serves /v1/models but fails its one real request is a start failure
    (smoke_failed), rolled back like any other; smoke_test: false asks for no request."""
    run(rt, gpus=["0"], model_revision="r1")
    old = rt._find("gpufleet-t")
    assert rt.smoke_kinds == [rd.Smoke("completions")]  # auto: from the argv, may fall back to chat
    with pytest.raises(GpufleetError) as e:
        run(rt, gpus=["0"], model_revision="r2", env={"SMOKE_FAIL": "1"})
    d = e.value.details
    assert d["failure_class"] == "smoke_failed" and d["rolled_back"] is True and d["rollback_ready"] is True
    assert list(rt.c) == [old] and rt.c[old]["name"] == "gpufleet-t" and rt.c[old]["status"] == "running"
    assert rt.smoke_kinds[-1] is None  # the rollback waits for the old server without a smoke request
    res = run(rt, gpus=["0"], model_revision="r2", env={"SMOKE_FAIL": "1"}, smoke_test=False)
    assert res["changed"] and res["ready"] and rt.smoke_kinds[-1] is None


def test_smoke_request_chooses_the_endpoint_and_prompt_and_restarts_nothing(rt):
    """smoke_request: that endpoint only (no fall-back) with that prompt; changing it is not a change of the
    container (not hashed, like smoke_test)."""
    chat = {"endpoint": "chat", "prompt": "Bonjour"}
    first = run(rt, gpus=["0"], smoke_request=chat)
    assert first["changed"] and rt.smoke_kinds == [rd.Smoke("chat", "Bonjour", fallback=False)]
    again = run(rt, gpus=["0"], smoke_request={"endpoint": "completions", "prompt": "Hi"})
    assert not again["changed"] and again["config_hash"] == first["config_hash"]
    run(rt, gpus=["0"], model_revision="r2", smoke_request={"endpoint": "auto", "prompt": "Hi"})
    assert rt.smoke_kinds[-1] == rd.Smoke("completions", "Hi", fallback=True)


def test_model_revision_is_part_of_the_hash(rt):
    first = run(rt, gpus=["0"])
    assert "model_revision" not in first["spec"]  # not given: hashes of older containers stay as they were
    second = run(rt, gpus=["0"], model_revision="r1")
    assert second["changed"] and "model_revision" in second["changed_keys"]
    assert second["diff"]["after"]["model_revision"] == "r1"
    assert run(rt, gpus=["0"], model_revision="r1", smoke_test=False)["changed"] is False  # smoke_test: no recreate
    check = run(rt, gpus=["0"], model_revision="r2", check=True)
    assert check["changed"] and check["diff"]["before"]["model_revision"] == "r1"


def test_first_start_failure_keeps_stopped_container(rt):
    with pytest.raises(GpufleetError) as e:
        run(rt, gpus=["0"], env={"FAIL": "1"})
    assert e.value.details["rolled_back"] is False
    assert [c["status"] for c in rt.c.values()] == ["exited"]


@pytest.mark.parametrize(
    "kw,gf,check",
    [
        ({"gpus": ["0"], "tensor_parallel_size": 2}, None, "tp_mismatch"),
        ({"gpus": ["7"]}, None, "gpu_not_found"),
        ({"gpus": ["0"], "gpu_memory_utilization": 0.9}, facts(GPU(0, free=40000)), "gpu_memory"),
        ({"gpus": ["0"], "model": "/nonexistent/model"}, None, "model_missing"),
        (
            {"gpus": ["1"]},
            facts(GPU(0), {**GPU(1), "healthy": False, "health_issues": ["GPU is lost"]}),
            "gpu_unhealthy",
        ),
    ],
)
def test_prechecks_fail_before_touching_anything(rt, kw, gf, check):
    with pytest.raises(GpufleetError) as e:
        run(rt, gf=gf, **kw)
    assert check in e.value.details["precheck"] and rt.calls == []


def test_unhealthy_gpu_is_refused_with_its_reason(rt):
    hot = {**GPU(0), "healthy": False, "health_issues": ["temperature 95 C is above max_temperature_c (85 C)"]}
    with pytest.raises(GpufleetError) as e:
        run(rt, gf=facts(hot, GPU(1)), gpus=["GPU-0"])
    assert e.value.details["precheck"] == ["gpu_unhealthy"] and rt.calls == []
    assert "GPU 0 (GPU-0) is unhealthy: temperature 95 C is above max_temperature_c (85 C)" in str(e.value)
    assert run(rt, gf=facts(hot, GPU(1)), gpus=["1"])["changed"]  # its healthy neighbour is fine


def test_port_conflict_precheck(rt, monkeypatch):
    monkeypatch.setattr(pc, "port_in_use", _real_port_in_use)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        with pytest.raises(GpufleetError) as e:
            run(rt, gpus=["0"], port=s.getsockname()[1])
        assert e.value.details["failure_class"] == "port_conflict" and rt.calls == []
    finally:
        s.close()


def test_replacement_ignores_its_own_port_and_memory(rt):
    run(rt, gpus=["0"], gpu_memory_utilization=0.8)
    # The old container holds 0.8 of GPU 0: it counts as free for its replacement.
    r = run(rt, gf=facts(GPU(0, free=16000)), gpus=["0"], gpu_memory_utilization=0.8, max_model_len=100)
    assert r["changed"] and r["replaced"]


def test_absent_and_stopped(rt):
    run(rt, gpus=["0"])
    r = run(rt, state="stopped", gpus=["0"])
    assert r["changed"] and r["actions"] == ["stop gpufleet-t"]
    assert not run(rt, state="stopped", gpus=["0"])["changed"]
    assert run(rt, state="absent", check=True)["changed"] and rt.c
    r = run(rt, state="absent")
    assert r["changed"] and not rt.c and not (rt.tmp / "manifests" / "t.json").exists()
    assert not run(rt, state="absent")["changed"]


def test_leftover_previous_is_restored(rt):
    run(rt, gpus=["0"])
    rt.rename("gpufleet-t", "gpufleet-t-previous")  # as if a run died mid-replacement
    r = run(rt, gpus=["0"])
    assert "rename leftover gpufleet-t-previous back to gpufleet-t" in r["actions"]
    assert [c["name"] for c in rt.c.values()] == ["gpufleet-t"]


def test_manifest_written_and_secret_free(rt):
    r = run(rt, gpus=["0"], api_key="canary-k", secret_env={"S": "canary-s"})
    text = (rt.tmp / "manifests" / "t.json").read_text()
    assert "canary" not in text and '"VLLM_API_KEY"' in text and r["manifest"]["env_keys"] == ["S", "VLLM_API_KEY"]
    labels = next(iter(rt.c.values()))["labels"]
    assert "canary" not in str(labels)


def test_engine_pause_is_idempotent_and_check_mode_agrees(rt, monkeypatch):
    def pause(cid):
        rt.c[rt._find(cid)]["status"] = "paused"

    def unpause(cid):
        rt.c[rt._find(cid)]["status"] = "running"

    monkeypatch.setattr(rt, "pause", pause, raising=False)
    monkeypatch.setattr(rt, "unpause", unpause, raising=False)
    run(rt, gpus=["0"])
    assert run(rt, check=True, gpus=["0"], state="paused")["changed"]
    assert run(rt, gpus=["0"], state="paused")["changed"]
    assert run(rt, check=True, gpus=["0"], state="paused")["changed"] is False
    assert run(rt, gpus=["0"], state="paused")["changed"] is False
    assert run(rt, check=True, gpus=["0"])["changed"] and run(rt, gpus=["0"])["changed"]
    assert next(iter(rt.c.values()))["status"] == "running"


def test_sleep_mode_check_mode_agrees(rt, monkeypatch):
    asleep = {"v": False}
    monkeypatch.setattr(rd, "is_sleeping", lambda base, key: asleep["v"])
    monkeypatch.setattr(rd, "sleep", lambda base, key, level: asleep.update(v=True) or True)
    monkeypatch.setattr(rd, "wake_up", lambda base, key: asleep.update(v=False) or True)
    run(rt, gpus=["0"], sleep_mode=True)
    assert run(rt, check=True, gpus=["0"], sleep_mode=True, state="paused")["changed"] and not asleep["v"]
    assert run(rt, gpus=["0"], sleep_mode=True, state="paused")["changed"] and asleep["v"]
    assert run(rt, check=True, gpus=["0"], sleep_mode=True, state="paused")["changed"] is False
    assert run(rt, check=True, gpus=["0"], sleep_mode=True)["changed"] and asleep["v"]
    assert run(rt, gpus=["0"], sleep_mode=True)["changed"] and not asleep["v"]
    assert run(rt, gpus=["0"], sleep_mode=True)["changed"] is False


def by_name(rt, state, check=False, **kw):
    """vllm_container with only name and state (no image, no model): acts on the existing container by name."""
    return run(rt, check=check, state=state, image=None, model=None, **kw)


def test_stopped_by_name_without_spec_options(rt, monkeypatch):
    run(rt, gpus=["0"], port=18001)
    cid = rt._find("gpufleet-t")
    calls = list(rt.calls)
    # Check mode predicts the stop and touches nothing; the diff shows the state before and after.
    pred = by_name(rt, "stopped", check=True)
    assert pred["changed"] and pred["actions"] == ["stop gpufleet-t"] and rt.calls == calls
    assert pred["diff"] == {"before": {"state": "started"}, "after": {"state": "stopped"}}
    real = by_name(rt, "stopped")
    assert real["actions"] == pred["actions"] and rt.calls == [*calls, "stop"]
    # Same container (not recreated, whatever the module's defaults say), its endpoint from its labels.
    assert rt._find("gpufleet-t") == cid and rt.c[cid]["status"] == "exited"
    assert real["endpoint"].endswith(":18001") and real["container_id"] == cid and real["state"] == "stopped"
    again = by_name(rt, "stopped")
    assert again["changed"] is False and again["diff"]["before"] == again["diff"]["after"] == {"state": "stopped"}
    assert by_name(rt, "stopped", check=True)["changed"] is False
    # Restarted by name: stop if running, then start, on the same container.
    r = by_name(rt, "restarted")
    assert r["changed"] and rt.c[cid]["status"] == "running" and rt._find("gpufleet-t") == cid
    # Paused by name (engine freeze: the container was created without sleep mode).
    monkeypatch.setattr(rt, "pause", lambda c: rt.c[rt._find(c)].update(status="paused"), raising=False)
    monkeypatch.setattr(rt, "unpause", lambda c: rt.c[rt._find(c)].update(status="running"), raising=False)
    assert by_name(rt, "paused", check=True)["changed"] and rt.c[cid]["status"] == "running"
    assert by_name(rt, "paused")["changed"] and rt.c[cid]["status"] == "paused"
    assert by_name(rt, "paused")["changed"] is False
    assert by_name(rt, "stopped")["changed"] and rt.c[cid]["status"] == "exited"
    # The declared configuration converges again afterwards, without a recreate (same hash).
    r = run(rt, gpus=["0"], port=18001)
    assert r["actions"] == ["start gpufleet-t"] and rt._find("gpufleet-t") == cid


def test_a_stop_on_request_reads_stopped_whatever_the_exit_code(rt):
    """status (vllm_deployment_info) reads a container vllm_container stopped on request as stopped, not failed, even
    with a non-zero exit (a Ray driver exits 15 on SIGTERM); an exit of its own, or after a later start, is a
    failure."""
    run(rt, gpus=["0"], port=18001)
    cid = rt._find("gpufleet-t")
    assert by_name(rt, "stopped", check=True)["changed"] and "stopped" not in lc.load(str(rt.tmp), "t")
    by_name(rt, "stopped")
    rec = lc.load(str(rt.tmp), "t")
    assert rec["stopped"]["container_id"] == cid
    rt.c[cid]["exit"] = 15
    row = info.describe(rt, rt.container("gpufleet-t"), probe=False, classify=True, state_dir=str(rt.tmp))
    assert (row["state"], row["phase"], row["last_failure_class"]) == ("stopped", "stopped", None)
    # Without the record (its own exit): failed, classified.
    lc.remove(str(rt.tmp), "t")
    row = info.describe(rt, rt.container("gpufleet-t"), probe=False, classify=True, state_dir=str(rt.tmp))
    assert row["phase"] == "failed"
    # Started again after the request (then it exited by itself): the request no longer explains the exit.
    assert lc.stopped_by_request(rec, cid, started_at=None)
    assert lc.stopped_by_request(rec, cid, started_at=rec["stopped"]["at"] - 5)
    assert not lc.stopped_by_request(rec, cid, started_at=rec["stopped"]["at"] + 5)
    assert not lc.stopped_by_request(rec, "another-container", started_at=None)


def test_by_name_needs_an_existing_managed_container(rt):
    with pytest.raises(GpufleetError, match="does not exist"):
        by_name(rt, "stopped")
    rt.c["x"] = {"name": "gpufleet-t", "status": "running", "labels": {"other": "1"}, "env": {}}
    with pytest.raises(GpufleetError, match="not managed by gpufleet"):
        by_name(rt, "stopped")
    assert rt.calls == [] and rt.c["x"]["status"] == "running"


@pytest.mark.parametrize("kw", [{"image": None}, {"model": None}])
def test_image_and_model_go_together(rt, kw):
    with pytest.raises(GpufleetError, match="give image and model together"):
        run(rt, state="stopped", **kw)
    with pytest.raises(GpufleetError, match="required for state=started"):
        run(rt, image=None, model=None)
    assert rt.calls == []


def test_serve_for_bare_number_is_hours_and_infinite_has_no_deadline(rt):
    import time

    from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc

    r = run(rt, gpus=["0"], serve_for="12")
    rec = lc.load(str(rt.tmp), "t")
    assert lb.parse(next(iter(rt.c.values()))["labels"])["serve_until"] is None, "the record, not a label"
    assert rec["serve_for_h"] == 12.0 and rec["container_id"] == r["container_id"]
    assert 12 * 3600 - 120 < lc.deadline(rec) - time.time() <= 12 * 3600 and r["serve_until"]
    run(rt, state="absent")
    run(rt, gpus=["0"], serve_for="infinite")
    assert lc.deadline(lc.load(str(rt.tmp), "t")) is None
    with pytest.raises(GpufleetError, match="is not a duration"):
        run(rt, gpus=["0"], serve_for="30s", env={"A": "1"})
    assert len(rt.c) == 1 and rt.calls[-1] == "start"  # refused before anything was touched


def test_serve_for_change_moves_the_deadline_without_a_restart_and_expired_is_reported(rt):
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc

    first = run(rt, gpus=["0"], serve_for="2h")
    cid = first["container_id"]
    lc.update(str(rt.tmp), "t", lambda r: r.update(since=r["since"] - 3 * 3600))  # deployed 3 h ago
    n = len(rt.calls)
    pred = run(rt, check=True, gpus=["0"], serve_for="2h")
    assert pred["lifecycle"] == "expired" and pred["state"] == "expired" and not pred["changed"]
    real = run(rt, gpus=["0"], serve_for="2h")
    assert real["lifecycle"] == "expired" and not real["changed"] and rt.calls[n:] == []
    longer = run(rt, gpus=["0"], serve_for="6h")  # extended in the inventory: same container, serving
    assert longer["container_id"] == cid and longer["lifecycle"] is None and "create" not in rt.calls[n:]
    assert lc.deadline(lc.load(str(rt.tmp), "t")) - time_now() == pytest.approx(3 * 3600, abs=120)


def time_now():
    import time

    return time.time()


def test_failed_for_good_is_reported_until_reset_or_a_changed_configuration(rt):
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc

    first = run(rt, gpus=["0"])
    rec = lc.load(str(rt.tmp), "t")
    failed = {"reason": "crash_loop", "failure_class": "gpu_oom", "hint": "lower it", "config_hash": rec["config_hash"]}
    lc.update(str(rt.tmp), "t", lambda r: r.update(failed=dict(failed, failures_in_row=4)))
    rt.c[first["container_id"]]["status"] = "exited"
    n = len(rt.calls)
    for check in (True, False):
        with pytest.raises(GpufleetError, match=r"crash_loop \(gpu_oom\) after 4 failures") as e:
            run(rt, check=check, gpus=["0"])
        assert e.value.details["lifecycle"] == "failed" and e.value.details["failure_class"] == "gpu_oom"
    assert rt.calls[n:] == [], "not started again"
    again = run(rt, gpus=["0"], reset_failed=True)
    assert again["container_id"] == first["container_id"] and rt.calls[n:] == ["start"]
    assert "failed" not in lc.load(str(rt.tmp), "t")
    lc.update(str(rt.tmp), "t", lambda r: r.update(failed=failed))
    changed = run(rt, gpus=["0"], env={"A": "1"})  # a changed configuration: a new container, a fresh start
    assert changed["container_id"] != first["container_id"] and "failed" not in lc.load(str(rt.tmp), "t")


def test_bad_args_refused_before_anything_and_validate_args_false_skips(rt):
    """The whole argv is checked against the image's vLLM (0.10.2 here) before the host is touched, in check mode
    too; validate_args: false leaves it to vLLM."""
    for check in (True, False):
        with pytest.raises(GpufleetError) as e:
            run(rt, check=check, gpus=["0"], extra_args=["--no-such-flag"])
        d = e.value.details
        assert str(e.value).startswith("bad_args: ") and "--no-such-flag is not a flag of vLLM 0.10.2" in str(e.value)
        assert d["failure_class"] == "bad_args" and d["table_version"] == "0.10.2" and rt.calls == []
    r = run(rt, gpus=["0"], extra_args=["--no-such-flag"], validate_args=False)
    assert r["changed"] and rt.calls == ["create", "start"] and "--no-such-flag" in r["argv"]


def test_typed_option_the_version_lacks_names_version_and_replacement(rt):
    """swap_space exists in the image's 0.10.2 but not in 0.33.0: a clear bad_args error, nothing touched."""
    assert "--swap-space" in run(rt, check=True, gpus=["0"], swap_space=4)["argv"]
    for check in (True, False):
        with pytest.raises(GpufleetError) as e:
            run(rt, check=check, gpus=["0"], swap_space=4, vllm_version="0.33.0")
        msg = str(e.value)
        assert msg.startswith("bad_args: option swap_space (--swap-space) does not exist in vLLM 0.33.0"), msg
        assert "--gpu-memory-utilization" in msg and e.value.details["failure_class"] == "bad_args"
        assert rt.calls == []


def test_argv_check_sees_the_container_env_but_no_secret(rt, monkeypatch):
    """--grpc-port (0.33.0) needs VLLM_USE_RUST_FRONTEND=1 in the container env; the check gets VLLM_* variables
    only, never a secret value."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import args as vllm_args

    seen = []
    real = vllm_args.check_argv

    def spy(argv, version, entrypoint="serve", env=None):
        seen.append(dict(env or {}))
        return real(argv, version, entrypoint=entrypoint, env=env)

    monkeypatch.setattr(vllm_args, "check_argv", spy)
    kw = {"gpus": ["0"], "vllm_version": "0.33.0", "extra_args": ["--grpc-port", "50051"], "api_key": "sekret"}
    with pytest.raises(GpufleetError, match="requires VLLM_USE_RUST_FRONTEND=1") as e:
        run(rt, check=True, **kw)
    assert e.value.details["failure_class"] == "bad_args"
    r = run(rt, check=True, env={"VLLM_USE_RUST_FRONTEND": "1", "HOME": "/root"}, secret_env={"VLLM_X": "s"}, **kw)
    assert r["changed"] and rt.calls == []
    assert seen[-1] == {"VLLM_USE_RUST_FRONTEND": "1"}
    assert not any("sekret" in v or "s" == v for env in seen for v in env.values())
