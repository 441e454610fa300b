"""Hub source helpers (patterns, fast revision lookup, error mapping) and the URL source, against in-process
loopback servers."""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import hub
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import url as urlsrc

SIM = Path(__file__).resolve().parents[4] / "sim" / "hub"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_test_{name}", SIM / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def inproc_hub(tmp_path_factory):
    fakehub, make_repo = _load("fakehub"), _load("make_repo")
    root = tmp_path_factory.mktemp("hubroot")
    with fakehub.FakeHub(root) as h:
        yield h, root, make_repo


FILES = {
    "config.json": 1,
    "model-00001-of-00002.safetensors": 10,
    "model-00002-of-00002.safetensors": 10,
    "pytorch_model.bin": 20,
    "pytorch_model.bin.index.json": 1,
    "original/consolidated.00.pth": 30,
    ".gitattributes": 1,
    "tokenizer.json": 1,
}


def test_default_patterns_skip_duplicates():
    allow, ignore = hub.effective_patterns(FILES, None, None)
    got = hub.select(FILES, allow, ignore)
    assert sorted(got) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "tokenizer.json",
    ]


def test_bin_only_repo_keeps_bin():
    files = {"config.json": 1, "pytorch_model.bin": 5}
    assert "pytorch_model.bin" in hub.select(files, *hub.effective_patterns(files, None, None))


def test_user_patterns_win():
    allow, ignore = hub.effective_patterns(FILES, ["*.json", "original/"], [])
    assert sorted(hub.select(FILES, allow, ignore)) == [
        "config.json",
        "original/consolidated.00.pth",
        "pytorch_model.bin.index.json",
        "tokenizer.json",
    ]


def test_select_matches_huggingface_hub_filter():
    from huggingface_hub.utils import filter_repo_objects

    for allow, ignore in [(None, ["original/*", "*.bin"]), (["*.json", "original/"], ["tok*"]), (None, [])]:
        ref = set(filter_repo_objects(FILES, allow_patterns=allow, ignore_patterns=ignore))
        assert set(hub.select(FILES, allow, ignore)) == ref


def test_fast_resolve(inproc_hub, monkeypatch):
    h, root, make_repo = inproc_hub
    sha = make_repo.make_repo(root, "org/fast", tags=["v1"])
    assert hub.fast_resolve(h.url, "org/fast", "main", None) == sha
    assert hub.fast_resolve(h.url, "org/fast", "v1", None) == sha
    assert hub.fast_resolve(h.url, "org/fast", "nope", None) is None
    assert hub.fast_resolve(h.url, "org/none", "main", None) is None
    assert hub.fast_resolve("http://127.0.0.1:9", "org/fast", "main", None) is None
    assert hub.fast_resolve("http://unused", "org/fast", "a" * 40, None) == "a" * 40  # a commit needs no request
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.fast_resolve(h.url, "org/fast", "main", None) is None


def test_resolve_and_errors(inproc_hub, monkeypatch):
    h, root, make_repo = inproc_hub
    sha = make_repo.make_repo(root, "org/res", shards=2)
    got_sha, files, gated, xet = hub.resolve(h.url, "org/res", "main", None)
    assert xet == set()  # the fake hub never offers xet storage
    assert got_sha == sha and not gated and "model-00002-of-00002.safetensors" in files
    make_repo.make_repo(root, "org/private", private=True, tokens=["tok"])
    with pytest.raises(GpufleetError) as e:
        hub.resolve(h.url, "org/private", "main", None)
    assert e.value.details["failure_class"] == "repo_not_found"
    assert hub.resolve(h.url, "org/private", "main", "tok")[0]
    with pytest.raises(GpufleetError) as e:
        hub.resolve(h.url, "org/res", "v404", None)
    assert e.value.details["failure_class"] == "revision_not_found"
    gsha = make_repo.make_repo(root, "org/gate", gated=True, tokens=["ok"])
    assert hub.resolve(h.url, "org/gate", "main", None)[2] is True
    with pytest.raises(GpufleetError, match="repo org/gate is gated: accept its terms on the hub and pass a token"):
        hub.check_access(h.url, "org/gate", gsha, "config.json", None)
    hub.check_access(h.url, "org/gate", gsha, "config.json", "ok")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GpufleetError, match="HF_HUB_OFFLINE"):
        hub.resolve(h.url, "org/res", "main", None)


