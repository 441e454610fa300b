"""Pure logic of the vLLM stand-in (sim/standin): argv per flag table, LoRA specs, metrics text, model resolution."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

STANDIN = Path(__file__).resolve().parents[3] / "sim" / "standin"
sys.path.insert(0, str(STANDIN))

from standin import argv, hub, tables  # noqa: E402
from standin.metrics import Metrics  # noqa: E402

REAL = Path(__file__).resolve().parents[3] / "plugins" / "module_utils" / "_vllm" / "flag_tables"


@pytest.mark.parametrize(
    ("text", "value"),
    [("2048", 2048), ("32k", 32000), ("32K", 32768), ("25.6k", 25600), ("1m", 1000000), ("1M", 1048576)],
)
def test_human_readable_int(text, value):
    assert argv.human_readable_int(text) == value


def test_human_readable_int_rejects_garbage():
    for bad in ("lots", "1.5K", "2t"):
        with pytest.raises((ValueError, argv.argparse.ArgumentTypeError)):
            argv.human_readable_int(bad)


def test_normalize_like_flexible_argument_parser():
    assert argv.normalize(["--max_model_len", "10", "--gpu_memory_utilization=0.5", "-tp", "a_b", "--hf_overrides.a_b"]) == [
        "--max-model-len", "10", "--gpu-memory-utilization=0.5", "-tp", "a_b", "--hf-overrides.a_b"]  # fmt: skip
    new = {"underscore_names": True, "dotted_json": True, "O_shorthand": "--optimization-level"}
    assert argv.normalize(["-O3", "-O", "2", "-O=1"], new) == [
        "--optimization-level", "3", "--optimization-level", "2", "--optimization-level", "1"]  # fmt: skip
    mid = {"underscore_names": True, "dotted_json": True, "O_shorthand": "-O"}
    assert argv.normalize(["-O3", "-O", "2"], mid) == ["-O.level=3", "-O.level", "2"]
    assert argv.expand_dotted(["m", "-O.level", "3", "--a.b.c=x", "--a.d", "1"]) == [
        "m", "-O", '{"level": 3}', "--a", '{"b": {"c": "x"}, "d": 1}']  # fmt: skip


def test_tables_available_and_unknown_version_falls_back():
    assert list(tables.available(REAL)) == ["0.8.5", "0.10.2", "0.33.0"]
    assert tables.load("99.0.0", REAL)["version"] == "0.33.0"
    assert tables.load("0.11.0", REAL)["version"] == "0.10.2"  # the newest table not newer than it
    assert tables.load("0.10.2", REAL)["version"] == "0.10.2"


def test_stand_in_table_dir_override(tmp_path, monkeypatch):
    (tmp_path / "v0_10_2.py").write_text('TABLE = {"version": "0.10.2", "generated": "mine", "actions": []}')
    monkeypatch.setenv("STANDIN_TABLES", str(tmp_path))
    assert list(tables.available()) == ["0.10.2"]
    assert tables.load("0.33.0")["generated"] == "mine"


def test_parse_serve_positional_and_types():
    t = tables.load("0.10.2", REAL)
    ns, warnings = argv.parse(t, ["org/m", "--max_model_len", "4k", "--served-model-name", "a", "b", "-tp", "2"])
    assert ns.model == "org/m"
    assert ns.max_model_len == 4000
    assert ns.served_model_name == ["a", "b"]
    assert ns.tensor_parallel_size == 2
    assert warnings == []


def test_swap_space_differs_between_versions():
    old, new = tables.load("0.10.2", REAL), tables.load("0.33.0", REAL)
    ns, _warnings = argv.parse(old, ["m", "--swap-space", "4"])
    assert ns.swap_space == 4.0
    with pytest.raises(SystemExit):
        argv.parse(new, ["m", "--swap-space", "4"])


def test_boolean_optional_both_forms():
    t = tables.load("0.10.2", REAL)
    assert argv.parse(t, ["m", "--enable-prefix-caching"])[0].enable_prefix_caching is True
    assert argv.parse(t, ["m", "--no-enable-prefix-caching"])[0].enable_prefix_caching is False
    assert argv.parse(t, ["m"])[0].enable_prefix_caching is None


def test_lora_modules_forms():
    got = argv.lora_modules(["a=/l/a", json.dumps({"name": "b", "path": "/l/b", "base_model_name": "x"})], "base")
    assert got == [{"name": "a", "path": "/l/a", "base_model_name": "base"},
                   {"name": "b", "path": "/l/b", "base_model_name": "x"}]  # fmt: skip
    with pytest.raises(ValueError):
        argv.lora_modules(["justaname"], "base")


def test_metrics_names_per_version():
    m = Metrics("0.10.2", "tiny")
    m.start()
    m.finish(prompt=5, gen=7, ttft=0.01, e2e=0.4, reason="length")
    text = m.render()
    assert 'vllm:generation_tokens_total{engine="0",model_name="tiny"} 7.0' in text
    assert 'vllm:request_success_total{finished_reason="length",engine="0",model_name="tiny"} 1.0' in text
    assert 'vllm:e2e_request_latency_seconds_bucket{engine="0",model_name="tiny",le="0.5"} 1.0' in text
    assert 'vllm:e2e_request_latency_seconds_bucket{engine="0",model_name="tiny",le="0.3"} 0.0' in text
    assert "vllm:kv_cache_usage_perc{" in text
    old = Metrics("0.8.5", "tiny").render()
    assert 'vllm:gpu_cache_usage_perc{model_name="tiny"}' in old
    assert "vllm:kv_cache_usage_perc" not in old
    assert "vllm:gpu_cache_usage_perc" not in Metrics("0.33.0", "tiny").render()


# --- model resolution against a tiny local hub


class _Hub(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/org/ok/resolve/main/config.json":
            body = b'{"architectures": ["X"], "max_position_embeddings": 1024}'
            self.send_response(200)
            self.send_header("X-Repo-Commit", "a" * 40)
            self.send_header("ETag", '"abc123"')
        elif self.path.startswith("/org/gated/"):
            body = b"{}"
            self.send_response(401)
            self.send_header("X-Error-Code", "GatedRepo")
        else:
            body = b"{}"
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    yield tmp_path / "hf" / "hub"
    srv.shutdown()


def test_hub_download_then_cache(fake_hub, monkeypatch):
    r = hub.resolve("org/ok")
    assert r.downloaded and r.config["architectures"] == ["X"]
    assert (fake_hub / "models--org--ok" / "snapshots" / ("a" * 40) / "config.json").is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = hub.resolve("org/ok")
    assert not again.downloaded and again.config["max_position_embeddings"] == 1024


def test_hub_errors(fake_hub, monkeypatch):
    with pytest.raises(hub.HubError) as gated:
        hub.resolve("org/gated")
    assert gated.value.exc_type.endswith("GatedRepoError")
    assert "401 Client Error" in gated.value.text and "Cannot access gated repo" in gated.value.text
    with pytest.raises(hub.HubError) as missing:
        hub.resolve("org/missing")
    assert "Repository Not Found for url" in missing.value.text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError) as offline:
        hub.resolve("org/other")
    assert offline.value.exc_type.endswith("LocalEntryNotFoundError")


def test_local_dir_needs_config_json(tmp_path):
    with pytest.raises(hub.HubError) as e:
        hub.resolve(str(tmp_path))
    assert "Invalid repository ID or local directory specified" in e.value.text
    (tmp_path / "config.json").write_text("{}")
    assert hub.resolve(str(tmp_path)).local


def test_fail_completions_by_env_or_by_a_file_in_the_model(tmp_path, monkeypatch):
    """Issue #15: the stand-in can be told to fail completions (vllm_container's smoke_failed case)."""
    from standin.api import FAIL_COMPLETIONS_FILE, fail_completions

    monkeypatch.delenv("STANDIN_FAIL", raising=False)
    assert not fail_completions(str(tmp_path)) and not fail_completions("org/model")
    (tmp_path / FAIL_COMPLETIONS_FILE).write_text("")
    assert fail_completions(str(tmp_path))
    monkeypatch.setenv("STANDIN_FAIL", "completions")
    assert fail_completions("org/model")


