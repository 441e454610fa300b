"""Model revisions (issue #15): the revision id of each source, the layout, the collection rule (never a revision a
container uses, keep the newest N), the flat (pre-revision) install kept working, and re-syncs that are no-ops."""

from __future__ import annotations

import json
import os

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import layout
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import revisions as revs
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import store as fs
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import sync as model_sync

SHA_A = "a" * 40
SHA_B = "b" * 40


# ---------------------------------------------------------------- ids and layout


def test_revision_id_of_each_source():
    assert layout.revision_id({"source": "hf", "commit": SHA_A}) == SHA_A
    patterned = layout.revision_id({"source": "hf", "commit": SHA_A, "allow_patterns": ["*.gguf"]})
    assert patterned.startswith(SHA_A + "-") and patterned != SHA_A  # another file selection: other weights
    assert layout.revision_id({"source": "url", "url": "u", "checksum": "sha256:" + "C" * 64}) == "url-" + "c" * 40
    u1 = layout.revision_id({"source": "url", "url": "https://h/a.gguf", "checksum": None})
    u2 = layout.revision_id({"source": "url", "url": "https://h/b.gguf", "checksum": None})
    assert u1.startswith("url-") and u1 != u2
    files = {"config.json": {"size": 2, "mtime_ns": 1}}
    l1 = layout.revision_id({"source": "local", "src": "/c", "link": True, "source_files": files})
    l2 = layout.revision_id(
        {"source": "local", "src": "/c", "link": True, "source_files": {"config.json": {"size": 3, "mtime_ns": 1}}}
    )
    assert l1.startswith("local-") and l1 != l2  # the checkpoint's content changed: a new revision
    for rid in (SHA_A, patterned, u1, l1):
        assert layout.REVISION_ID_RE.match(rid) and "." not in rid
    with pytest.raises(ValueError):
        layout.revision_id({"source": "hf", "commit": "main"})


def test_revision_path_and_uses():
    assert layout.revision_path("/m", "llama", SHA_A) == f"/m/llama/{SHA_A}"
    for bad in ("", "..", "a/b", "legacy", "x" * 65, "a.b"):
        with pytest.raises(ValueError):
            layout.revision_path("/m", "llama", bad)
    assert layout.uses("/m/llama/r1", "/m/llama/r1")
    assert layout.uses("/m/llama", "/m/llama/r1")  # a flat install's container mounts the parent
    assert layout.uses("/m/llama/r1/sub", "/m/llama/r1")
    assert not layout.uses("/m/llama/r1", "/m/llama/r2")
    assert not layout.uses("/m/llama2", "/m/llama")


# ---------------------------------------------------------------- the collection rule


@pytest.mark.parametrize(
    "revisions, current, in_use, keep, gone",
    [
        ({"r1": 1, "r2": 2, "r3": 3}, "r3", [], 2, ["r1"]),
        ({"r1": 1, "r2": 2, "r3": 3}, "r3", [], 1, ["r1", "r2"]),
        ({"r1": 1, "r2": 2, "r3": 3}, "r3", ["r1"], 1, ["r2"]),  # a mounted revision stays, whatever its age
        ({"r1": 1, "r2": 2, "r3": 3}, "r1", [], 1, ["r2", "r3"]),  # back on an old one: the current one stays
        ({"r1": 1, "r2": 2, "r3": 3}, "r1", [], 2, ["r2"]),
        ({"r1": 1, "r2": 2}, "r2", ["r1", "r2"], 1, []),
        ({"r1": 1}, "r1", [], 0, []),  # keep below 1 counts as 1
        ({}, None, [], 2, []),
    ],
)
def test_to_remove(revisions, current, in_use, keep, gone):
    assert revs.to_remove(revisions, current, in_use, keep) == gone


# ---------------------------------------------------------------- on disk


def _ckpt(path, weight=b"w" * 64):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (path / "model.gguf").write_bytes(b"GGUF" + weight)


