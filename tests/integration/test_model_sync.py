"""gpufleet.vllm.model_sync against the fake hub and a loopback file server, run through real ansible where a user
would, and as a plain process where a test must kill it or race two of them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import store

pytestmark = pytest.mark.integration


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _tree_hash(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    }


def _current(root: Path, name: str = "m") -> Path:
    """The directory of the model's current revision (model_sync installs each in <root>/<name>/<revision_id>)."""
    rev = (store.read_manifest(str(root), name) or {}).get("revision_id")
    return root / name / rev if rev else root / name


def _hf(name: str, repo: str, root: Path, **kw) -> dict:
    return {"name": name, "source": "hf", "repo_id": repo, "models_root": str(root), **kw}


# ---------------------------------------------------------------- hub


@pytest.mark.parametrize("backend", ["auto", "huggingface_hub", "builtin"])
def test_hub_download_then_noop(fake_hub, model_sync, tmp_path, backend):
    repo = f"org/m-{_uid()}"
    sha = fake_hub.make_repo(repo, shards=3, original=True, extra_files={"pytorch_model.bin": b"x" * 100})
    run = model_sync.ansible(_hf("m", repo, tmp_path, download_backend=backend))
    r = run.result
    assert not run.failed, run.output
    assert r["changed"] is True and r["commit"] == sha and r["revision"] == "main"
    assert r["download_backend"] == ("huggingface_hub" if backend == "auto" else backend)
    assert r["path"] == str(tmp_path / "m" / sha) and r["revision_id"] == sha
    assert r["validation"]["ok"] is True and r["validation"]["format"] == "safetensors"
    # default patterns: no original/ duplicates, no .bin next to safetensors
    assert "model-00003-of-00003.safetensors" in r["files"]
    assert not any(f.startswith("original/") or f.endswith(".bin") for f in r["files"])
    assert sorted(_tree_hash(_current(tmp_path))) == r["files"]
    assert r["size_bytes"] == sum((_current(tmp_path) / f).stat().st_size for f in r["files"])
    status = json.loads((tmp_path / ".gpufleet" / "status" / "m.json").read_text())
    assert status["state"] == "done" and status["bytes_done"] == status["bytes_total"] == r["size_bytes"]
    assert not list((tmp_path / ".gpufleet" / "staging").iterdir())
    # flushed to disk before the swap; the phases are reported
    assert {"download", "validate", "fsync", "swap"} <= set(r["timings"]), r.get("timings")

    fake_hub.reset_stats()
    again = model_sync.ansible(_hf("m", repo, tmp_path))
    assert again.result["changed"] is False, again.output
    assert again.result["commit"] == sha and again.result["files"] == r["files"]
    stats = fake_hub.stats()
    assert stats.get("GET resolve file", 0) == 0 and stats.get("tree", 0) == 0  # nothing re-listed or re-fetched

    # a file changed on disk behind our back: the manifest no longer matches, so it is fetched again
    (_current(tmp_path) / "config.json").write_text("{}")
    healed = model_sync.ansible(_hf("m", repo, tmp_path))
    assert healed.result["changed"] is True
    assert json.loads((_current(tmp_path) / "config.json").read_text())["model_type"] == "llama"


def test_revision_change_and_pins(fake_hub, model_sync, tmp_path):
    repo = f"org/rev-{_uid()}"
    first = fake_hub.make_repo(repo, shards=2, seed=1, tags=["v1"])
    r1 = model_sync.ansible(_hf("m", repo, tmp_path)).result
    assert r1["commit"] == first
    before = _tree_hash(_current(tmp_path))
    second = fake_hub.make_repo(repo, shards=3, seed=2)  # main moves to a new commit with other files
    run = model_sync.direct(_hf("m", repo, tmp_path), tmp_path / "args", diff=True)
    r2 = run.result
    assert r2["changed"] is True and r2["commit"] == second != first
    assert r2["diff"]["before"]["commit"] == first and r2["diff"]["after"]["commit"] == second
    assert "model-00003-of-00003.safetensors" in r2["diff"]["after"]["files"]
    assert "model-00001-of-00002.safetensors" in r2["diff"]["before"]["files"]
    after = _tree_hash(_current(tmp_path))
    assert after != before and "model-00001-of-00002.safetensors" not in after  # old shards do not linger
    # a tag and a commit sha pin the old version
    r3 = model_sync.ansible(_hf("m", repo, tmp_path, revision="v1")).result
    assert r3["changed"] is True and r3["commit"] == first and _tree_hash(_current(tmp_path)) == before
    r4 = model_sync.ansible(_hf("m", repo, tmp_path, revision=first)).result
    assert r4["changed"] is False and r4["commit"] == first


