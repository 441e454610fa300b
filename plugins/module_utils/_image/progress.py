# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image pull progress (issue #19): bytes and layers done/total from the engine's pull stream, kept in a file on the
host while the pull runs, so that the status playbook can show ``pulling image · 3.5/21.6 GB``.

The stream is the Docker Engine API's ``POST /images/create`` (docker, and podman's Docker-compatible service that
both adapters pull through): one JSON event per layer change, ``{"id": <layer>, "status": ..., "progressDetail":
{"current", "total"}}``. docker sends ``Pulling fs layer``, ``Downloading`` (bytes), ``Download complete``,
``Extracting`` (bytes), ``Pull complete`` or ``Already exists``. podman 4.3 sends ``Pulling fs layer`` and
``Download complete`` only (no byte counts): its progress is in layers, ``bytes_total`` stays unknown (0 with
``bytes_known`` false) unless it sends ``Downloading`` events.

The file is ``<state dir>/pulls/<hash of the reference>.json`` (``progress_path``), written atomically at most once
per ``interval`` seconds and removed when the pull ends; the module's result carries the last snapshot.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_atomic

PULLS_DIR = "pulls"
# A layer's states, in order; a layer never goes back.
_ORDER = {"waiting": 0, "downloading": 1, "downloaded": 2, "extracting": 3, "done": 4}
_STATUS = {
    "pulling fs layer": "waiting",
    "waiting": "waiting",
    "downloading": "downloading",
    "verifying checksum": "downloaded",
    "download complete": "downloaded",
    "extracting": "extracting",
    "pull complete": "done",
    "already exists": "done",
}


def progress_path(directory: str, ref: str) -> str:
    """The progress file of a pull of ``ref`` in ``directory`` (``<state dir>/pulls``)."""
    return os.path.join(directory, hashlib.sha256(ref.encode()).hexdigest()[:16] + ".json")


def progress_text(snap: dict[str, Any]) -> str:
    """One line: ``pulling image · 3.5/21.6 GB`` (bytes known) or ``pulling image · 2/5 layers``."""
    phase = "extracting image" if snap.get("phase") == "extracting" else "pulling image"
    if snap.get("bytes_known"):
        total = float(snap["bytes_total"])
        unit, size = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if total >= s), ("B", 1.0))
        done = f"{snap['bytes_done'] / size:.1f}/{total / size:.1f} {unit}"
        return f"{phase} · {done}"
    return f"{phase} · {snap.get('layers_done', 0)}/{snap.get('layers_total', 0)} layers"


class PullProgress:
    """Feed it the pull stream's events (``feed``); ``snapshot()`` is the progress so far; with ``directory`` it
    keeps the progress file up to date (``interval`` seconds apart, ``clock`` for tests) and removes it at ``close``.
    """

    def __init__(
        self,
        ref: str,
        directory: str | None = None,
        *,
        engine: str = "docker",
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ref = ref
        self.engine = engine
        self.path = progress_path(directory, ref) if directory else None
        self.interval = interval
        self.clock = clock
        self.started_at = clock()
        self.layers: dict[str, dict[str, Any]] = {}
        self.written_at: float | None = None
        self.failed = False

    def feed(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        if event.get("error") or event.get("errorDetail"):
            self.failed = True
        state = _STATUS.get(str(event.get("status") or "").strip().lower())
        layer = event.get("id")
        if state is None or not isinstance(layer, str):
            return
        rec = self.layers.setdefault(layer, {"state": "waiting", "current": 0, "total": None, "existed": False})
        detail = event.get("progressDetail") or {}
        total = detail.get("total") if isinstance(detail, dict) else None
        current = detail.get("current") if isinstance(detail, dict) else None
        if state == "downloading" and isinstance(total, int) and total > 0:
            rec["total"] = total
            if isinstance(current, int):
                rec["current"] = max(rec["current"], min(current, total))
        if state == "done" and str(event.get("status")).lower() == "already exists":
            rec["existed"] = True  # nothing to download
        if _ORDER[state] > _ORDER[rec["state"]]:
            rec["state"] = state
        self._write_maybe()

    def snapshot(self) -> dict[str, Any]:
        fetched = [r for r in self.layers.values() if not r["existed"]]
        sized = [r for r in fetched if r["total"]]
        done_bytes = sum(r["total"] if _ORDER[r["state"]] >= _ORDER["downloaded"] else r["current"] for r in sized)
        states = [r["state"] for r in self.layers.values()]
        downloaded = all(_ORDER[s] >= _ORDER["downloaded"] for s in states) and bool(states)
        return {
            "image": self.ref,
            "engine": self.engine,
            "phase": "extracting" if downloaded and not all(s == "done" for s in states) else "pulling",
            "bytes_done": done_bytes,
            "bytes_total": sum(r["total"] for r in sized),
            # every layer that is fetched has a known size (docker); podman 4.3 sends none
            "bytes_known": bool(sized) and len(sized) == len(fetched),
            "layers_done": sum(1 for s in states if _ORDER[s] >= _ORDER["downloaded"]),
            "layers_total": len(states),
            "layers_existing": sum(1 for r in self.layers.values() if r["existed"]),
            "started_at": round(self.started_at, 3),
            "pid": os.getpid(),
        }

    def _write_maybe(self) -> None:
        now = self.clock()
        if self.path is None or (self.written_at is not None and now - self.written_at < self.interval):
            return
        self.written_at = now
        snap = dict(self.snapshot(), updated_at=round(now, 3))
        try:
            write_atomic(self.path, json.dumps(snap, sort_keys=True), 0o644)
        except OSError:
            self.path = None  # progress is for people watching: a pull never fails for it

    def close(self, ok: bool = True) -> dict[str, Any]:
        """The final snapshot (``seconds`` the pull took; phase ``done`` when the engine's pull succeeded); the
        progress file is removed."""
        snap = dict(self.snapshot(), seconds=round(self.clock() - self.started_at, 3))
        if ok and not self.failed:
            snap["phase"] = "done"
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        return snap


def read_all(directory: str, now: float | None = None) -> list[dict[str, Any]]:
    """The pulls in progress on this host (their files in ``directory``), with ``age`` (seconds since the last
    update) and ``text``; unreadable files are skipped."""
    out: list[dict[str, Any]] = []
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except OSError:
        return out
    now = time.time() if now is None else now
    for name in names:
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                snap = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(snap, dict) or not snap.get("image"):
            continue
        snap["age"] = round(max(0.0, now - float(snap.get("updated_at") or now)), 1)
        snap["text"] = progress_text(snap)
        out.append(snap)
    return out