def test_api_keeps_the_connection_after_an_early_answer_and_sends_without_nagle():
    """A 401 (or 404) answered before its body is read must not break keep-alive (the body would be parsed as the
    next request), and responses go out with TCP_NODELAY like uvicorn's (else Nagle + delayed ACK: ~40 ms each)."""
    import http.client

    from standin import api
    from standin.vlog import VLog

    assert api.Handler.disable_nagle_algorithm is True
    srv = api.bind("127.0.0.1", 0)
    state = api.ServerState(version="0.10.2", served_names=["m"], model_path="m", max_model_len=2048,
                            api_keys=["k"], access_log=False, metrics=Metrics("0.10.2", "m"), log=VLog("0.10.2"))  # fmt: skip
    t = threading.Thread(target=api.serve, args=(srv, state), daemon=True)
    t.start()
    srv._refuser.join(10)  # serve() ends the start-up refusal first (the listen backlog holds our connection)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 1})
        statuses = []
        for auth, path in (
            ("Bearer wrong", "/v1/completions"),
            ("Bearer k", "/v1/nothing"),
            ("Bearer k", "/v1/completions"),
        ):
            conn.request("POST", path, body=body, headers={"Authorization": auth, "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        assert statuses == [401, 404, 200]
        conn.close()
    finally:
        srv.shutdown()
        srv.server_close()