def test_gated_repo_and_token_never_printed(fake_hub, model_sync, tmp_path):
    canary = f"hf_CANARY{_uid()}{_uid()}"
    repo = f"org/gated-{_uid()}"
    fake_hub.make_repo(repo, gated=True, tokens=[canary])
    no_token = model_sync.ansible(_hf("g", repo, tmp_path))
    assert no_token.failed
    assert no_token.result["msg"].startswith(f"repo {repo} is gated: accept its terms on the hub and pass a token")
    assert no_token.result["failure_class"] == "gated"
    assert not (tmp_path / "g").exists()

    wrong = model_sync.ansible(_hf("g", repo, tmp_path, token=f"{canary}x"), verbosity=3)
    assert wrong.failed and "is gated" in wrong.result["msg"]
    assert canary not in wrong.output

    ok = model_sync.ansible(_hf("g", repo, tmp_path, token=canary), verbosity=3, diff=True)
    assert not ok.failed, ok.output
    assert ok.result["changed"] is True
    assert canary not in ok.output
    noop = model_sync.ansible(_hf("g", repo, tmp_path, token=canary), verbosity=3)
    assert noop.result["changed"] is False and canary not in noop.output
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert canary.encode() not in p.read_bytes(), f"token written to {p}"


def test_unknown_repo_and_revision(fake_hub, model_sync, tmp_path):
    repo = f"org/known-{_uid()}"
    fake_hub.make_repo(repo)
    r = model_sync.ansible(_hf("u", f"org/missing-{_uid()}", tmp_path)).result
    assert r["failed"] and r["failure_class"] == "repo_not_found" and "not found on" in r["msg"]
    r = model_sync.ansible(_hf("u", repo, tmp_path, revision="no-such-branch")).result
    assert r["failed"] and r["failure_class"] == "revision_not_found"
    assert "revision 'no-such-branch' not found in repo" in r["msg"]


def test_patterns(fake_hub, model_sync, tmp_path):
    repo = f"org/pat-{_uid()}"
    fake_hub.make_repo(repo, shards=2, original=True)
    r = model_sync.ansible(_hf("json", repo, tmp_path, allow_patterns=["*.json"], validate=False)).result
    assert r["files"] and all(f.endswith(".json") for f in r["files"]) and not any("/" in f for f in r["files"])
    r = model_sync.ansible(_hf("all", repo, tmp_path, ignore_patterns=["README.md"])).result
    assert "original/consolidated.00.pth" in r["files"] and "README.md" not in r["files"]
    r = model_sync.ansible(_hf("none", repo, tmp_path, allow_patterns=["*.nothing"])).result
    assert r["failed"] and "matches" in r["msg"]


def test_missing_shard_keeps_old_model(fake_hub, model_sync, model_gen, tmp_path):
    repo = f"org/shard-{_uid()}"
    good = fake_hub.make_repo(repo, shards=3, seed=1)
    assert model_sync.ansible(_hf("m", repo, tmp_path)).result["commit"] == good
    before = _tree_hash(_current(tmp_path))
    fake_hub.make_repo(repo, shards=3, seed=2, drop_files=["model-00002-of-00003.safetensors"])
    r = model_sync.ansible(_hf("m", repo, tmp_path)).result
    assert r["failed"] and r["failure_class"] == "invalid_model"
    assert "model-00002-of-00003.safetensors" in r["msg"]
    assert _tree_hash(_current(tmp_path)) == before
    # a truncated shard (size differs from its header) is caught too
    fake_hub.commit_files(
        repo,
        {
            **{
                k: v if isinstance(v, bytes) else v.read_bytes()
                for k, v in model_gen.model_files(shards=1, shard_bytes=512).items()
            },
            "model.safetensors": model_gen.safetensors_bytes(512, 3)[:-10],
        },
    )
    r = model_sync.ansible(_hf("m", repo, tmp_path)).result
    assert r["failed"] and "model.safetensors" in r["msg"] and "header says" in r["msg"]
    assert _tree_hash(_current(tmp_path)) == before
    # the same model name is still a no-op for the good commit
    assert model_sync.ansible(_hf("m", repo, tmp_path, revision=good)).result["changed"] is False


