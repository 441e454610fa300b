"""The OpenAI-compatible HTTP API of the stand-in (http.server, one thread per request)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import re
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .metrics import Metrics
from .tables import version_key
from .vlog import VLog

WORDS = (
    "the of and to in is that it was for on are as with his they at be this from have or by one had not but what all "
    "were when we there can an your which their said if do will each about how up out them then she many some so "
    "these would other into has more her two like him see time could no make than first been its who now people my "
    "made over did down only way find use may water long little very after words called just where most know"
).split()


@dataclass
class ServerState:
    version: str
    served_names: list[str]
    model_path: str
    max_model_len: int
    loras: list[dict[str, str]] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)
    dev_mode: bool = False
    sleep_enabled: bool = True
    access_log: bool = True
    request_delay: float = 0.0
    created: int = field(default_factory=lambda: int(time.time()))
    sleeping: bool = False
    sleep_level: int = 0
    woken: threading.Condition = field(default_factory=threading.Condition)
    lora_runtime: bool = False
    metrics: Metrics | None = None
    log: VLog | None = None

    @property
    def v(self) -> tuple[int, ...]:
        return version_key(self.version)


FAIL_COMPLETIONS_FILE = "standin-fail-completions"


def fail_completions(model_path: str) -> bool:
    """Completions and chat answer 500 (the rest serves): ``STANDIN_FAIL=completions``, or a file named
    ``standin-fail-completions`` in the served model directory (a model revision that loads but cannot generate)."""
    if os.environ.get("STANDIN_FAIL", "").strip().lower() == "completions":
        return True
    return model_path.startswith("/") and os.path.exists(os.path.join(model_path, FAIL_COMPLETIONS_FILE))


def count_tokens(text: str) -> int:
    return max(1, len(re.findall(r"\w+|[^\w\s]", text)))


def fake_text(seed: str, n: int) -> str:
    rnd = random.Random(hashlib.sha256(seed.encode()).digest())
    return " " + " ".join(rnd.choice(WORDS) for _i in range(n))


class Handler(BaseHTTPRequestHandler):
    server_version = "uvicorn"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as uvicorn's asyncio transports: headers and body go out as two writes, and with Nagle the second
    # waits for the client's delayed ACK of the first (up to 40 ms per response on a keep-alive connection).
    disable_nagle_algorithm = True
    state: ServerState  # set on the subclass by make_server
    _raw_body: bytes = b""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _access(self, status: int) -> None:
        st = self.state
        if st.access_log and st.log:
            phrase = self.responses.get(status, ("",))[0]
            st.log.uvicorn(f'{self.client_address[0]}:{self.client_address[1]} - "{self.command} {self.path} '
                           f'{self.request_version}" {status} {phrase}')  # fmt: skip

    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._access(status)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def _error(self, status: int, message: str, typ: str, param: str | None = None) -> None:
        if self.state.v >= (0, 11):
            self._json(status, {"error": {"message": message, "type": typ, "param": param, "code": status}})
        else:
            self._json(status, {"object": "error", "message": message, "type": typ, "param": param, "code": status})

    def _read_body(self) -> None:
        """Read the request's body before any answer: an answer that leaves it unread (a 401, a 404) would make
        the rest of a keep-alive connection parse the body as the next request."""
        n = int(self.headers.get("content-length") or 0)
        self._raw_body = self.rfile.read(n) if n > 0 else b""

    def _body(self) -> Any:
        if not self._raw_body:
            return {}
        return json.loads(self._raw_body)

    def _authorized(self, path: str) -> bool:
        keys = self.state.api_keys
        if not keys or not path.startswith("/v1") or self.command == "OPTIONS":
            return True
        auth = self.headers.get("Authorization", "")
        scheme, _sep, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return any(hmac.compare_digest(token.encode(), k.encode()) for k in keys)

    # --- routing
    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_HEAD(self) -> None:
        self._route("GET")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path
        st = self.state
        try:
            self._read_body()
        except ValueError:
            self.close_connection = True
            self._error(400, "Invalid request: bad content-length", "BadRequestError")
            return
        if not self._authorized(path):
            self._json(401, {"error": "Unauthorized"})
            return
        routes = {
            ("GET", "/health"): self.health,
            ("GET", "/ping"): self.health,
            ("POST", "/ping"): self.health,
            ("GET", "/version"): lambda q: self._json(200, {"version": st.version}),
            ("GET", "/metrics"): self.metrics,
            ("GET", "/v1/models"): self.models,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/v1/chat/completions"): self.chat,
        }
        if st.dev_mode:
            routes.update({("POST", "/sleep"): self.sleep, ("POST", "/wake_up"): self.wake_up,
                           ("GET", "/is_sleeping"): self.is_sleeping})  # fmt: skip
        if st.lora_runtime:
            routes.update({("POST", "/v1/load_lora_adapter"): self.load_lora,
                           ("POST", "/v1/unload_lora_adapter"): self.unload_lora})  # fmt: skip
        fn = routes.get((method, path))
        if fn is None:
            if any(p == path for (_m, p) in routes):
                self._json(405, {"detail": "Method Not Allowed"})
            else:
                self._json(404, {"detail": "Not Found"})
            return
        try:
            fn(parse_qs(url.query))
        except (ValueError, KeyError, TypeError) as e:
            self._error(400, f"Invalid request: {e}", "BadRequestError")

    # --- endpoints
    def health(self, q: dict) -> None:
        self._send(200, b"")

    def metrics(self, q: dict) -> None:
        assert self.state.metrics
        self._send(200, self.state.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")

    def _perm(self) -> list[dict[str, Any]]:
        return [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": self.state.created,
                 "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                 "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False, "organization": "*",
                 "group": None, "is_blocking": False}]  # fmt: skip

    def models(self, q: dict) -> None:
        st = self.state
        data = [{"id": n, "object": "model", "created": st.created, "owned_by": "vllm", "root": st.model_path,
                 "parent": None, "max_model_len": st.max_model_len, "permission": self._perm()}
                for n in st.served_names]  # fmt: skip
        data += [{"id": lo["name"], "object": "model", "created": st.created, "owned_by": "vllm", "root": lo["path"],
                  "parent": lo["base_model_name"], "max_model_len": None, "permission": self._perm()}
                 for lo in st.loras]  # fmt: skip
        self._json(200, {"object": "list", "data": data})

    def _check_model(self, body: dict) -> str | None:
        st = self.state
        name = body.get("model") or st.served_names[0]
        if name in st.served_names or any(lo["name"] == name for lo in st.loras):
            return name
        self._error(404, f"The model `{name}` does not exist.", "NotFoundError", "model")
        return None

    def _generate(self, body: dict, prompt_text: str, default_max: int | None) -> tuple[str, int, int, str] | None:
        st = self.state
        if fail_completions(st.model_path):
            # A server that loads and lists its model but cannot answer one request (a broken revision): vLLM's
            # answer when the engine fails a request.
            self._error(500, "EngineCore encountered an issue: RuntimeError: CUDA error: an illegal memory access "
                        "was encountered (standin: completions fail)", "InternalServerError")  # fmt: skip
            return None
        if st.sleeping and not self._held_while_asleep():
            self._error(503, "The engine is sleeping; call /wake_up first.", "ServiceUnavailableError")
            return None
        prompt_tokens = count_tokens(prompt_text)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max
        room = st.max_model_len - prompt_tokens
        if max_tokens is not None and max_tokens > room:
            self._error(
                400,
                f"This model's maximum context length is {st.max_model_len} tokens. However, you requested "
                f"{max_tokens + prompt_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion.",
                "BadRequestError",
            )
            return None
        if max_tokens is None:
            n, reason = min(16, room), "stop"
        else:
            n, reason = int(max_tokens), "length"
        n = max(0, min(n, 4096))
        text = fake_text(f"{body.get('model')}|{prompt_text}|{body.get('seed')}", n)
        return text, prompt_tokens, n, reason

    def _held_while_asleep(self) -> bool:
        """vLLM from 0.16 (the engine's scheduler is paused while it sleeps) keeps a request that arrives during sleep
        in its waiting queue (vllm:num_requests_waiting) until /wake_up: held here, at most STANDIN_SLEEP_HOLD_S
        (default 600) seconds, then 503. Older images answer 503 at once (real vLLM before 0.16 crashed the engine).
        True when the server woke up while the request waited."""
        st = self.state
        if st.v < (0, 16) or not st.metrics:
            return False
        limit = time.monotonic() + float(os.environ.get("STANDIN_SLEEP_HOLD_S") or 600)
        with st.metrics.lock:
            st.metrics.waiting += 1
        try:
            with st.woken:
                while st.sleeping and time.monotonic() < limit:
                    st.woken.wait(max(0.0, min(1.0, limit - time.monotonic())))
        finally:
            with st.metrics.lock:
                st.metrics.waiting -= 1
        return not st.sleeping

    def _run(self, prompt_tokens: int, n: int, reason: str) -> None:
        st = self.state
        assert st.metrics
        t0 = time.monotonic()
        st.metrics.start()
        if st.request_delay:
            time.sleep(st.request_delay)
        e2e = time.monotonic() - t0
        st.metrics.finish(prompt_tokens, n, min(e2e, 0.001 + e2e / 4), e2e, reason)

    def completions(self, q: dict) -> None:
        body = self._body()
        name = self._check_model(body)
        if not name:
            return
        prompt = body.get("prompt", "")
        prompt_text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        gen = self._generate(body, prompt_text, 16)
        if not gen:
            return
        text, pt, n, reason = gen
        self._run(pt, n, reason)
        rid = f"cmpl-{uuid.uuid4().hex}"
        usage = {"prompt_tokens": pt, "total_tokens": pt + n, "completion_tokens": n, "prompt_tokens_details": None}
        if body.get("stream"):
            chunks = [{"id": rid, "object": "text_completion", "created": int(time.time()), "model": name,
                       "choices": [{"index": 0, "text": w, "logprobs": None, "finish_reason": None,
                                    "stop_reason": None}]} for w in re.findall(r" \S+", text)]  # fmt: skip
            if chunks:
                chunks[-1]["choices"][0]["finish_reason"] = reason
            self._stream(chunks, usage, body, rid, name, "text_completion")
            return
        self._json(200, {"id": rid, "object": "text_completion", "created": int(time.time()), "model": name,
                         "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason,
                                      "stop_reason": None, "prompt_logprobs": None}],
                         "usage": usage, "kv_transfer_params": None})  # fmt: skip

    def chat(self, q: dict) -> None:
        body = self._body()
        name = self._check_model(body)
        if not name:
            return
        msgs = body.get("messages") or []
        parts = []
        for m in msgs:
            c = m.get("content")
            if isinstance(c, list):
                c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
            parts.append(f"<|{m.get('role', 'user')}|> {c or ''}")
        prompt_text = "\n".join(parts) + "\n<|assistant|>"
        gen = self._generate(body, prompt_text, None)
        if not gen:
            return
        text, pt, n, reason = gen
        self._run(pt, n, reason)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        usage = {"prompt_tokens": pt, "total_tokens": pt + n, "completion_tokens": n, "prompt_tokens_details": None}
        content = text.strip()
        if body.get("stream"):
            words = re.findall(r" ?\S+", content)
            chunks = [{"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": name,
                       "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None}]}]  # fmt: skip
            chunks += [{"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": name,
                        "choices": [{"index": 0, "delta": {"content": w}, "logprobs": None,
                                     "finish_reason": None}]} for w in words]  # fmt: skip
            chunks[-1]["choices"][0]["finish_reason"] = reason
            self._stream(chunks, usage, body, rid, name, "chat.completion.chunk")
            return
        self._json(200, {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": name,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                                              "refusal": None, "annotations": None, "audio": None,
                                                              "function_call": None, "tool_calls": [],
                                                              "reasoning_content": None},
                                      "logprobs": None, "finish_reason": reason, "stop_reason": None}],
                         "service_tier": None, "system_fingerprint": None, "usage": usage,
                         "prompt_logprobs": None, "kv_transfer_params": None})  # fmt: skip

    def _stream(self, chunks: list[dict], usage: dict, body: dict, rid: str, name: str, obj: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        for c in chunks:
            self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            final = {"id": rid, "object": obj, "created": int(time.time()), "model": name, "choices": [],
                     "usage": usage}  # fmt: skip
            self.wfile.write(f"data: {json.dumps(final)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self._access(200)

    def sleep(self, q: dict) -> None:
        st = self.state
        assert st.log
        if not st.sleep_enabled:
            st.log.error("api_server.py:1", "Sleep mode is not enabled in the model config")
            self._send(500, b"Internal Server Error", "text/plain; charset=utf-8")
            return
        level = int((q.get("level") or ["1"])[0])
        st.log.info("api_server.py:1020", f"sleep the engine with level {level}")
        st.sleeping, st.sleep_level = True, level
        st.log.info("gpu_worker.py:104", "Sleep mode freed 70.12 GiB memory, 1.50 GiB memory is still in use.",
                    who="engine")  # fmt: skip
        st.log.info("executor_base.py:188", "It took 0.250000 seconds to fall asleep.", who="engine")
        self._send(200, b"")

    def wake_up(self, q: dict) -> None:
        st = self.state
        assert st.log
        tags = q.get("tags")
        st.log.info("api_server.py:1028", f"wake up the engine with tags: {tags}")
        with st.woken:
            st.sleeping, st.sleep_level = False, 0
            st.woken.notify_all()
        st.log.info("executor_base.py:204", f"It took 0.100000 seconds to wake up tags {tags or ['weights', 'kv_cache']}.",
                    who="engine")  # fmt: skip
        self._send(200, b"")

    def is_sleeping(self, q: dict) -> None:
        self._json(200, {"is_sleeping": self.state.sleeping})

    def load_lora(self, q: dict) -> None:
        body = self._body()
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            self._error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
            return
        if any(lo["name"] == name for lo in self.state.loras):
            self._error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
            return
        self.state.loras.append({"name": name, "path": path, "base_model_name": self.state.served_names[0]})
        self._send(200, f"Success: LoRA adapter '{name}' added successfully.".encode(), "text/plain; charset=utf-8")

    def unload_lora(self, q: dict) -> None:
        body = self._body()
        name = body.get("lora_name")
        before = len(self.state.loras)
        self.state.loras[:] = [lo for lo in self.state.loras if lo["name"] != name]
        if len(self.state.loras) == before:
            self._error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            return
        self._send(200, f"Success: LoRA adapter '{name}' removed successfully.".encode(), "text/plain; charset=utf-8")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    _refuse_stop: threading.Event
    _refuser: threading.Thread


def _refuse_until_ready(srv: Server) -> None:
    """While the engine starts, close every connection at once (clients see a reset, as with no server yet)."""
    srv.socket.settimeout(0.05)
    while not srv._refuse_stop.is_set():
        try:
            conn, _addr = srv.socket.accept()
        except (TimeoutError, OSError):
            continue
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    srv.socket.settimeout(None)


def bind(host: str | None, port: int) -> Server:
    """Claim the port now (a busy port fails before the engine starts, like vLLM); serve later with serve()."""
    h = host or ""
    Server.address_family = socket.AF_INET6 if ":" in h else socket.AF_INET
    srv = Server((h, port), Handler, bind_and_activate=False)
    try:
        srv.server_bind()
        srv.server_activate()
    except OSError:
        srv.server_close()
        raise
    srv._refuse_stop = threading.Event()
    srv._refuser = threading.Thread(target=_refuse_until_ready, args=(srv,), daemon=True)
    srv._refuser.start()
    return srv


def serve(srv: Server, state: ServerState) -> None:
    srv._refuse_stop.set()
    srv._refuser.join()
    srv.RequestHandlerClass = type("BoundHandler", (Handler,), {"state": state})
    srv.serve_forever(poll_interval=0.2)
