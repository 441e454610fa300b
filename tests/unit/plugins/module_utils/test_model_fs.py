"""Filesystem side of model sync: lock, space check, swap, manifest, local source, archives."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import tarfile
import time
import zipfile

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import archive, layout
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import store as fs


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", ".hidden"])
def test_bad_names(bad):
    with pytest.raises(GpufleetError, match="not usable as a directory name"):
        layout.check_name(bad)


def _hold_lock(root, ready, release):
    with fs.model_lock(root, "m", 1):
        ready.set()
        release.wait(10)


def test_lock_times_out_with_a_clear_error(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    p.start()
    try:
        assert ready.wait(10)
        t = time.monotonic()
        with pytest.raises(GpufleetError, match=r"another model_sync of 'm' is running \(held by pid \d+\)"):
            with fs.model_lock(str(tmp_path), "m", 0.5):
                pass
        assert time.monotonic() - t >= 0.4
    finally:
        release.set()
        p.join(10)
    with fs.model_lock(str(tmp_path), "m", 1):  # free again once the holder is gone
        pass


def test_free_space_check(tmp_path):
    free = fs.free_bytes(str(tmp_path))
    assert fs.check_free_space(str(tmp_path), 1024, "x")["free_bytes"] == pytest.approx(free, rel=0.01)
    with pytest.raises(GpufleetError) as e:
        fs.check_free_space(str(tmp_path / "not" / "yet"), free * 2, "big model")
    assert e.value.details["failure_class"] == "disk_full"
    assert "not enough disk space for big model" in str(e.value) and "free" in str(e.value)


def test_swap_in_replaces_atomically_and_recover(tmp_path):
    root = str(tmp_path)
    new = tmp_path / "stage1"
    new.mkdir()
    (new / "a").write_text("1")
    fs.swap_in(root, "m", str(new))
    assert (tmp_path / "m" / "a").read_text() == "1" and not new.exists()
    new2 = tmp_path / "stage2"
    new2.mkdir()
    (new2 / "b").write_text("2")
    fs.swap_in(root, "m", str(new2))
    assert sorted(os.listdir(tmp_path / "m")) == ["b"]
    assert not os.listdir(tmp_path / ".gpufleet" / "trash")
    # a kill between the two renames of the fallback path: recover() puts the old version back
    os.rename(tmp_path / "m", tmp_path / ".gpufleet" / "trash" / f"m.1.{time.time_ns()}")
    fs.recover(root, "m")
    assert (tmp_path / "m" / "b").read_text() == "2"


def test_manifest_roundtrip_and_disk_match(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "x").write_bytes(b"123")
    files = fs.list_tree(str(d))
    fs.write_manifest(str(tmp_path), "m", {"commit": "c", "files": files})
    man = fs.read_manifest(str(tmp_path), "m")
    assert man["commit"] == "c" and fs.manifest_matches_disk(man, str(d))
    os.utime(d / "x", ns=(1, 1))
    assert not fs.manifest_matches_disk(man, str(d))
    (tmp_path / ".gpufleet" / "manifests" / "m.json").write_text("{broken")
    assert fs.read_manifest(str(tmp_path), "m") is None


def wait_for(cond, what: str, timeout: float = 60.0):
    """Poll ``cond()`` until it is truthy (the progress thread runs when the machine lets it); the deadline only
    ends a hung test."""
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


def counting_ticks(monkeypatch) -> list[int]:
    """Counts the progress thread's passes (each sums the staged bytes once)."""
    ticks = [0]
    real = fs.dir_bytes

    def dir_bytes(*a, **kw):
        ticks[0] += 1
        return real(*a, **kw)

    monkeypatch.setattr(fs, "dir_bytes", dir_bytes)
    return ticks


def test_progress_file(tmp_path):
    p = fs.Progress(str(tmp_path), "m", interval=0.05)
    stage = tmp_path / "stage"
    stage.mkdir()
    p.watch(str(stage), 100)
    (stage / "f").write_bytes(b"x" * 40)
    status = tmp_path / ".gpufleet" / "status" / "m.json"
    mid = wait_for(lambda: (d := json.loads(status.read_text()))["bytes_done"] == 40 and d, "bytes_done == 40")
    assert mid["state"] == "downloading" and mid["bytes_done"] == 40 and mid["bytes_total"] == 100
    p.stop("done", bytes_done=100)
    assert json.loads((tmp_path / ".gpufleet" / "status" / "m.json").read_text())["state"] == "done"