def test_check_mode_writes_nothing(fake_hub, model_sync, tmp_path):
    repo = f"org/check-{_uid()}"
    sha = fake_hub.make_repo(repo, shards=2, shard_bytes=2048)
    root = tmp_path / "models"
    run = model_sync.ansible(_hf("c", repo, root), check=True, diff=True)
    r = run.result
    assert r["changed"] is True and r["commit"] == sha
    assert "model-00002-of-00002.safetensors" in r["would_download"]
    assert r["download_bytes"] == r["size_bytes"] > 4096
    assert r["download_backend"] in ("builtin", "huggingface_hub") and r["free_bytes"] > 0
    assert not root.exists()
    real = model_sync.ansible(_hf("c", repo, root)).result
    assert real["changed"] is True and real["size_bytes"] == r["download_bytes"]
    assert model_sync.ansible(_hf("c", repo, root), check=True).result["changed"] is False


# ---------------------------------------------------------------- local


def _local_model(model_gen, path: Path) -> Path:
    for rel, data in model_gen.model_files(shards=2, shard_bytes=1024).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return path


def test_local_allowlist_escapes_and_hardlinks(model_sync, model_gen, tmp_path):
    allowed = tmp_path / "ckpts"
    outside = tmp_path / "outside"
    src = _local_model(model_gen, allowed / "mine")
    _local_model(model_gen, outside)
    root = tmp_path / "models"
    base = {"name": "loc", "source": "local", "models_root": str(root), "allowed_dirs": [str(allowed)]}

    r = model_sync.ansible({**base, "src": str(src)}).result
    assert r["changed"] is True and r["validation"]["ok"], r
    a, b = src / "config.json", _current(root, "loc") / "config.json"
    assert a.stat().st_ino == b.stat().st_ino  # same filesystem: hard links, no copy
    assert model_sync.ansible({**base, "src": str(src)}).result["changed"] is False

    r = model_sync.ansible({**base, "src": str(outside)}).result
    assert r["failed"] and "not under allowed_dirs" in r["msg"]
    r = model_sync.ansible({**base, "src": f"{allowed}/../outside"}).result
    assert r["failed"] and "'..'" in r["msg"]
    (allowed / "sneaky").symlink_to(outside)
    r = model_sync.ansible({**base, "src": str(allowed / "sneaky")}).result
    assert r["failed"] and "not under allowed_dirs" in r["msg"]
    inner = _local_model(model_gen, allowed / "inner")
    (inner / "tokenizer.model").symlink_to(outside / "tokenizer.json")
    r = model_sync.ansible({**base, "src": str(inner)}).result
    assert r["failed"] and "points outside allowed_dirs" in r["msg"]
    assert _tree_hash(_current(root, "loc")) == _tree_hash(src)  # the installed copy is untouched by the refusals

    linked = model_sync.ansible({**base, "name": "inplace", "src": str(src), "link": True}).result
    assert linked["changed"] is True
    assert os.path.realpath(Path(linked["path"])) == str(src) and linked["path"] == str(_current(root, "inplace"))
    assert model_sync.ansible({**base, "name": "inplace", "src": str(src), "link": True}).result["changed"] is False
    gone = model_sync.ansible({"name": "inplace", "state": "absent", "models_root": str(root)}).result
    assert gone["changed"] is True and not (root / "inplace").exists() and (src / "config.json").exists()


