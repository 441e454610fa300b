# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Readiness of a vLLM server: poll ``/health`` then ``/v1/models`` while following the log for the phase, then one
real request through the OpenAI API (the smoke test: ``max_tokens`` 1, with the API key) before it counts as ready.

Polling starts fast (50 ms) and backs off to 2 s; every new log line wakes the poller at once, so the server's
"Application startup complete." is answered within milliseconds rather than at the next back-off tick.
A container that exits or restarts, or a ``wait_timeout`` that passes, ends the wait with a failure class.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import Runtime, raw_http

PHASES = ("starting", "pulling", "downloading", "loading_weights", "compiling", "capturing_graphs", "ready")
# What vLLM logs at the start of each phase (checked against vLLM 0.8-0.11 sources and logs):
# - downloading: model_executor/model_loader/weight_utils.py download_weights_from_hf() logs "Using model weights
#   format [...]" right before huggingface_hub's snapshot_download (hub ids only: a local directory never goes
#   through it), then "Time spent downloading weights for <model>: <s> seconds" when it took over 0.5 s; the
#   hub's own progress bars ("config.json: 100%|...") and "Fetching N files" may appear as well.
# - loading_weights: the checkpoint shard progress bar ("Loading safetensors checkpoint shards:   0% Completed"),
#   "Loading weights took", "Model loading took". "Starting to load model" is NOT used: vLLM logs it before the
#   download, so a hub model would show loading_weights, then downloading.
# - compiling: torch.compile / Dynamo; capturing_graphs: CUDA graph capture; ready: uvicorn's startup line.
_PHASE_PATTERNS = (
    ("downloading", r"Using model weights format|Time spent downloading weights|Fetching \d+ files|Downloading"),
    (
        "loading_weights",
        r"Loading safetensors checkpoint shards|Loading pt checkpoint shards|Loading weights took|Model loading took",
    ),
    ("compiling", r"torch\.compile|Dynamo bytecode transform|Compiling a graph"),
    ("capturing_graphs", r"Capturing CUDA graph|Graph capturing finished"),
    ("ready", r"Application startup complete"),
)
MIN_INTERVAL = 0.05
MAX_INTERVAL = 2.0
# How long a ready server's log may lag behind its /health (to report the phases seen in full).
LOG_CATCH_UP_S = 0.25


@functools.cache
def _phase_rules() -> list[tuple[str, int, re.Pattern[str]]]:
    """Compiled on first use: a no-op converge never reads a log."""
    return [(phase, PHASES.index(phase), re.compile(pat)) for phase, pat in _PHASE_PATTERNS]


def phase_of(lines: list[str] | deque, current: str = "starting") -> str:
    """The furthest phase the log lines reach (phases only move forward)."""
    best = PHASES.index(current) if current in PHASES else 0
    rules = _phase_rules()
    for line in lines:
        for _phase, idx, pat in rules:
            if idx > best and pat.search(line):
                best = idx
    return PHASES[best]


def line_phase(line: str) -> str | None:
    """The phase one log line announces, if any (regardless of the phase reached so far)."""
    for phase, _idx, pat in _phase_rules():
        if pat.search(line):
            return phase
    return None


def in_order(phases: set[str] | list[str]) -> list[str]:
    """Phases in their start-up order. The log is read from two pipes (stdout, stderr) that the engine merges in
    arrival order, so lines written a few milliseconds apart can swap; a phase is never skipped because of it."""
    return [p for p in PHASES if p in phases]


def add_phase(seen: list[str], phase: str) -> None:
    """Append ``phase`` to the phases seen unless it is already the last one."""
    if not seen or seen[-1] != phase:
        seen.append(phase)


def base_url(host: str | None, port: int) -> str:
    h = host or "127.0.0.1"
    if h in ("0.0.0.0", "::", ""):
        h = "127.0.0.1"
    if ":" in h:
        h = f"[{h}]"
    return f"http://{h}:{port}"


