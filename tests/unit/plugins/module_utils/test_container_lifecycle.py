"""A replica's lifecycle record (plugins/module_utils/_container/lifecycle.py): the serve window the converge writes,
extend.yml's extension, the agent's failed/expired, and the file with its lock (issue #17)."""

from __future__ import annotations

import os

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

NOW = 1_800_000_000.0
H = 3600.0


def conv(rec, now=NOW, cid="c1", hash_="h1", serve_for_h=2.0, **kw):
    lc.converge(
        rec,
        container_id=cid,
        config_hash=hash_,
        serve_for_h=serve_for_h,
        max_failed_restarts=kw.pop("mfr", 3),
        start_timeout_s=kw.pop("sto", 1800),
        now=now,
        **kw,
    )
    return rec


def test_same_serve_for_keeps_the_deadline_a_changed_one_moves_it():
    rec = conv({})
    assert lc.deadline(rec) == NOW + 2 * H
    conv(rec, now=NOW + H)  # a later converge, same serve_for: the same deadline (not now + 2 h)
    assert lc.deadline(rec) == NOW + 2 * H
    conv(rec, now=NOW + H, serve_for_h=6.0)  # extended in the inventory: from the same start
    assert lc.deadline(rec) == NOW + 6 * H
    conv(rec, now=NOW + H, serve_for_h=0.5)  # shortened: already past
    assert lc.deadline(rec) == NOW + 0.5 * H
    conv(rec, now=NOW + H, serve_for_h=None)
    assert lc.deadline(rec) is None


def test_a_new_container_starts_a_new_window_an_adopted_one_keeps_its_label():
    rec = conv({}, since=NOW - H)  # first record of an existing container: its old label's window
    assert lc.deadline(rec) == NOW + H
    conv(rec, now=NOW + 10, cid="c2")  # redeployed (configuration changed)
    assert lc.deadline(rec) == NOW + 10 + 2 * H


def test_extend_adds_hours_and_survives_the_next_converge_until_serve_for_changes():
    rec = conv({})
    lc.extend(rec, 4.0, NOW + H)
    assert lc.deadline(rec) == NOW + 6 * H
    conv(rec, now=NOW + 2 * H)
    assert lc.deadline(rec) == NOW + 6 * H
    lc.extend(rec, None, NOW)  # infinite
    assert lc.deadline(rec) is None
    conv(rec, now=NOW + 2 * H, serve_for_h=3.0)  # the inventory changed: it decides again
    assert lc.deadline(rec) == NOW + 3 * H


def test_extend_after_expiry_counts_from_now():
    rec = conv({})
    rec["expired"] = {"at": NOW + 2 * H}
    lc.extend(rec, 1.0, NOW + 5 * H)
    assert lc.deadline(rec) == NOW + 6 * H and "expired" not in rec


def test_extend_of_an_unlimited_deployment_changes_nothing():
    rec = conv({}, serve_for_h=None)
    lc.extend(rec, 1.0, NOW)
    assert lc.deadline(rec) is None


def test_failed_is_kept_for_the_same_configuration_and_dropped_for_another():
    rec = conv({})
    rec["failed"] = {"reason": "crash_loop", "config_hash": "h1", "container_id": "c1"}
    conv(rec)
    assert lc.failed_for(rec, "h1")["reason"] == "crash_loop"
    assert lc.summary(rec, NOW)["lifecycle"] == "failed"
    conv(rec, cid="c2", hash_="h2")
    assert "failed" not in rec and lc.failed_for(rec, "h2") is None


def test_summary_says_expired_once_past_the_deadline():
    rec = conv({})
    assert lc.summary(rec, NOW + 2 * H - 1)["lifecycle"] is None
    assert lc.summary(rec, NOW + 2 * H)["lifecycle"] == "expired"
    assert lc.summary(rec, NOW + 2 * H)["serve_until_ts"] == NOW + 2 * H


def test_file_round_trip_written_only_when_changed(tmp_path):
    d = str(tmp_path)
    assert lc.load(d, "chat-0") == {}
    rec = lc.update(d, "chat-0", lambda r: conv(r))
    assert lc.load(d, "chat-0") == rec
    p = lc.path(d, "chat-0")
    mtime = os.stat(p).st_mtime_ns
    os.utime(p, ns=(mtime - 10**9, mtime - 10**9))
    lc.update(d, "chat-0", lambda r: conv(r, now=NOW + 5))
    assert os.stat(p).st_mtime_ns == mtime - 10**9, "unchanged: not rewritten"
    lc.remove(d, "chat-0")
    assert lc.load(d, "chat-0") == {} and not os.listdir(os.path.join(d, lc.LIFECYCLE_DIR))


def test_unreadable_record_is_empty_and_bad_names_refused(tmp_path):
    os.makedirs(tmp_path / lc.LIFECYCLE_DIR)
    (tmp_path / lc.LIFECYCLE_DIR / "chat.json").write_text("{not json")
    assert lc.load(str(tmp_path), "chat") == {}
    with pytest.raises(GpufleetError):
        lc.path(str(tmp_path), "../etc/passwd")


def test_plan_digest_ignores_the_lifecycle_fields_so_they_never_roll_a_replica():
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.rollout import plan_digest

    dep = {"name": "chat", "image": None, "vllm_version": "0.10.2", "model": {"source": "hf"}}
    base = plan_digest({"name": "chat-0", "serve_for": "infinite", "max_model_len": 4096}, dep)
    moved = {"name": "chat-0", "serve_for": 4.0, "max_model_len": 4096, "max_failed_restarts": 0, "start_timeout": 60}
    assert plan_digest(moved, dep) == base
    assert plan_digest({**moved, "idle_pause_after": 600, "pin": True}, dep) == base  # the warm cache rolls nothing
    assert plan_digest({**moved, "labels": {"gpufleet.owner": "team-b"}}, dep) != base  # the owner label rolls