# ---------------------------------------------------------------- url


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_url_archive_checksum_and_zip_slip(model_sync, model_gen, file_server, tmp_path):
    files = {f"mymodel/{k}": v for k, v in model_gen.model_files(shards=2, shard_bytes=1024).items()}
    blob = _tar_gz(files)
    name = f"model-{_uid()}.tar.gz"
    (file_server.root / name).write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    root = tmp_path / "models"
    args = {"name": "u", "source": "url", "url": f"{file_server.url}/{name}", "models_root": str(root)}
    r = model_sync.ansible({**args, "checksum": f"sha256:{digest}"}).result
    assert r["changed"] is True and r["validation"]["ok"], r
    assert (_current(root, "u") / "config.json").exists()  # the single top directory was unwrapped
    assert model_sync.ansible({**args, "checksum": f"sha256:{digest}"}).result["changed"] is False
    before = _tree_hash(_current(root, "u"))

    bad = model_sync.ansible({**args, "checksum": "sha256:" + "0" * 64}).result
    assert bad["failed"] and bad["failure_class"] == "checksum_mismatch" and digest in bad["msg"]
    assert _tree_hash(_current(root, "u")) == before

    zname = f"slip-{_uid()}.zip"
    with zipfile.ZipFile(file_server.root / zname, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("../../evil.txt", "pwned")
    r = model_sync.ansible({**args, "url": f"{file_server.url}/{zname}"}).result
    assert r["failed"] and r["failure_class"] == "bad_archive" and "evil.txt" in r["msg"]
    assert not (tmp_path / "evil.txt").exists() and not (root / ".gpufleet" / "evil.txt").exists()
    assert _tree_hash(_current(root, "u")) == before

    tname = f"link-{_uid()}.tar"
    with tarfile.open(file_server.root / tname, "w") as t:
        info = tarfile.TarInfo("weights")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        t.addfile(info)
    r = model_sync.ansible({**args, "url": f"{file_server.url}/{tname}"}).result
    assert r["failed"] and "links outside" in r["msg"]

    dname = f"dev-{_uid()}.tar"
    with tarfile.open(file_server.root / dname, "w") as t:
        info = tarfile.TarInfo("null")
        info.type = tarfile.CHRTYPE
        info.devmajor, info.devminor = 1, 3
        t.addfile(info)
    r = model_sync.ansible({**args, "url": f"{file_server.url}/{dname}"}).result
    assert r["failed"] and "device" in r["msg"]
    assert _tree_hash(_current(root, "u")) == before


def test_url_single_gguf(model_sync, model_gen, file_server, tmp_path):
    gguf = model_gen.model_files(gguf=True)["model-Q4_K_M.gguf"]
    name = f"tiny-{_uid()}.gguf"
    (file_server.root / name).write_bytes(gguf)
    args = {"name": "gg", "source": "url", "url": f"{file_server.url}/{name}", "models_root": str(tmp_path)}
    r = model_sync.ansible(args).result
    assert r["changed"] is True and r["validation"]["format"] == "gguf" and r["files"] == [name]


# ---------------------------------------------------------------- failures on the host


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_keeps_old_model(fake_hub, model_sync, small_tmpfs, monkeypatch):
    repo = f"org/big-{_uid()}"
    fake_hub.make_repo(repo, shards=2, shard_bytes=64 * 1024, seed=1)
    # a tmpfs of 4 MiB, with the margin of the model_fs module set for this test through the direct runner
    root = small_tmpfs
    first = model_sync.ansible(_hf("m", repo, root)).result
    assert first["changed"] is True, first
    before = _tree_hash(_current(root))
    fake_hub.make_repo(repo, shards=4, shard_bytes=2 * 1024 * 1024, seed=2)  # 8 MiB: cannot fit
    r = model_sync.ansible(_hf("m", repo, root)).result
    assert r["failed"] and r["failure_class"] == "disk_full"
    assert "not enough disk space" in r["msg"] and "free" in r["msg"]
    assert _tree_hash(_current(root)) == before
    assert not list((root / ".gpufleet" / "staging").iterdir())  # nothing was written for it


@pytest.mark.parametrize("backend", ["builtin", "huggingface_hub"])
def test_kill_during_download_then_rerun(fake_hub, model_sync, tmp_path, backend):
    repo = f"org/kill-{_uid()}"
    old = fake_hub.make_repo(repo, shards=2, shard_bytes=4096, seed=1)
    root = tmp_path / "models"
    assert model_sync.direct(_hf("m", repo, root), tmp_path).result["commit"] == old
    before = _tree_hash(_current(root))
    new = fake_hub.make_repo(repo, shards=4, shard_bytes=4 * 1024 * 1024, seed=2)
    fake_hub.set_options(repo, throttle_bps=512 * 1024)  # per response: ~8 s for the new shards
    proc = model_sync.spawn(_hf("m", repo, root, download_backend=backend), tmp_path)
    status = root / ".gpufleet" / "status" / "m.json"
    deadline = time.monotonic() + 120
    started = None
    while time.monotonic() < deadline and proc.poll() is None:
        st = json.loads(status.read_text()) if status.exists() else {}
        if st.get("state") == "downloading":
            started = started or time.monotonic()
            if backend == "builtin" and st.get("bytes_done", 0) >= 2 * 1024 * 1024:
                break  # partial files are on disk
            if backend != "builtin" and time.monotonic() - started > 2:
                break  # huggingface_hub writes 10 MB chunks: nothing partial is visible, kill mid-way
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"no download seen: {status.read_text() if status.exists() else 'no status'}")
    assert proc.poll() is None, "the download finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _tree_hash(_current(root)) == before  # kill -9 mid-download: the installed model is intact
    staging = list((root / ".gpufleet" / "staging").iterdir())
    assert len(staging) == 1  # the partial download is there to be resumed (or cleaned)
    fake_hub.set_options(repo, throttle_bps=0)
    fake_hub.reset_stats()
    r = model_sync.direct(_hf("m", repo, root, download_backend=backend), tmp_path).result
    assert r["changed"] is True and r["commit"] == new and r["validation"]["ok"], r
    if backend == "builtin":  # partial shards were resumed with Range requests, not fetched again
        assert fake_hub.stats()["bytes_served"] <= r["size_bytes"] - 2 * 1024 * 1024
    assert not list((root / ".gpufleet" / "staging").iterdir())
    assert not list(root.rglob("*.incomplete"))