def http(
    url: str,
    method: str = "GET",
    api_key: str | None = None,
    timeout: float = 2.0,
    body: bytes | None = None,
    json_body: bool = False,
) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answers."""
    u = urllib.parse.urlsplit(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if json_body:
        headers["Content-Type"] = "application/json"
    path = u.path + (f"?{u.query}" if u.query else "")
    try:
        return raw_http((u.hostname or "127.0.0.1", u.port or 80), method, path or "/", headers, body, timeout)
    except (OSError, ValueError):
        return 0, b""


def models(base: str, api_key: str | None) -> list[str] | None:
    status, body = http(base + "/v1/models", api_key=api_key)
    if status != 200:
        return None
    try:
        return [m["id"] for m in json.loads(body).get("data") or []]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def is_sleeping(base: str, api_key: str | None) -> bool | None:
    status, body = http(base + "/is_sleeping", api_key=api_key)
    if status != 200:
        return None
    try:
        return bool(json.loads(body).get("is_sleeping"))
    except (ValueError, AttributeError):
        return None


def sleep(base: str, api_key: str | None, level: int = 1) -> bool:
    return http(f"{base}/sleep?level={level}", method="POST", api_key=api_key, timeout=120)[0] == 200


def wake_up(base: str, api_key: str | None) -> bool:
    return http(base + "/wake_up", method="POST", api_key=api_key, timeout=120)[0] == 200


SMOKE_TIMEOUT = 120.0
SMOKE_PROMPT = "Hello"
_POOLING = {"--task": ("embed", "embedding"), "--runner": ("pooling",), "--convert": ("embed",)}


@dataclass(frozen=True)
class Smoke:
    """The smoke request to send: its endpoint (``kind``), the prompt, and whether a completions request that the
    server has no route for may become a chat request (only when the endpoint was chosen from the argv)."""

    kind: str
    prompt: str = SMOKE_PROMPT
    fallback: bool = True


def smoke_plan(argv: list[str], request: Mapping[str, Any] | None = None) -> Smoke:
    """The smoke request for a server started with ``argv`` and vllm_container's ``smoke_request`` option
    (``endpoint``: auto, completions, chat or embeddings; ``prompt``). ``auto``: ``smoke_kind`` of the argv, with the
    fall-back to chat; an endpoint given is sent as it is (a chat model's template is then checked, for example)."""
    request = request or {}
    endpoint = str(request.get("endpoint") or "auto")
    prompt = str(request.get("prompt") or SMOKE_PROMPT)
    if endpoint == "auto":
        return Smoke(smoke_kind(argv), prompt)
    return Smoke(endpoint, prompt, fallback=False)


def smoke_kind(argv: list[str]) -> str:
    """Which request the smoke test sends: ``embeddings`` for a server whose argv says it runs an embedding model
    (``--task embed``, ``--runner pooling``, ``--convert embed``), else ``completions`` (``chat`` when the server has
    no completions endpoint for the model)."""
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if not eq and i + 1 < len(argv):
            value = argv[i + 1]
        if flag in _POOLING and value in _POOLING[flag]:
            return "embeddings"
    return "completions"


def smoke_request(
    base: str,
    api_key: str | None,
    model: str,
    kind: str,
    timeout: float,
    prompt: str = SMOKE_PROMPT,
    fallback: bool = True,
) -> tuple[str, int, bytes]:
    """One real request: (endpoint, status, body). ``completions`` falls back to chat (with ``fallback``) when the
    server has no completions route for the model (404/405, or a 400 that says the model is chat-only)."""
    bodies = {
        "completions": {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0},
        "chat": {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1},
        "embeddings": {"model": model, "input": prompt},
    }
    paths = {"completions": "/v1/completions", "chat": "/v1/chat/completions", "embeddings": "/v1/embeddings"}
    status, body = 0, b""
    for attempt in ("first", "again"):  # a connection refused right after /v1/models answered: once more
        status, body = http(
            base + paths[kind], "POST", api_key, timeout, json.dumps(bodies[kind]).encode(), json_body=True
        )
        if status or attempt == "again":
            break
        time.sleep(0.5)
    chat_only = status == 400 and b"chat" in body.lower() and b"completion" in body.lower()
    if fallback and kind == "completions" and (status in (404, 405) or chat_only):
        return smoke_request(base, api_key, model, "chat", timeout, prompt)
    return paths[kind], status, body


def smoke_ok(kind_path: str, status: int, body: bytes) -> bool:
    """A smoke answer counts when it is 200 with at least one choice (or embedding)."""
    if status != 200:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return (
        bool(data.get("data" if kind_path.endswith("embeddings") else "choices")) if isinstance(data, dict) else False
    )


@dataclass
class Outcome:
    ready: bool
    phase: str
    waited_s: float
    models: list[str] = field(default_factory=list)
    failure_class: str | None = None
    hint: str | None = None
    exit_code: int | None = None
    log_tail: list[str] = field(default_factory=list)
    health_ok_at: float | None = None  # time.time() of the first successful /health
    ready_at: float | None = None  # time.time() when readiness was established
    phases: list[str] = field(default_factory=list)  # the phases the log showed, in order

    def as_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "phase": self.phase,
            "waited_s": round(self.waited_s, 3),
            "models": self.models,
            "failure_class": self.failure_class,
            "hint": self.hint,
            "exit_code": self.exit_code,
            "health_ok_at": self.health_ok_at,
            "ready_at": self.ready_at,
            "phases": list(self.phases),
        }