@pytest.fixture
def bed(tmp_path, monkeypatch):
    """A models root, a checkpoint directory, and the containers' mounts the collection sees (none by default)."""
    mounts: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(revs, "container_mounts", lambda running_only=False: list(mounts))
    src = tmp_path / "ckpt" / "m"
    _ckpt(src)
    params = {
        "name": "m",
        "source": "local",
        "src": str(src),
        "allowed_dirs": [str(tmp_path / "ckpt")],
        "models_root": str(tmp_path / "models"),
        "validate": False,
    }
    return tmp_path / "models", src, params, mounts


def _change(src, weight):
    """A new checkpoint file, written beside and renamed over the old one (a copy install hard-links the
    checkpoint's files: a file rewritten in place would change the installed revision too; docs/modules)."""
    (src / "model.gguf.tmp").write_bytes(b"GGUF" + weight)
    st = os.stat(src / "model.gguf.tmp")
    os.utime(src / "model.gguf.tmp", ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    os.replace(src / "model.gguf.tmp", src / "model.gguf")


def test_new_revision_beside_the_old_one_and_noop(bed):
    root, src, params, _mounts = bed
    first = model_sync.sync(params)
    r1 = first["revision_id"]
    assert first["changed"] and first["path"] == str(root / "m" / r1) and r1.startswith("local-")
    again = model_sync.sync(params)
    assert again["changed"] is False and again["path"] == first["path"] and again["revision_id"] == r1
    _change(src, b"v" * 64)
    check = model_sync.sync(params, check_mode=True)
    assert check["changed"] and check["revision_id"] != r1
    assert (
        check["diff"]["before"]["revision_id"] == r1 and check["diff"]["after"]["revision_id"] == check["revision_id"]
    )
    assert not (root / "m" / check["revision_id"]).exists()  # check mode wrote nothing
    second = model_sync.sync(params)
    r2 = second["revision_id"]
    assert second["changed"] and r2 == check["revision_id"] and second["path"] == str(root / "m" / r2)
    # the old revision is untouched beside the new one (keep_revisions 2)
    assert (root / "m" / r1 / "model.gguf").read_bytes() == b"GGUF" + b"w" * 64
    assert (root / "m" / r2 / "model.gguf").read_bytes() == b"GGUF" + b"v" * 64
    assert model_sync.sync(params)["changed"] is False


def test_collection_never_removes_a_mounted_revision_and_keeps_n(bed):
    root, src, params, mounts = bed
    params = {**params, "keep_revisions": 1}
    r1 = model_sync.sync(params)["revision_id"]
    mounts.append(("gpufleet-m", [str(root / "m" / r1), "/var/lib/gpufleet/hf-cache"]))  # a container serves r1
    _change(src, b"2" * 64)
    res = model_sync.sync(params)
    r2 = res["revision_id"]
    assert res["removed_revisions"] == [] and (root / "m" / r1).is_dir()  # kept while it is mounted
    assert model_sync.sync(params)["changed"] is False  # still mounted: nothing to do
    mounts.clear()  # the container left
    check = model_sync.sync(params, check_mode=True)
    assert check["changed"] and check["removed_revisions"] == [r1] and (root / "m" / r1).is_dir()
    res = model_sync.sync(params)
    assert res["changed"] and res["removed_revisions"] == [r1] and res["revision_id"] == r2
    assert not (root / "m" / r1).exists() and (root / "m" / r2).is_dir()
    assert revs.read(str(root), "m", r1) is None
    assert model_sync.sync(params)["changed"] is False


def test_an_engine_that_does_not_answer_removes_nothing(bed, monkeypatch):
    root, src, params, _mounts = bed
    params = {**params, "keep_revisions": 1}
    r1 = model_sync.sync(params)["revision_id"]
    monkeypatch.setattr(revs, "container_mounts", lambda running_only=False: None)
    _change(src, b"3" * 64)
    res = model_sync.sync(params)
    assert res["removed_revisions"] == [] and "collect_skipped" in res and (root / "m" / r1).is_dir()


def test_back_to_an_installed_revision_without_a_fetch(bed):
    root, src, params, _mounts = bed
    r1 = model_sync.sync(params)["revision_id"]
    st = os.stat(src / "model.gguf")
    old = (src / "model.gguf").read_bytes(), st.st_mtime_ns
    _change(src, b"4" * 64)
    r2 = model_sync.sync(params)["revision_id"]
    (src / "model.gguf.tmp").write_bytes(old[0])
    os.utime(src / "model.gguf.tmp", ns=(old[1], old[1]))
    os.replace(src / "model.gguf.tmp", src / "model.gguf")
    back = model_sync.sync(params)
    assert back["changed"] and back["revision_id"] == r1 and back["path"] == str(root / "m" / r1)
    assert fs.read_manifest(str(root), "m")["revision_id"] == r1 and (root / "m" / r2).is_dir()
    assert model_sync.sync(params)["changed"] is False


def _flat_install(root, src, params):
    """A model synced before revisions: files at <root>/m, a manifest without revision_id."""
    ident = model_sync._identity(params, src=str(src), source_files=fs.local_files(str(src), params["allowed_dirs"]))
    flat = root / "m"
    flat.mkdir(parents=True)
    for f in os.listdir(src):
        (flat / f).write_bytes((src / f).read_bytes())
    manifest = {**ident, "revision": None, "files": fs.list_tree(str(flat)), "size_bytes": 1, "synced_at": 1.0}
    fs.write_manifest(str(root), "m", manifest)
    return flat


def test_flat_install_keeps_working_then_goes_once_unused(bed):
    root, src, params, mounts = bed
    params = {**params, "keep_revisions": 1}
    flat = _flat_install(root, src, params)
    same = model_sync.sync(params)
    assert same["changed"] is False and same["path"] == str(flat) and same["revision_id"] is None
    mounts.append(("gpufleet-m", [str(flat)]))  # its container mounts the flat directory
    _change(src, b"5" * 64)
    res = model_sync.sync(params)
    r2 = res["revision_id"]
    assert res["changed"] and res["path"] == str(flat / r2) and res["removed_revisions"] == []
    # the flat files were not touched (no data loss); the new revision lies beside them
    assert (flat / "model.gguf").read_bytes() == b"GGUF" + b"w" * 64 and (flat / r2 / "model.gguf").exists()
    assert revs.read(str(root), "m", layout.LEGACY_REVISION)["path"] == str(flat)
    mounts.clear()
    gone = model_sync.sync(params)
    assert gone["removed_revisions"] == [layout.LEGACY_REVISION]
    assert sorted(os.listdir(flat)) == [r2] and (flat / r2 / "model.gguf").exists()


def test_absent_removes_every_revision(bed):
    root, src, params, mounts = bed
    model_sync.sync(params)
    _change(src, b"6" * 64)
    res = model_sync.sync(params)
    mounts.append(("gpufleet-m", [res["path"]]))
    with pytest.raises(Exception, match="mounted by running container"):
        model_sync.sync({"name": "m", "state": "absent", "models_root": str(root)})
    mounts.clear()
    out = model_sync.sync({"name": "m", "state": "absent", "models_root": str(root)})
    assert out["changed"] and not (root / "m").exists() and revs.count(str(root), "m") == 0
    assert fs.read_manifest(str(root), "m") is None


def test_users_of_reads_mounts():
    mounts = [("a", ["/m/x/r1"]), ("b", ["/m/x"]), ("c", ["/m/y/r1", "/cache"])]
    assert revs.users_of("/m/x/r1", mounts) == ["a", "b"]
    assert revs.users_of("/m/x/r2", mounts) == ["b"]
    assert revs.users_of("/m/y/r2", mounts) == []
