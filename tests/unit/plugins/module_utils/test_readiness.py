from __future__ import annotations

import http.server
import threading
import time

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState, Runtime


def test_phase_only_moves_forward():
    lines = [
        "Starting to load model /m...",
        "Capturing CUDA graphs (mixed prefill-decode): 100%",
        "Loading weights took",
    ]
    assert rd.phase_of(lines) == "capturing_graphs"
    assert rd.phase_of(["INFO Application startup complete."], "compiling") == "ready"
    assert rd.phase_of([], "downloading") == "downloading"


def test_base_url():
    assert rd.base_url("0.0.0.0", 1) == "http://127.0.0.1:1"
    assert rd.base_url("::1", 2) == "http://[::1]:2"
    assert rd.base_url("10.0.0.5", 3) == "http://10.0.0.5:3"


class _Handler(http.server.BaseHTTPRequestHandler):
    ready_at = 0.0
    key = "k"

    def log_message(self, *a):
        pass

    def do_GET(self):
        if time.monotonic() < self.ready_at:
            self.send_response(503)
            self.end_headers()
            return
        if self.path == "/health":
            self.send_response(200)
            self.end_headers()
        elif self.path == "/v1/models":
            ok = self.headers.get("Authorization") == f"Bearer {self.key}"
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b'{"data":[{"id":"m"}]}' if ok else b"{}")


class _Rt(Runtime):
    def __init__(self, lines, running=True, exit_code=None):
        self.lines, self.running, self.exit_code = lines, running, exit_code

    def container(self, name):
        return ContainerState("id", "c", "running" if self.running else "exited", self.running, self.exit_code, 0, {})

    def logs(self, cid, tail=300):
        return self.lines[-tail:]

    def follow(self, cid):
        yield from self.lines


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


def test_ready_when_health_and_models_answer(server):
    _Handler.ready_at = time.monotonic() + 0.3
    base = f"http://127.0.0.1:{server.server_address[1]}"
    out = rd.wait_ready(_Rt(["Loading weights took 1s"]), "id", base, "k", timeout=10)
    assert out.ready and out.models == ["m"] and out.phase == "ready" and out.health_ok_at


def test_wrong_api_key_never_ready_times_out(server):
    _Handler.ready_at = 0
    base = f"http://127.0.0.1:{server.server_address[1]}"
    out = rd.wait_ready(_Rt(["Capturing CUDA graphs"]), "id", base, "wrong", timeout=0.5)
    assert not out.ready and out.failure_class == "timeout" and out.phase == "capturing_graphs"


def test_exit_is_classified_and_secret_masked():
    lines = ["INFO non-default args: {'api_key': 'canary-xyz'}", "torch.OutOfMemoryError: CUDA out of memory."]
    out = rd.wait_ready(_Rt(lines, running=False, exit_code=1), "id", "http://127.0.0.1:9", None, 30, ["canary-xyz"])
    assert not out.ready and out.failure_class == "gpu_oom" and out.exit_code == 1
    assert "canary-xyz" not in "\n".join(out.log_tail)
    assert out.waited_s < 10


def test_unknown_failure_hint_is_masked_too():
    lines = ["RuntimeError: could not use token canary-tok-123 for the engine"]
    out = rd.wait_ready(
        _Rt(lines, running=False, exit_code=1), "id", "http://127.0.0.1:9", None, 30, ["canary-tok-123"]
    )
    assert out.failure_class == "unknown" and "could not use token" in out.hint
    assert "canary-tok-123" not in out.hint + "\n".join(out.log_tail)


