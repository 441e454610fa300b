# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Readiness of a vLLM server: poll ``/health`` then ``/v1/models`` while following the log for the phase.

Polling starts fast (50 ms) and backs off to 2 s; every new log line wakes the poller at once, so the server's
"Application startup complete." is answered within milliseconds rather than at the next back-off tick.
A container that exits or restarts, or a ``wait_timeout`` that passes, ends the wait with a failure class.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import failures
from ansible_collections.gpufleet.vllm.plugins.module_utils.runtime import Runtime, raw_http

PHASES = ("starting", "pulling", "downloading", "loading_weights", "compiling", "capturing_graphs", "ready")
_PHASE_RULES = [
    ("downloading", re.compile(r"Downloading|Fetching \d+ files|Time spent downloading weights")),
    ("loading_weights", re.compile(r"Starting to load model|Loading weights|Loading safetensors checkpoint")),
    ("compiling", re.compile(r"torch\.compile|Dynamo bytecode transform|Compiling a graph")),
    ("capturing_graphs", re.compile(r"Capturing CUDA graph|Graph capturing finished")),
    ("ready", re.compile(r"Application startup complete")),
]
MIN_INTERVAL = 0.05
MAX_INTERVAL = 2.0


def phase_of(lines: list[str] | deque, current: str = "starting") -> str:
    """The furthest phase the log lines reach (phases only move forward)."""
    best = PHASES.index(current) if current in PHASES else 0
    for line in lines:
        for phase, pat in _PHASE_RULES:
            idx = PHASES.index(phase)
            if idx > best and pat.search(line):
                best = idx
    return PHASES[best]


def base_url(host: str | None, port: int) -> str:
    h = host or "127.0.0.1"
    if h in ("0.0.0.0", "::", ""):
        h = "127.0.0.1"
    if ":" in h:
        h = f"[{h}]"
    return f"http://{h}:{port}"


def http(
    url: str, method: str = "GET", api_key: str | None = None, timeout: float = 2.0, body: bytes | None = None
) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answers."""
    u = urllib.parse.urlsplit(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
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
        }


def wait_ready(
    runtime: Runtime,
    cid: str,
    base: str,
    api_key: str | None,
    timeout: float,
    secrets: list[str] | None = None,
    follow: bool = True,
) -> Outcome:
    """Wait until /health and /v1/models answer, the container dies or restarts, or ``timeout`` passes."""
    t0 = time.monotonic()
    wake = threading.Event()
    lines: deque[str] = deque(maxlen=failures.TAIL_LINES)
    state = {"phase": "starting", "ended": False}
    first = runtime.container(cid)
    restarts0 = first.restart_count if first else 0

    def reader() -> None:
        try:
            for line in runtime.follow(cid):
                lines.append(line)
                state["phase"] = phase_of([line], state["phase"])
                wake.set()
        except Exception:
            pass
        state["ended"] = True
        wake.set()

    if follow:
        threading.Thread(target=reader, daemon=True).start()

    def fail(cls_hint: tuple[str, str] | None, exit_code: int | None, timed_out: bool = False) -> Outcome:
        tail = failures.mask(runtime.logs(cid, failures.TAIL_LINES) or list(lines), secrets or [])
        cls, hint = cls_hint or failures.classify(tail, exit_code=exit_code, timed_out=timed_out)
        if timed_out and cls == "unknown":
            cls, hint = "timeout", "timeout: " + failures.hint_for("timeout")
        return Outcome(
            ready=False,
            phase=phase_of(tail, state["phase"]) if not timed_out else state["phase"],
            waited_s=time.monotonic() - t0,
            failure_class=cls,
            hint=hint,
            exit_code=exit_code,
            log_tail=tail,
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
                return Outcome(
                    ready=True,
                    phase="ready",
                    waited_s=time.monotonic() - t0,
                    models=names,
                    health_ok_at=health_at,
                    ready_at=time.time(),
                    log_tail=failures.mask(list(lines)[-20:], secrets or []),
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