def test_two_concurrent_runs(fake_hub, model_sync, tmp_path):
    repo = f"org/race-{_uid()}"
    sha = fake_hub.make_repo(repo, shards=2, shard_bytes=512 * 1024)
    fake_hub.set_options(repo, throttle_bps=1024 * 1024)
    root = tmp_path / "models"
    procs = [model_sync.spawn(_hf("m", repo, root), tmp_path / str(i)) for i in range(2)]
    results = []
    for p in procs:
        out, _err = p.communicate(timeout=120)
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(not r.get("failed") for r in results), results
    assert sorted(r["changed"] for r in results) == [False, True]  # one downloaded, the other waited and saw it
    assert all(r["commit"] == sha for r in results)
    # a run that cannot wait long enough says so: the lock is held (by this process, through the same flock a
    # running model_sync holds) for as long as the quick run takes, however slow the machine is
    fake_hub.make_repo(repo, shards=2, shard_bytes=512 * 1024, seed=5)  # a new commit: the quick run needs the lock
    with store.model_lock(str(root), "m", 5):
        quick = model_sync.direct(_hf("m", repo, root, lock_timeout=1), tmp_path / "quick").result
    fake_hub.set_options(repo, throttle_bps=0)
    assert quick.get("failed") and quick["failure_class"] == "locked" and "another model_sync" in quick["msg"]
    assert f"held by pid {os.getpid()}" in quick["msg"]


# ---------------------------------------------------------------- absent


def test_absent_refuses_model_in_use(fake_hub, model_sync, tmp_path):
    docker = shutil.which("docker")
    image = "gpufleet/bed-base:bookworm"
    if (
        not docker
        or subprocess.run([docker, "image", "inspect", image], capture_output=True, check=False).returncode != 0
    ):
        pytest.skip(f"needs dockerd and {image} (sim/bed.sh up)")
    repo = f"org/inuse-{_uid()}"
    fake_hub.make_repo(repo)
    root = tmp_path / "models"
    assert model_sync.ansible(_hf("m", repo, root)).result["changed"] is True
    name = f"gpufleet-test-inuse-{_uid()}"
    mount = f"{root / 'm'}:/model:ro"
    cmd = [docker, "run", "-d", "--name", name, "--label", "gpufleet.managed=true", "-v", mount, image, "sleep", "300"]
    subprocess.run(
        cmd,
        check=True,
        capture_output=True,
    )
    try:
        r = model_sync.ansible({"name": "m", "state": "absent", "models_root": str(root)}).result
        assert r["failed"] and r["failure_class"] == "in_use" and name in r["msg"]
        assert (_current(root) / "config.json").exists()
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True, check=False)
    r = model_sync.ansible({"name": "m", "state": "absent", "models_root": str(root)}, check=True).result
    assert r["changed"] is True and (root / "m").exists()
    r = model_sync.ansible({"name": "m", "state": "absent", "models_root": str(root)}).result
    assert r["changed"] is True and not (root / "m").exists()
    assert model_sync.ansible({"name": "m", "state": "absent", "models_root": str(root)}).result["changed"] is False


def test_offline_and_async(fake_hub, model_sync, hub_env, tmp_path):
    repo = f"org/off-{_uid()}"
    sha = fake_hub.make_repo(repo)
    # under async/poll, as a long download would run
    with tempfile.TemporaryDirectory() as tree:
        env = {**hub_env, "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.tree"}
        env["ANSIBLE_CALLBACK_TREE_DIR"] = tree
        args = json.dumps(_hf("m", repo, tmp_path))
        proc = subprocess.run(
            ["ansible", "localhost", "-B", "120", "-P", "1", "-m", "gpufleet.vllm.model_sync", "-a", args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        result = json.loads((Path(tree) / "localhost").read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["changed"] is True and result["commit"] == sha and result.get("finished") == 1
    # HF_HUB_OFFLINE: what is on the host is trusted, nothing else can be fetched
    offline = type(model_sync)({**hub_env, "HF_HUB_OFFLINE": "1"})
    r = offline.ansible(_hf("m", repo, tmp_path)).result
    assert r["changed"] is False and r["commit"] == sha
    r = offline.ansible(_hf("other", repo, tmp_path)).result
    assert r["failed"] and r["failure_class"] == "offline" and "HF_HUB_OFFLINE" in r["msg"]