# vLLM 0.10.2's start-up log of a hub model (abridged, prefixes dropped), in the order vLLM writes it
HUB_LOG = [
    "INFO 11-23 12:00:00 [api_server.py:1896] vLLM API server version 0.10.2",
    "INFO 11-23 12:00:01 [gpu_model_runner.py:2338] Starting to load model org/tiny...",
    "INFO 11-23 12:00:01 [weight_utils.py:348] Using model weights format ['*.safetensors']",
    "INFO 11-23 12:00:09 [weight_utils.py:364] Time spent downloading weights for org/tiny: 7.981 seconds",
    "Loading safetensors checkpoint shards:   0% Completed | 0/1 [00:00<?, ?it/s]",
    "INFO 11-23 12:00:10 [default_loader.py:268] Loading weights took 0.05 seconds",
    "INFO 11-23 12:00:10 [backends.py:550] Dynamo bytecode transform time: 0.21 s",
    "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|##########| 67/67",
    "INFO:     Application startup complete.",
]


def test_downloading_comes_before_loading_and_starting_to_load_is_no_signal():
    assert rd.line_phase(HUB_LOG[1]) is None  # logged before the download
    assert [rd.line_phase(x) for x in HUB_LOG[2:]] == [
        "downloading", "downloading", "loading_weights", "loading_weights", "compiling", "capturing_graphs", "ready",
    ]  # fmt: skip
    assert rd.phase_of(HUB_LOG[:4]) == "downloading" and rd.phase_of(HUB_LOG) == "ready"


def test_phases_are_reported_in_order_even_when_the_pipes_interleave(server):
    """stdout and stderr lines can swap in the engine's log; the phases still come out complete and in order."""
    _Handler.ready_at = 0.0
    base = f"http://127.0.0.1:{server.server_address[1]}"
    swapped = [HUB_LOG[0], HUB_LOG[7], HUB_LOG[2], HUB_LOG[4], HUB_LOG[6], HUB_LOG[8]]
    out = rd.wait_ready(_Rt(swapped), "id", base, "k", timeout=10)
    assert out.ready and out.phases == [
        "starting", "downloading", "loading_weights", "compiling", "capturing_graphs", "ready",
    ]  # fmt: skip
    assert out.as_dict()["phases"] == out.phases


def test_a_failure_lists_the_phases_of_the_tail():
    lines = [*HUB_LOG[:6], "ValueError: ... KV cache is needed, which is larger than the available KV cache memory"]
    out = rd.wait_ready(_Rt(lines, running=False, exit_code=1), "id", "http://127.0.0.1:9", None, timeout=5)
    assert not out.ready and out.failure_class == "kv_cache_too_small"
    assert out.phases == ["starting", "downloading", "loading_weights"] and out.phase == "loading_weights"


# ---------------------------------------------------------------- smoke test (issue #15)


class _SmokeHandler(http.server.BaseHTTPRequestHandler):
    """/health and /v1/models answer; what /v1/completions (and chat) answer is set per test."""

    completions: tuple[int, bytes] = (200, b'{"choices":[{"text":"x"}]}')
    chat: tuple[int, bytes] = (200, b'{"choices":[{"message":{"content":"x"}}]}')
    seen: list = []

    def log_message(self, *a):
        pass

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self._answer(200, b"")
        else:
            self._answer(200, b'{"data":[{"id":"served"}]}')

    def do_POST(self):
        import json

        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        _SmokeHandler.seen.append((self.path, body, self.headers.get("Authorization")))
        if self.path == "/v1/completions":
            self._answer(*self.completions)
        elif self.path == "/v1/chat/completions":
            self._answer(*self.chat)
        elif self.path == "/v1/embeddings":
            self._answer(200, b'{"data":[{"embedding":[0.1]}]}')
        else:
            self._answer(404, b'{"detail":"Not Found"}')


@pytest.fixture
def smoke_server():
    _SmokeHandler.completions = (200, b'{"choices":[{"text":"x"}]}')
    _SmokeHandler.seen = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SmokeHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_smoke_request_counts_for_ready(smoke_server):
    out = rd.wait_ready(_Rt([]), "id", smoke_server, "key-123", timeout=10, follow=False, smoke="completions")
    assert out.ready and out.failure_class is None
    path, body, auth = _SmokeHandler.seen[0]
    assert path == "/v1/completions" and body["max_tokens"] == 1 and body["model"] == "served"
    assert auth == "Bearer key-123"