def test_fakehub_range_and_headers(inproc_hub):
    import urllib.request

    h, root, make_repo = inproc_hub
    sha = make_repo.make_repo(root, "org/range", shards=1, shard_bytes=1000)
    req = urllib.request.Request(f"{h.url}/org/range/resolve/main/model.safetensors", headers={"Range": "bytes=8-15"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 206 and len(r.read()) == 8
        assert r.headers["X-Repo-Commit"] == sha and r.headers["Content-Range"].endswith(
            "/" + r.headers["X-Linked-Size"]
        )
        assert not any(k.lower().startswith("x-xet") for k in r.headers)


@pytest.fixture
def files_server(tmp_path):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: Quiet(*a, directory=str(tmp_path), **k))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", tmp_path
    srv.shutdown()
    srv.server_close()


def test_url_fetch_and_checksum(files_server, tmp_path):
    url, root = files_server
    (root / "w.gguf").write_bytes(b"GGUF" + b"1" * 100)
    digest = hashlib.sha256((root / "w.gguf").read_bytes()).hexdigest()
    out = tmp_path / "dl"
    out.mkdir()
    assert urlsrc.remote_size(f"{url}/w.gguf") == 104
    got = urlsrc.fetch(f"{url}/w.gguf", str(out / "w.gguf"), digest)
    assert got == {"size": 104, "sha256": digest}
    with pytest.raises(GpufleetError, match="checksum mismatch") as e:
        urlsrc.fetch(f"{url}/w.gguf", str(out / "x.gguf"), "0" * 64)
    assert e.value.details["failure_class"] == "checksum_mismatch"
    assert not (out / "x.gguf.part").exists() and not (out / "x.gguf").exists()
    with pytest.raises(GpufleetError, match="HTTP 404"):
        urlsrc.remote_size(f"{url}/missing.tar")


@pytest.mark.parametrize("bad", ["md5:abc", "sha256:xyz", "sha256:" + "0" * 63])
def test_checksum_format(bad):
    with pytest.raises(GpufleetError, match="sha256:<64 hex digits>"):
        urlsrc.parse_checksum(bad)


def test_url_file_name():
    assert urlsrc.file_name("https://x/a/b%20c.tar.gz?x=1") == "b c.tar.gz"
    with pytest.raises(GpufleetError, match="http"):
        urlsrc.file_name("file:///etc/passwd")
    with pytest.raises(GpufleetError, match="file name"):
        urlsrc.file_name("https://x/")


def test_choose_backend(monkeypatch):
    wanted = {"a.safetensors": 1}
    assert hub.choose_backend("huggingface_hub", wanted, set()) == "huggingface_hub"
    # huggingface_hub is the default; the built-in downloader only when asked for by name.
    assert hub.choose_backend("auto", wanted, set()) == "huggingface_hub"
    assert hub.choose_backend("builtin", wanted, set()) == "builtin"
    monkeypatch.setattr(hub, "xet_available", lambda: True)
    # Files on xet storage need hf_xet, which only huggingface_hub drives.
    assert hub.choose_backend("builtin", wanted, {"a.safetensors"}) == "huggingface_hub"
    assert hub.choose_backend("builtin", wanted, {"other"}) == "builtin"


def test_builtin_download_resumes_and_maps_errors(inproc_hub, tmp_path):
    h, root, make_repo = inproc_hub
    sha = make_repo.make_repo(root, "org/dl", shards=2, shard_bytes=300_000, gated=True, tokens=["tk"])
    files = hub.resolve(h.url, "org/dl", "main", None)[1]
    staging = tmp_path / "st"
    with pytest.raises(GpufleetError, match="is gated"):
        hub.download_builtin(h.url, "org/dl", sha, None, str(staging), files)
    # a previous run left half a shard behind
    shard = "model-00001-of-00002.safetensors"
    blob = root / "org" / "dl" / "blobs" / make_repo.load_repo(root, "org/dl")["commits"][sha]["files"][shard]["sha256"]
    part = staging / ".gpufleet-partial" / (shard + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(blob.read_bytes()[:100_000])
    moved = hub.download_builtin(h.url, "org/dl", sha, "tk", str(staging), files)
    assert moved == sum(files.values()) - 100_000  # resumed, not restarted
    assert (staging / shard).read_bytes() == blob.read_bytes()
    assert not (staging / ".gpufleet-partial").exists()
    assert hub.download_builtin(h.url, "org/dl", sha, "tk", str(staging), files) == 0


def test_tuned_huggingface_hub_download_is_byte_exact(inproc_hub, tmp_path, monkeypatch):
    """The transfer tuning (1 MiB socket reads handed on as they come) changes how bytes flow, never which bytes."""
    import importlib

    from huggingface_hub import constants

    conns = []
    for modname in ("httpcore2._sync.http11", "httpcore._sync.http11"):
        try:
            conns.append(importlib.import_module(modname).HTTP11Connection)
        except ImportError:
            continue
    # restored after the test: the tuning is process-wide
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", constants.DOWNLOAD_CHUNK_SIZE)
    for conn in conns:
        monkeypatch.setattr(conn, "READ_NUM_BYTES", conn.READ_NUM_BYTES)

    h, root, make_repo = inproc_hub
    sha = make_repo.make_repo(root, "org/tuned", shards=2, shard_bytes=3 * 1024 * 1024 + 17)
    files = hub.resolve(h.url, "org/tuned", "main", None)[1]
    staging = tmp_path / "st"
    hub.download(h.url, "org/tuned", sha, None, str(staging), None, [])
    assert conns, "huggingface_hub >= 1 talks through httpcore(2)"
    for conn in conns:
        assert conn.READ_NUM_BYTES >= hub.HTTP_READ_BYTES
    assert constants.DOWNLOAD_CHUNK_SIZE is None  # every read goes to the file as it arrives, no re-chunking
    blobs = make_repo.load_repo(root, "org/tuned")["commits"][sha]["files"]
    for name, size in files.items():
        got = (staging / name).read_bytes()
        assert len(got) == size
        assert got == (root / "org" / "tuned" / "blobs" / blobs[name]["sha256"]).read_bytes(), name
