# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The small engine adapter vllm_container talks to: docker (docker SDK) or podman (podman CLI).

Adapters only move data; they never decide. Comparison is by the config-hash label (container_spec), so nothing
here has to re-read engine fields faithfully except state, exit code, restart count, labels and logs.
"""

from __future__ import annotations

import datetime
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


def raw_http(
    target: str | tuple[str, int],
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 60.0,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request (Connection: close) over a unix socket path or (host, port): (status, body).

    The one hand-written HTTP client of the collection: the engine adapters' socket reads (docker inspects, the
    podman API service's ping and image inspect) and the readiness probes all use it.

    The standard library's http.client pulls in email and ssl; a no-op converge only needs a few small GETs, and
    this keeps its start-up cheap. Raises OSError when nothing answers.
    """
    if isinstance(target, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        host = "localhost"
    elif target[0].replace(".", "").isdigit() or ":" in target[0]:
        # An IP literal (the readiness probes' 127.0.0.1): no name resolution (getaddrinfo) needed.
        sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        host = f"[{target[0]}]:{target[1]}" if ":" in target[0] else f"{target[0]}:{target[1]}"
    else:
        sock = socket.create_connection(target, timeout=timeout)
        host = f"[{target[0]}]:{target[1]}" if ":" in target[0] else f"{target[0]}:{target[1]}"
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close", "User-Agent: gpufleet"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body or b'')}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        sock.close()
    raw = b"".join(chunks)
    head, _sep, payload = raw.partition(b"\r\n\r\n")
    head_lines = head.decode("latin-1").split("\r\n")
    parts = head_lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"not an HTTP response from {target}")
    hdrs = {k.strip().lower(): v.strip() for k, _c, v in (h.partition(":") for h in head_lines[1:])}
    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        out, rest = [], payload
        while rest:
            size_line, _sep, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out.append(rest[:size])
            rest = rest[size + 2 :]
        payload = b"".join(out)
    elif "content-length" in hdrs and hdrs["content-length"].isdigit():
        payload = payload[: int(hdrs["content-length"])]
    return int(parts[1]), payload


@dataclass
class ContainerState:
    id: str
    name: str
    status: str  # created | running | paused | restarting | exited | dead | removing
    running: bool
    exit_code: int | None
    restart_count: int
    labels: dict[str, str]
    image_id: str = ""
    image: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    oom_killed: bool = False
    pid: int | None = None
    # The container's environment. Values may be secrets (API key, HF token, secret_env): only for masking, never to
    # print, label or write.
    env: dict[str, str] = field(default_factory=dict, repr=False)
    mounts: list[str] = field(default_factory=list)  # host paths of its bind mounts (model_sync's in-use check)


@dataclass
class ImageInfo:
    id: str
    entrypoint: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    repo_digests: list[str] = field(default_factory=list)

    @property
    def vllm_version(self) -> str | None:
        return self.labels.get("org.opencontainers.image.version") or self.env.get("VLLM_VERSION")

    @property
    def digest(self) -> str | None:
        return self.repo_digests[0].split("@", 1)[1] if self.repo_digests and "@" in self.repo_digests[0] else None


@dataclass
class CreateSpec:
    name: str
    image: str
    command: list[str]
    env: dict[str, str]
    mounts: list[tuple[str, str, str]]
    gpus: list[str]
    network: str
    ipc: str | None
    shm_size: str | None
    restart_policy: str
    labels: dict[str, str]
    port: int
    host: str
    # The engine's log driver and its limits (None: the engine's defaults). max_files is docker's only.
    log_driver: str | None = None
    log_max_size: str | None = None
    log_max_files: int | None = None
    # For containers that are not a vLLM server (a Ray node, _ray/): the entrypoint (None: the image's own), a PID
    # namespace to share ("container:<name>"; None: its own) and how often ``on-failure`` restarts (None: unbounded).
    entrypoint: list[str] | None = None
    pid: str | None = None
    restart_retries: int | None = None