def test_smoke_failure_is_classified_with_the_answer_masked(smoke_server):
    _SmokeHandler.completions = (500, b'{"error":"engine died; api_key=key-123 token hf_abcdefghijklmnopqrstuvwxyz"}')
    out = rd.wait_ready(_Rt(["ok"]), "id", smoke_server, "key-123", timeout=10, follow=False, smoke="completions")
    assert not out.ready and out.failure_class == "smoke_failed" and out.models == ["served"]
    assert out.hint.startswith("smoke_failed: POST /v1/completions (max_tokens 1) answered 500: ")
    assert "engine died" in out.hint and "key-123" not in out.hint and "hf_abcdef" not in out.hint
    # a 200 without any choice is not a completion either
    _SmokeHandler.completions = (200, b'{"choices":[]}')
    out = rd.wait_ready(_Rt([]), "id", smoke_server, None, timeout=10, follow=False, smoke="completions")
    assert out.failure_class == "smoke_failed"


def test_smoke_falls_back_to_chat_and_embeddings_by_argv(smoke_server):
    _SmokeHandler.completions = (400, b'{"error":"this model only supports the chat completions API"}')
    out = rd.wait_ready(_Rt([]), "id", smoke_server, None, timeout=10, follow=False, smoke="completions")
    assert out.ready and [s[0] for s in _SmokeHandler.seen] == ["/v1/completions", "/v1/chat/completions"]
    assert rd.smoke_kind(["/m", "--task", "embed"]) == "embeddings"
    assert rd.smoke_kind(["/m", "--runner=pooling"]) == "embeddings"
    assert rd.smoke_kind(["/m", "--task", "generate"]) == "completions"
    _SmokeHandler.seen = []
    out = rd.wait_ready(_Rt([]), "id", smoke_server, None, timeout=10, follow=False, smoke="embeddings")
    assert out.ready and _SmokeHandler.seen[0][0] == "/v1/embeddings"


def test_no_smoke_when_off(smoke_server):
    _SmokeHandler.completions = (500, b"broken")
    out = rd.wait_ready(_Rt([]), "id", smoke_server, None, timeout=10, follow=False, smoke=None)
    assert out.ready and _SmokeHandler.seen == []


def test_smoke_plan_and_a_chosen_endpoint_never_falls_back(smoke_server):
    """smoke_request (vllm_container): auto keeps the argv's choice and the fall-back to chat; a chosen endpoint is
    sent as it is, with the chosen prompt (a chat model's template is checked with endpoint chat)."""
    assert rd.smoke_plan(["/m"]) == rd.Smoke("completions", "Hello", True)
    assert rd.smoke_plan(["/m", "--task", "embed"], {"endpoint": "auto", "prompt": None}) == rd.Smoke("embeddings")
    assert rd.smoke_plan(["/m"], {"endpoint": "chat", "prompt": "Bonjour"}) == rd.Smoke("chat", "Bonjour", False)
    smoke = rd.smoke_plan(["/m"], {"endpoint": "chat", "prompt": "Bonjour"})
    out = rd.wait_ready(_Rt([]), "id", smoke_server, None, timeout=10, follow=False, smoke=smoke)
    path, body, _auth = _SmokeHandler.seen[0]
    assert out.ready and len(_SmokeHandler.seen) == 1 and path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "user", "content": "Bonjour"}] and body["max_tokens"] == 1
    # completions chosen: a chat-only answer fails the gate instead of trying chat.
    _SmokeHandler.seen = []
    _SmokeHandler.completions = (400, b'{"error":"this model only supports the chat completions API"}')
    smoke = rd.smoke_plan(["/m"], {"endpoint": "completions", "prompt": "2+2="})
    out = rd.wait_ready(_Rt([]), "id", smoke_server, None, timeout=10, follow=False, smoke=smoke)
    assert out.failure_class == "smoke_failed" and [s[0] for s in _SmokeHandler.seen] == ["/v1/completions"]
    assert _SmokeHandler.seen[0][1]["prompt"] == "2+2="
