"""Xid errors in GPU health (issue #19 item 8): the record the node agent keeps (plugins/module_utils/_gpu/xid.py),
what gpu_facts judges from it, and the agent's watch on NVML events (plugins/module_utils/_agent/xid.py) against the
fake NVML's event set (sim/nvml: xid_errors)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent import cli
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.xid import XidRecorder, XidWatch
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu import xid
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.facts import gather_gpus
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.health import Thresholds, evaluate_health
from fixtures.nvml import make_gpu

BOOT = 1_700_000_000.0
UUID = "GPU-00000001-1111-2222-3333-444444444444"


def test_the_agent_writes_where_gpu_facts_reads():
    assert xid.XID_FILE == os.path.join(cli.DEFAULT_STATE_DIR, xid.XID_FILE_NAME)


def test_record_round_trip_keeps_the_newest_and_ignores_junk(tmp_path):
    path = str(tmp_path / "xid.json")
    assert xid.read_record(path) == {}
    record: dict = {}
    for i in range(xid.KEEP_PER_GPU + 3):
        record = xid.add(record, UUID, 13 if i % 2 else 79, BOOT + i)
    xid.write_record(path, record)
    back = xid.read_record(path)
    assert len(back[UUID]) == xid.KEEP_PER_GPU and back[UUID][-1]["at"] == BOOT + xid.KEEP_PER_GPU + 2
    (tmp_path / "junk.json").write_text("{not json")
    assert xid.read_record(str(tmp_path / "junk.json")) == {}
    mixed = {"gpus": {UUID: [{"xid": "79", "at": 1}, {"xid": True, "at": 1}, {"xid": 48, "at": BOOT}], "x": "y"}}
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    assert xid.read_record(str(tmp_path / "mixed.json")) == {UUID: [{"xid": 48, "at": BOOT}]}


def test_only_critical_xids_since_boot_and_within_the_age_count():
    entries = [
        {"xid": 79, "at": BOOT - 10},  # before this boot: the reboot reset the GPU
        {"xid": 13, "at": BOOT + 5},  # an application's own fault: never unhealthy
        {"xid": 48, "at": BOOT + 10},
        {"xid": 95, "at": BOOT + 1000},
    ]
    got = xid.recent(entries, BOOT, now=BOOT + 1010)
    assert [(e["xid"], e["meaning"]) for e in got] == [(48, "double-bit ECC error"), (95, "uncontained ECC error")]
    assert got[0]["at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BOOT + 10))
    assert [e["xid"] for e in xid.recent(entries, BOOT, now=BOOT + 1010, max_age_s=100)] == [95]
    assert [e["xid"] for e in xid.recent(entries, None, now=BOOT)] == [79, 48, 95]  # boot unknown: all of them


def test_a_critical_xid_is_a_health_issue_with_its_meaning():
    gpu = {"xid_errors": [{"xid": 79, "at": "2026-12-03T04:21:07Z", "meaning": "GPU has fallen off the bus"}]}
    assert evaluate_health(gpu, Thresholds()) == [
        "Xid 79 (GPU has fallen off the bus) at 2026-12-03T04:21:07Z: the GPU needs a reset or a reboot"
    ]


def test_gpu_facts_judges_the_record_by_uuid(fake_gpus, tmp_path):
    fake_gpus({"gpus": [make_gpu(0), make_gpu(1)]})
    path = str(tmp_path / "xid.json")
    now = time.time()
    xid.write_record(path, xid.add(xid.add({}, UUID, 13, now), UUID, 94, now))
    for source in ("nvml", "nvidia_smi"):
        facts = gather_gpus(source, xid_file=path)
        assert [g["healthy"] for g in facts["gpus"]] == [True, False], source
        assert [e["xid"] for e in facts["gpus"][1]["xid_errors"]] == [94] and facts["gpus"][0]["xid_errors"] == []
        assert facts["gpus"][1]["health_issues"][0].startswith("Xid 94 (contained ECC error) at ")
    assert gather_gpus("nvml", xid_file=None)["gpu_healthy"] is True  # no record read: nothing judged
    assert gather_gpus("nvml", Thresholds(max_xid_age_s=1e-9), xid_file=path)["gpu_healthy"] is True


def test_recorder_writes_the_record_and_one_event(tmp_path):
    events: list[dict] = []
    rec = XidRecorder(str(tmp_path / "xid.json"), events.append, clock=lambda: BOOT + 1)
    rec(UUID, 79)
    rec(UUID, 31)
    assert xid.read_record(str(tmp_path / "xid.json")) == {
        UUID: [{"xid": 79, "at": BOOT + 1}, {"xid": 31, "at": BOOT + 1}]
    }
    assert events == [
        {"event": "gpu_xid", "gpu": UUID, "xid": 79, "critical": True, "meaning": "GPU has fallen off the bus"},
        {"event": "gpu_xid", "gpu": UUID, "xid": 31, "critical": False},
    ]


def _wait(cond, what: str, limit: float = 30.0) -> None:
    """Wait for ``cond`` (the limit only ends a hung test; correctness never depends on it)."""
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_watch_records_each_xid_the_driver_raises(fake_gpus, tmp_path):
    config = fake_gpus({"gpus": [make_gpu(0), make_gpu(1, xid_errors=[79])]})
    path = str(tmp_path / "xid.json")
    events: list[dict] = []
    lock = threading.Lock()

    def log(event: dict) -> None:
        with lock:
            events.append(event)

    watch = XidWatch(XidRecorder(path, log), log)
    watch.start()
    try:
        assert watch.ready.wait(30)
        assert watch.watching == sorted([make_gpu(0)["uuid"], UUID])
        _wait(lambda: [e["xid"] for e in xid.read_record(path).get(UUID, [])] == [79], "the first Xid")
        # the driver raises another one on GPU 0 while the agent waits
        data = json.loads(Path(config).read_text())
        data["gpus"][0]["xid_errors"] = [48]
        tmp = Path(str(config) + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(config)
        _wait(lambda: make_gpu(0)["uuid"] in xid.read_record(path), "the second Xid")
    finally:
        watch.stop()
        watch.join(30)
    assert not watch.is_alive()
    assert {e["xid"] for e in events if e["event"] == "gpu_xid"} == {79, 48}
    assert events[0] == {"event": "xid_watch", "watching": watch.watching}
    facts = gather_gpus("nvml", xid_file=path)
    assert [g["healthy"] for g in facts["gpus"]] == [False, False]
    assert "Xid 79 (GPU has fallen off the bus)" in facts["gpus"][1]["health_issues"][0]


def test_without_nvml_the_watch_says_so_and_ends(monkeypatch):
    monkeypatch.delenv("GPUFLEET_FAKE_GPUS", raising=False)
    events: list[dict] = []
    watch = XidWatch(lambda u, x: None, events.append)
    watch.run()  # in this thread: it ends by itself
    assert events and events[0]["event"] == "xid_watch" and events[0]["watching"] == []
    assert "not recorded" in events[0]["reason"]


def test_the_converge_and_status_read_the_agents_record_with_the_inventorys_age(fake_gpus, tmp_path, monkeypatch):
    """fleet_apply state=gathered (the plan's GPUs) and vllm_deployment_info gpus=true (status.yml) read the Xid record
    where the agent keeps it (gpufleet_agent_state_dir) and count a critical Xid only gpufleet_max_xid_age_s."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container import info
    from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.apply import gather_host
    from fixtures.fake_runtime import FakeRuntime

    fake_gpus({"gpus": [make_gpu(0), make_gpu(1)]})
    state = tmp_path / "agent"
    state.mkdir()
    old = time.time() - 7200  # two hours ago, since this boot
    monkeypatch.setattr(xid, "boot_time", lambda: old - 60)
    monkeypatch.setattr(xid, "XID_FILE", str(tmp_path / "default-agent" / xid.XID_FILE_NAME))  # none there
    xid.write_record(str(state / xid.XID_FILE_NAME), xid.add({}, UUID, 79, old))

    def healthy(**extra) -> list[bool]:
        params = {"runtime": "docker", "manifest_dir": str(tmp_path / "manifests"), **extra}
        return [g["healthy"] for g in gather_host(params, runtime=FakeRuntime())["gpus"]]

    assert healthy() == [True, True]  # the default place holds no record: nothing judged
    assert healthy(agent_state_dir=str(state)) == [True, False]  # Xid 79 counts since boot
    assert healthy(agent_state_dir=str(state), max_xid_age_s=86400) == [True, False]  # within the day
    assert healthy(agent_state_dir=str(state), max_xid_age_s=3600) == [True, True]  # older than the hour: reset
    listed = info.gather({**{k: v["default"] for k, v in info.ARGUMENT_SPEC.items() if "default" in v},
                          "gpus": True, "agent_state_dir": str(state)}, FakeRuntime())  # fmt: skip
    assert [g["healthy"] for g in listed["gpus"]] == [True, False]
    for bad, why in ((0, r"max_xid_age_s: 0 must be > 0; seconds .* \(gpufleet_max_xid_age_s\)"), (-5, "must be > 0"),
                     (True, "True must be a number"), (float("nan"), "must be > 0")):  # fmt: skip
        with pytest.raises(GpufleetError, match=why):
            gather_host({"runtime": "docker", "manifest_dir": str(tmp_path), "max_xid_age_s": bad}, FakeRuntime())
    with pytest.raises(GpufleetError, match="agent_state_dir must be an absolute path"):
        gather_host({"runtime": "docker", "manifest_dir": str(tmp_path), "agent_state_dir": "agent"}, FakeRuntime())
