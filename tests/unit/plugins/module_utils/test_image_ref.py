"""vLLM version -> tag resolution, the newest-release lookup and its cache, image reference parsing."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._image import ref as ir

COMMIT = "a" * 8 + "0123456789abcdef0123456789abcdef"


def _no_lookup() -> tuple[str, str | None]:
    raise AssertionError("the release lookup must only run for empty/latest")


@pytest.mark.parametrize(
    ("version", "tag"),
    [
        ("0.8.5", "v0.8.5"),
        ("v0.8.5", "v0.8.5"),
        (" 0.10.2 ", "v0.10.2"),
        ("0.33.0", "v0.33.0"),
        ("0.8.5.post1", "v0.8.5.post1"),
        ("v0.10.1.1", "v0.10.1.1"),
        ("0.11.0rc1", "v0.11.0rc1"),
        ("nightly", "nightly"),
        (COMMIT, f"nightly-{COMMIT}"),
        (COMMIT.upper(), f"nightly-{COMMIT}"),
    ],
)
def test_resolution_table(version, tag):
    assert ir.resolve_tag(version, _no_lookup) == (tag, None)


@pytest.mark.parametrize("version", [None, "", "latest", "  "])
def test_empty_and_latest_use_the_lookup(version):
    assert ir.resolve_tag(version, lambda: ("v0.33.0", None)) == ("v0.33.0", None)


@pytest.mark.parametrize(
    "version", ["0.10", "v1", "0.8.5-cuda12", "Nightly", "a" * 39, "a" * 41, "g" * 40, "vv0.8.5", "latest ", "0.8.5 x"]
)
def test_anything_else_is_a_clear_error(version):
    if version == "latest ":  # surrounding blanks are forgiven
        assert ir.resolve_tag(version, lambda: ("v1.0.0", None))[0] == "v1.0.0"
        return
    with pytest.raises(GpufleetError) as e:
        ir.resolve_tag(version, _no_lookup)
    assert f"{version!r} is not a vLLM version" in str(e.value)
    assert e.value.details["failure_class"] == "bad_version"


def test_version_of_tag():
    assert ir.version_of_tag("v0.10.2") == "0.10.2"
    assert ir.version_of_tag("latest") is None
    assert ir.version_of_tag(f"nightly-{COMMIT}") is None


class _Server:
    def __init__(self, body: bytes, status: int = 200):
        self.hits = 0
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                srv.hits += 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/repos/vllm-project/vllm/releases/latest"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server(json.dumps({"tag_name": "v0.33.0"}).encode())
    yield s
    s.close()


def test_latest_release_is_cached_for_the_ttl(server, tmp_path):
    cache = tmp_path / "sub" / "c.json"
    t = [1000.0]
    assert ir.latest_release(server.url, str(cache), ttl=3600, now=lambda: t[0]) == ("v0.33.0", None)
    assert server.hits == 1
    assert json.loads(cache.read_text()) == {server.url: {"tag": "v0.33.0", "fetched": 1000.0}}
    t[0] = 1000.0 + 3599
    assert ir.latest_release(server.url, str(cache), ttl=3600, now=lambda: t[0])[0] == "v0.33.0"
    assert server.hits == 1
    t[0] = 1000.0 + 3600  # expired
    assert ir.latest_release(server.url, str(cache), ttl=3600, now=lambda: t[0])[0] == "v0.33.0"
    assert server.hits == 2
    assert json.loads(cache.read_text())[server.url]["fetched"] == 4600.0


def test_cache_is_per_endpoint_and_a_future_timestamp_is_not_trusted(server, tmp_path):
    cache = tmp_path / "c.json"
    cache.write_text(json.dumps({"http://other/": {"tag": "v0.1.0", "fetched": 10**10}}))
    assert ir.latest_release(server.url, str(cache), now=lambda: 5.0)[0] == "v0.33.0"
    cache.write_text(json.dumps({server.url: {"tag": "v0.1.0", "fetched": 10**10}}))
    assert ir.latest_release(server.url, str(cache), now=lambda: 5.0)[0] == "v0.33.0"
    assert server.hits == 2


def test_corrupt_cache_is_ignored(server, tmp_path):
    cache = tmp_path / "c.json"
    cache.write_text("{not json")
    assert ir.latest_release(server.url, str(cache))[0] == "v0.33.0"


def test_offline_falls_back_to_latest_with_a_warning(tmp_path):
    s = _Server(b"")
    url = s.url
    s.close()
    tag, warning = ir.latest_release(url, str(tmp_path / "c.json"), timeout=2)
    assert tag == "latest"
    assert url in warning and "'latest' tag" in warning
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize(
    ("body", "status"),
    [(b'{"message": "API rate limit exceeded"}', 403), (b'{"tag_name": "nope"}', 200), (b"<html>", 200)],
)
def test_bad_answers_fall_back_to_latest(tmp_path, body, status):
    s = _Server(body, status)
    try:
        tag, warning = ir.latest_release(s.url, str(tmp_path / "c.json"))
    finally:
        s.close()
    assert tag == "latest" and "could not look up the newest vLLM release" in warning


def test_release_without_v_prefix_gets_one(tmp_path):
    s = _Server(b'{"tag_name": "0.9.1"}')
    try:
        assert ir.latest_release(s.url, None)[0] == "v0.9.1"
    finally:
        s.close()


@pytest.mark.parametrize(
    ("ref", "parts"),
    [
        ("vllm/vllm-openai:v0.10.2", ("vllm/vllm-openai", "v0.10.2", None)),
        ("vllm/vllm-openai", ("vllm/vllm-openai", None, None)),
        ("127.0.0.1:5000/vllm/vllm-openai:v0.8.5", ("127.0.0.1:5000/vllm/vllm-openai", "v0.8.5", None)),
        ("127.0.0.1:5000/vllm/vllm-openai", ("127.0.0.1:5000/vllm/vllm-openai", None, None)),
        ("localhost/x:1", ("localhost/x", "1", None)),
        (f"reg.example.com/v/o@sha256:{'0' * 64}", ("reg.example.com/v/o", None, f"sha256:{'0' * 64}")),
        (f"v/o:t@sha256:{'0' * 64}", ("v/o", "t", f"sha256:{'0' * 64}")),
    ],
)
def test_split_reference(ref, parts):
    assert ir.split_reference(ref) == parts


@pytest.mark.parametrize("ref", ["", "Vllm/Openai:1", "v/o:bad tag", "v/o@sha256:123", "v//o", "v/o:"])
def test_split_reference_refuses_malformed(ref):
    with pytest.raises(GpufleetError):
        ir.split_reference(ref)


def test_registry_of():
    assert ir.registry_of("vllm/vllm-openai") == "docker.io"
    assert ir.registry_of("127.0.0.1:5000/vllm/vllm-openai") == "127.0.0.1:5000"
    assert ir.registry_of("ghcr.io/x/y") == "ghcr.io"
