"""The node agent's event log (plugins/module_utils/_agent/events.py): JSON lines, rotated by size with logging's
RotatingFileHandler and the old semantics kept (an empty file never rotated, no backups = the file starts afresh),
created 0640, write errors raised, echoed without the tail."""

from __future__ import annotations

import json
import stat

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.events import EventLog


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_event_log_rotates_by_size(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path), max_bytes=400, backups=2)
    for i in range(20):
        log({"event": "restart", "i": i, "pad": "x" * 50})
    assert path.stat().st_size <= 400
    assert (tmp_path / "events.jsonl.1").exists() and (tmp_path / "events.jsonl.2").exists()
    assert not (tmp_path / "events.jsonl.3").exists()
    last = lines(path)
    assert last[-1]["i"] == 19
    # Nothing lost between the files that are kept: the backups hold the lines just before.
    kept = [e["i"] for name in ("events.jsonl.2", "events.jsonl.1", "events.jsonl") for e in lines(tmp_path / name)]
    assert kept == list(range(kept[0], 20))


def test_record_larger_than_max_bytes_never_rotates_an_empty_file(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path), max_bytes=50, backups=2)
    for i in range(3):
        log({"event": "failure", "i": i, "tail": ["y" * 80]})
    assert [e["i"] for e in lines(path)] == [2]
    assert [e["i"] for e in lines(tmp_path / "events.jsonl.1")] == [1]
    assert [e["i"] for e in lines(tmp_path / "events.jsonl.2")] == [0]


def test_no_backups_starts_the_file_afresh(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path), max_bytes=300, backups=0)
    for i in range(20):
        log({"event": "restart", "i": i, "pad": "x" * 50})
    assert path.stat().st_size <= 300 and lines(path)[-1]["i"] == 19
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl"]


def test_file_is_private_and_lines_are_complete_records(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path), max_bytes=300, backups=1)
    for i in range(10):
        log({"event": "restart", "deployment": "chat", "i": i})
    for p in (path, tmp_path / "events.jsonl.1"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o600 == 0o600 and mode & ~0o640 == 0, oct(mode)  # 0640 (less under a stricter umask)
        for rec in lines(p):
            assert rec["host"] and rec["ts"].endswith("Z") and rec["event"] == "restart"


def test_another_writers_rotation_is_seen(tmp_path):
    """Two agent processes on one state dir (the service and a --once by hand): neither keeps writing to a file the
    other rotated away."""
    path = tmp_path / "events.jsonl"
    first, second = EventLog(str(path), 400, 2), EventLog(str(path), 400, 2)
    second({"event": "restart", "i": "second-0"})
    for i in range(20):
        first({"event": "restart", "i": i, "pad": "x" * 50})
    second({"event": "restart", "i": "second-1"})
    assert lines(path)[-1]["i"] == "second-1" and path.stat().st_size <= 400


def test_write_error_is_raised(tmp_path, capsys):
    log = EventLog(str(tmp_path / "missing" / "events.jsonl"))
    with pytest.raises(OSError):
        log({"event": "restart"})
    assert "Logging error" not in capsys.readouterr().err


def test_echo_leaves_out_the_tail(tmp_path, capsys):
    log = EventLog(str(tmp_path / "events.jsonl"), echo=True)
    log({"event": "failure", "deployment": "chat", "tail": ["a log line"]})
    assert json.loads(capsys.readouterr().out) == {"event": "failure", "deployment": "chat"}
    assert lines(tmp_path / "events.jsonl")[0]["tail"] == ["a log line"]