def wait_ready(
    runtime: Runtime,
    cid: str,
    base: str,
    api_key: str | None,
    timeout: float,
    secrets: list[str] | None = None,
    follow: bool = True,
    smoke: Smoke | str | None = None,
) -> Outcome:
    """Wait until /health and /v1/models answer, the container dies or restarts, or ``timeout`` passes. With
    ``smoke`` (``smoke_plan``, or an endpoint as ``smoke_kind`` names it), one real request to the first served
    model must then succeed too: if not, the outcome is failure class ``smoke_failed`` with the server's answer
    (secrets masked) in its hint."""
    if isinstance(smoke, str):
        smoke = Smoke(smoke)
    t0 = time.monotonic()
    wake = threading.Event()
    lines: deque[str] = deque(maxlen=failures.TAIL_LINES)
    state = {"phase": "starting", "ended": False}
    seen = ["starting"]  # the phases the log announced (a list: copied while the reader appends; in_order sorts)
    log_ready = threading.Event()  # the reader saw the "ready" line (or the log ended)
    first = runtime.container(cid)
    restarts0 = first.restart_count if first else 0

    def reader() -> None:
        try:
            for line in runtime.follow(cid):
                lines.append(line)
                phase = line_phase(line)
                if phase is not None:
                    if phase not in seen:
                        seen.append(phase)
                    if PHASES.index(phase) > PHASES.index(state["phase"]):
                        state["phase"] = phase
                    if phase == "ready":
                        log_ready.set()
                wake.set()
        except Exception:
            pass
        state["ended"] = True
        log_ready.set()
        wake.set()

    if follow:
        threading.Thread(target=reader, daemon=True).start()

    def fail(cls_hint: tuple[str, str] | None, exit_code: int | None, timed_out: bool = False) -> Outcome:
        tail = failures.mask(runtime.logs(cid, failures.TAIL_LINES) or list(lines), secrets or [])
        cls, hint = cls_hint or failures.classify(tail, exit_code=exit_code, timed_out=timed_out)
        if timed_out and cls == "unknown":
            cls, hint = "timeout", "timeout: " + failures.hint_for("timeout")
        # The phases the tail shows that the reader may not have got to yet (it can lag behind an exit).
        found = set(list(seen))
        found.update(p for p in map(line_phase, tail) if p is not None)
        phases = in_order(found)
        phase = phases[-1] if not timed_out else state["phase"]
        return Outcome(
            ready=False,
            phase=phase,
            waited_s=time.monotonic() - t0,
            failure_class=cls,
            hint=hint,
            exit_code=exit_code,
            log_tail=tail,
            phases=phases,
        )

    interval = MIN_INTERVAL
    last_state_check = 0.0
    health_at: float | None = None
    while True:
        now = time.monotonic()
        status = http(base + "/health", timeout=2.0)[0]
        if status == 200:
            health_at = health_at or time.time()
            names = models(base, api_key)
            if names is not None:
                if follow:
                    # The log lines of the last phases may still be on their way: wait (briefly) for the reader.
                    log_ready.wait(LOG_CATCH_UP_S)
                phases = in_order({*list(seen), "ready"})
                if smoke and names:
                    left = max(1.0, min(SMOKE_TIMEOUT, timeout - (time.monotonic() - t0)))
                    path, code, answer = smoke_request(
                        base, api_key, names[0], smoke.kind, left, smoke.prompt, smoke.fallback
                    )
                    if not smoke_ok(path, code, answer):
                        return Outcome(
                            ready=False,
                            phase="ready",
                            waited_s=time.monotonic() - t0,
                            models=names,
                            failure_class="smoke_failed",
                            hint=failures.smoke_hint(path, code, answer, [api_key, *(secrets or [])]),
                            log_tail=failures.mask(
                                runtime.logs(cid, failures.TAIL_LINES) or list(lines), secrets or []
                            ),
                            health_ok_at=health_at,
                            phases=phases,
                        )
                return Outcome(
                    ready=True,
                    phase="ready",
                    waited_s=time.monotonic() - t0,
                    models=names,
                    health_ok_at=health_at,
                    ready_at=time.time(),
                    log_tail=failures.mask(list(lines)[-20:], secrets or []),
                    phases=phases,
                )
        if state["ended"] or not follow or now - last_state_check >= 1.0:
            last_state_check = now
            st = runtime.container(cid)
            if st is None:
                return fail(("unknown", "unknown: the container disappeared while starting"), None)
            if st.restart_count > restarts0 or (not st.running and st.status != "created"):
                if st.oom_killed:
                    return fail(("gpu_oom", "gpu_oom: the container was OOM-killed; lower memory use"), st.exit_code)
                return fail(None, st.exit_code)
        if now - t0 >= timeout:
            return fail(None, None, timed_out=True)
        wake.wait(min(interval, max(0.0, timeout - (now - t0))))
        if wake.is_set():
            wake.clear()
            time.sleep(0.01)  # coalesce a burst of log lines
        interval = min(interval * 1.5, MAX_INTERVAL)