def test_local_source_rules(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "ck").mkdir(parents=True)
    (allowed / "ck" / "config.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    assert fs.resolve_local_source(str(allowed / "ck"), [str(allowed)]) == str(allowed / "ck")
    with pytest.raises(GpufleetError, match=r"'\.\.'"):
        fs.resolve_local_source(f"{allowed}/ck/../../outside", [str(allowed)])
    with pytest.raises(GpufleetError, match="not under allowed_dirs"):
        fs.resolve_local_source(str(outside), [str(allowed)])
    (allowed / "esc").symlink_to(outside)
    with pytest.raises(GpufleetError, match="not under allowed_dirs"):
        fs.resolve_local_source(str(allowed / "esc"), [str(allowed)])
    with pytest.raises(GpufleetError, match="needs allowed_dirs"):
        fs.resolve_local_source(str(allowed / "ck"), [])
    # prefix trick: /allowed-evil is not under /allowed
    (tmp_path / "allowed-evil").mkdir()
    with pytest.raises(GpufleetError, match="not under allowed_dirs"):
        fs.resolve_local_source(str(tmp_path / "allowed-evil"), [str(allowed)])
    (allowed / "ck" / "link").symlink_to(outside / "secret")
    with pytest.raises(GpufleetError, match="points outside allowed_dirs"):
        fs.local_files(str(allowed / "ck"), [str(allowed)])
    os.unlink(allowed / "ck" / "link")
    os.mkfifo(allowed / "ck" / "fifo")
    with pytest.raises(GpufleetError, match="not a regular file"):
        fs.local_files(str(allowed / "ck"), [str(allowed)])


def test_copy_tree_hardlinks(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w").write_bytes(b"w")
    files = fs.local_files(str(src), [str(tmp_path)])
    counts = fs.copy_tree(str(src), files, str(tmp_path / "dst"))
    assert counts == {"linked": 1, "copied": 0}
    assert (tmp_path / "dst" / "sub" / "w").stat().st_ino == (src / "sub" / "w").stat().st_ino


def _tar(tmp_path, name, build):
    p = tmp_path / name
    with tarfile.open(p, "w") as t:
        build(t)
    return str(p)


def _add(t, name, data=b"x", **attrs):
    info = tarfile.TarInfo(name)
    info.size = len(data) if not attrs else 0
    for k, v in attrs.items():
        setattr(info, k, v)
    t.addfile(info, io.BytesIO(data) if not attrs else None)


@pytest.mark.parametrize(
    ("entry", "attrs", "message"),
    [
        ("/etc/evil", {}, "absolute path"),
        ("a/../../evil", {}, r"'\.\.'"),
        ("link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "links outside"),
        ("d/link", {"type": tarfile.SYMTYPE, "linkname": "../../x"}, "links outside"),
        ("hard", {"type": tarfile.LNKTYPE, "linkname": "../x"}, "links outside"),
        ("dev", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "device"),
        ("blk", {"type": tarfile.BLKTYPE}, "device"),
        ("fifo", {"type": tarfile.FIFOTYPE}, "device or fifo"),
    ],
)
def test_tar_refusals(tmp_path, entry, attrs, message):
    path = _tar(tmp_path, "a.tar", lambda t: (_add(t, "ok.txt"), _add(t, entry, **attrs)))
    dst = tmp_path / "out"
    dst.mkdir()
    with pytest.raises(GpufleetError, match=message):
        archive.extract_archive(path, "tar", str(dst))
    assert not os.listdir(dst)  # checked before anything is written


def test_tar_inner_links_and_zip(tmp_path):
    path = _tar(tmp_path, "b.tar", lambda t: (_add(t, "d/f"), _add(t, "d/l", type=tarfile.SYMTYPE, linkname="f")))
    dst = tmp_path / "out"
    dst.mkdir()
    assert archive.extract_archive(path, "tar", str(dst)) == ["d/f"]
    assert os.readlink(dst / "d" / "l") == "f"
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("m/config.json", "{}")
    out2 = tmp_path / "out2"
    out2.mkdir()
    assert archive.extract_archive(str(z), "zip", str(out2)) == ["m/config.json"]
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../slip", "x")
    with pytest.raises(GpufleetError, match=r"'\.\.'"):
        archive.extract_archive(str(z), "zip", str(out2))
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("sym")
        info.external_attr = (0o120777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(GpufleetError, match="symlink"):
        archive.extract_archive(str(z), "zip", str(out2))


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.tar.gz", "tar.gz"), ("a.TGZ", "tar.gz"), ("a.tar", "tar"), ("a.zip", "zip"), ("a.gguf", None)],
)
def test_archive_kind(name, kind):
    assert archive.archive_kind(name) == kind


def _record_fsyncs(monkeypatch):
    """Patch os.fsync to record the real path of every fsynced descriptor."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_fsync_tree_covers_every_file_and_directory(tmp_path, monkeypatch):
    stage = tmp_path / "stage"
    (stage / "sub" / "deeper").mkdir(parents=True)
    for rel in ("config.json", "sub/a.safetensors", "sub/deeper/b.safetensors"):
        (stage / rel).write_bytes(b"x" * 10)
    (stage / "link").symlink_to(stage / "config.json")
    synced = _record_fsyncs(monkeypatch)
    got = fs.fsync_tree(str(stage))
    assert got["files"] == 3 and got["bytes"] == 30
    want_files = {str(stage / r) for r in ("config.json", "sub/a.safetensors", "sub/deeper/b.safetensors")}
    want_dirs = {str(stage), str(stage / "sub"), str(stage / "sub" / "deeper")}
    assert set(synced) == want_files | want_dirs
    # files before the directories that name them, deepest directory first, the staged root last
    assert synced.index(str(stage / "sub" / "deeper")) < synced.index(str(stage / "sub")) < synced.index(str(stage))
    assert max(synced.index(f) for f in want_files) < min(synced.index(d) for d in want_dirs)
    # a staged symlink (link: true) only needs the directory holding it
    synced.clear()
    (tmp_path / "linked").symlink_to(stage)
    assert fs.fsync_tree(str(tmp_path / "linked"))["files"] == 0
    assert synced == [str(tmp_path)]


def test_start_writeback(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100_000)
    assert fs.start_writeback(str(f)) is True  # Linux: sync_file_range is there
    assert fs.start_writeback(str(tmp_path / "missing")) is False
    (tmp_path / "l").symlink_to(f)
    assert fs.start_writeback(str(tmp_path / "l")) is False  # never follows a link out of the staging dir


def test_progress_starts_writeback_of_growing_files(tmp_path, monkeypatch):
    started: list[str] = []
    monkeypatch.setattr(fs, "start_writeback", lambda p: started.append(p) or True)
    ticks = counting_ticks(monkeypatch)
    stage = tmp_path / "stage"
    stage.mkdir()
    p = fs.Progress(str(tmp_path), "m", interval=0.05)
    p.watch(str(stage), 100, writeback=0.02)
    (stage / "f").write_bytes(b"x" * 40)
    wait_for(lambda: started, "the first writeback")
    n = len(started)
    assert set(started) == {str(stage / "f")}
    seen = ticks[0]
    wait_for(lambda: ticks[0] >= seen + 3, "three more passes")
    assert len(started) == n  # a file that stopped growing is not flushed again and again
    with open(stage / "f", "ab") as fh:
        fh.write(b"y")
    wait_for(lambda: len(started) > n, "the writeback of the grown file")
    seen = ticks[0]
    wait_for(lambda: ticks[0] >= seen + 3, "three more passes")
    p.stop("done")
    assert len(started) == n + 1
    started.clear()
    q = fs.Progress(str(tmp_path), "m", interval=0.02)
    q.watch(str(stage), 100)  # without writeback: progress only
    (stage / "g").write_bytes(b"z")
    seen = ticks[0]
    wait_for(lambda: ticks[0] >= seen + 3, "three passes")
    q.stop("done")
    assert started == []


def test_sync_is_durable_before_visible(tmp_path, monkeypatch):
    """Every staged file and directory is fsynced before the swap renames it into place, and the swap's own
    directories right after it."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._model import sync as model_sync

    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"w" * 1000)
    root = tmp_path / "models"
    synced = _record_fsyncs(monkeypatch)
    seen_at_swap: dict[str, list[str]] = {}
    real_swap = fs.swap_in

    def swap_in(r, name, new, dest=None):
        seen_at_swap["synced"] = list(synced)
        seen_at_swap["files"] = [
            os.path.join(d, f) for d, _dirs, fs_ in os.walk(new) for f in fs_ if f != ".gpufleet-staging"
        ]
        real_swap(r, name, new, dest)

    monkeypatch.setattr(fs, "swap_in", swap_in)

    # a copy (not hard links), so the bytes really are new
    def no_link(*_args, **_kwargs):
        raise OSError(18, "cross-device")

    monkeypatch.setattr(os, "link", no_link)
    params = {"name": "m", "source": "local", "src": str(src), "allowed_dirs": [str(tmp_path)]}
    res = model_sync.sync({**params, "models_root": str(root), "validate": False})
    assert res["changed"] and sorted(res["files"]) == ["config.json", "sub/w.bin"]
    assert "fsync" in res["timings"]
    staged_files = seen_at_swap["files"]
    assert len(staged_files) == 2 and set(staged_files) <= set(seen_at_swap["synced"])
    staged = str(root / ".gpufleet" / "staging" / "m.local")
    assert staged_files and all(f.startswith(staged + "/") for f in staged_files)
    assert {staged, staged + "/sub"} <= set(seen_at_swap["synced"])
    # the rename itself is made durable: the model's directory (which holds its revisions) is fsynced after the
    # swap, and the models root once that directory was created
    assert res["path"] == str(root / "m" / res["revision_id"])
    assert str(root / "m") in synced[len(seen_at_swap["synced"]) :] and str(root) in synced
    # the manifest (the no-op authority) is written durably too: its file before the rename, then its directory
    manifests = str(root / ".gpufleet" / "manifests")
    after = synced[len(seen_at_swap["synced"]) :]
    assert any(p.startswith(manifests + "/.tmp-") for p in after) and manifests in after
