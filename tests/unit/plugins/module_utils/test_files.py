"""files.write_atomic / write_if_changed: the collection's one way to replace a file."""

from __future__ import annotations

import os

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _files as files


def test_write_atomic_mode_dirs_and_no_leftovers(tmp_path):
    path = tmp_path / "a" / "b" / "f.json"
    files.write_atomic(str(path), "one", 0o600)
    assert path.read_text() == "one" and (path.stat().st_mode & 0o777) == 0o600
    files.write_atomic(str(path), b"two", durable=True)
    assert path.read_bytes() == b"two" and (path.stat().st_mode & 0o777) == 0o644
    assert os.listdir(path.parent) == ["f.json"]
    with pytest.raises(FileNotFoundError):
        files.write_atomic(str(tmp_path / "missing" / "f"), "x", makedirs=False)


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        files.write_atomic(str(path), "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f"]


def test_write_if_changed(tmp_path):
    path = str(tmp_path / "m.json")
    assert files.write_if_changed(path, "a\n") is True
    mtime = os.stat(path).st_mtime_ns
    assert files.write_if_changed(path, "a\n") is False and os.stat(path).st_mtime_ns == mtime
    assert files.write_if_changed(path, "b\n") is True and open(path).read() == "b\n"