class Runtime:
    """Interface of an engine adapter."""

    name = "abstract"

    def _inspect(self, kind: str, ref: str) -> dict[str, Any] | None:
        """The engine's Docker-shaped inspect JSON of a ``container`` or an ``image``; None when there is none."""
        raise NotImplementedError

    def container(self, name: str) -> ContainerState | None:
        d = self._inspect("container", name)
        return state_from_inspect(d) if d else None

    def image(self, ref: str) -> ImageInfo | None:
        d = self._inspect("image", ref)
        return image_from_inspect(d) if d else None

    def create(self, spec: CreateSpec) -> str:
        raise NotImplementedError

    def start(self, cid: str) -> None:
        raise NotImplementedError

    def stop(self, cid: str, timeout: int) -> None:
        raise NotImplementedError

    def remove(self, cid: str) -> None:
        raise NotImplementedError

    def rename(self, cid: str, new_name: str) -> None:
        raise NotImplementedError

    def pause(self, cid: str) -> None:
        raise NotImplementedError

    def unpause(self, cid: str) -> None:
        raise NotImplementedError

    def logs(self, cid: str, tail: int = 300, since: float | None = None, timestamps: bool = False) -> list[str]:
        """The last ``tail`` lines of the container's log (-1: all), from ``since`` (a Unix time, inclusive) when
        given; ``timestamps`` as in ``follow``. An engine error gives []."""
        raise NotImplementedError

    def follow(self, cid: str, since: float | None = None, timestamps: bool = False) -> Iterator[str]:
        """Log lines as they come (from the container's creation, or from ``since``, a Unix time, inclusive); ends
        when the container stops. ``timestamps``: each line starts with the engine's RFC 3339 UTC time and a
        space (``2026-01-02T03:04:05.123456789Z text``)."""
        raise NotImplementedError

    def list_managed(self) -> list[ContainerState]:
        raise NotImplementedError

    def list_labeled(self, label: str) -> list[ContainerState]:
        """Every container (running or not) with the label filter ``label`` (``key`` or ``key=value``)."""
        raise NotImplementedError

    def exec(self, cid: str, argv: list[str], timeout: float = 30.0) -> tuple[int, str]:
        """Run ``argv`` in the running container ``cid``: (exit code, stdout and stderr). For containers that are not
        vLLM servers (``ray status`` in a Ray head, _ray/); an engine error raises GpufleetError."""
        raise NotImplementedError

    # Image operations (vllm_image): Docker-shaped inspect dicts, pulls and builds.

    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        """The engine's Docker-shaped image inspect dict (``Id`` is ``sha256:...``), or None when not present."""
        raise NotImplementedError

    def pull(
        self,
        repository: str,
        tag: str,
        auth: dict[str, str] | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Pull ``repository:tag`` (``tag`` may be a ``sha256:`` digest); a classified GpufleetError on failure.
        ``progress`` gets each event of the engine's pull stream (_image/progress.py)."""
        raise NotImplementedError

    def build(self, context_dir: str, tag: str) -> list[str]:
        """Build the context with its Dockerfile as ``tag``; returns the build log lines; raises with the tail."""
        raise NotImplementedError

    def push(self, repository: str, tag: str, auth: dict[str, str] | None = None) -> None:
        """Push ``repository:tag`` to its registry; a classified GpufleetError on failure."""
        raise NotImplementedError

    def pids(self, cid: str) -> list[int]:
        return []

    def close(self) -> None:
        pass


def parse_time(text: str | None) -> float | None:
    """Epoch seconds of an engine or label timestamp (RFC 3339 with up to nanoseconds, ``Z`` or an offset; podman's
    ``2024-01-02 03:04:05.123 +0000 UTC``, with or without Go's `` m=+1.5`` monotonic suffix); None for empty, zero
    (``0001-01-01...``) or unparsable values.

    The fraction is rounded to whole microseconds in integers (half to even) before it becomes a float, so that a
    time written back with microseconds (``datetime.fromtimestamp``) is exactly the engine's, rounded: adding the
    nanoseconds as a float to a 10-digit epoch was off by one microsecond for about one value in 16."""
    if not text or text.startswith("0001-01-01"):
        return None
    s = text.split(" m=")[0].strip().replace(" UTC", "")
    m = re.match(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?\s*(Z|[+-]\d{2}:?\d{2})?$", s)
    if not m:
        return None
    date, clock, frac, tz = m.groups()
    tz = "+00:00" if tz in (None, "Z") else (tz if ":" in tz else f"{tz[:3]}:{tz[3:]}")
    try:
        dt = datetime.datetime.fromisoformat(f"{date}T{clock}{tz}")
    except ValueError:
        return None
    nanos = int((frac or "")[:9].ljust(9, "0"))
    micros, rest = divmod(nanos, 1000)
    micros += rest > 500 or (rest == 500 and micros % 2 == 1)
    return (int(dt.timestamp()) * 1_000_000 + micros) / 1_000_000


def state_from_inspect(data: dict[str, Any]) -> ContainerState:
    """Docker-shaped inspect JSON (docker and podman both produce it) -> ContainerState."""
    st = data.get("State") or {}
    cfg = data.get("Config") or {}
    status = str(st.get("Status") or "").lower()
    if status == "configured":
        status = "created"
    if status == "stopped":
        status = "exited"
    return ContainerState(
        id=data.get("Id") or data.get("ID") or "",
        name=str(data.get("Name") or "").lstrip("/"),
        status=status,
        running=bool(st.get("Running")) and not st.get("Paused"),
        exit_code=st.get("ExitCode"),
        restart_count=int(data.get("RestartCount") or 0),
        labels=dict(cfg.get("Labels") or {}),
        image_id=str(data.get("Image") or ""),
        image=str(cfg.get("Image") or ""),
        started_at=st.get("StartedAt"),
        finished_at=st.get("FinishedAt"),
        oom_killed=bool(st.get("OOMKilled")),
        pid=st.get("Pid") or None,
        env=dict(e.split("=", 1) for e in cfg.get("Env") or [] if isinstance(e, str) and "=" in e),
        mounts=[str(m["Source"]) for m in data.get("Mounts") or [] if isinstance(m, dict) and m.get("Source")],
    )


def image_from_inspect(data: dict[str, Any]) -> ImageInfo:
    """Docker-shaped image inspect JSON (docker and podman both produce it) -> ImageInfo. podman may give the id
    without its ``sha256:`` prefix and the labels at the top level as well."""
    cfg = data.get("Config") or {}
    iid = str(data["Id"])
    return ImageInfo(
        id=iid if iid.startswith("sha256:") else f"sha256:{iid}",
        entrypoint=list(cfg.get("Entrypoint") or []),
        env=dict(e.split("=", 1) for e in cfg.get("Env") or [] if "=" in e),
        labels=dict(cfg.get("Labels") or data.get("Labels") or {}),
        repo_digests=list(data.get("RepoDigests") or []),
    )
