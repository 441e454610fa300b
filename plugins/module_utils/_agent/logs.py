# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vLLM servers' own logs, kept by the node agent: one file per replica and run, bounded in size and age.

``<logs dir>/<name>.log`` holds the current run of replica ``<name>`` (the vllm_container name), ``<name>.log.1`` the
previous one. A run is one start of a container: a new container (a converge recreated it) or the same container
started again (by the engine's restart policy, the agent or a person); the agent tells them apart by the container's
id and StartedAt, written in the run's first line. Each line is the engine's own UTC time of the line (microseconds)
and the text with its ANSI escapes stripped and secrets masked (``failures.mask``: the container's secret env values,
anything token-shaped); the successful ``GET /health`` and ``/metrics`` access lines (probes and scrapes, thousands a
day) are left out, a failed one is kept. When the current file would grow past ``max_bytes``
its older half is dropped (a line says how much); files not written for ``retention_days`` are deleted (the logs of a
replica that is gone go after that long).

The engine's log is read with timestamps, so nothing is copied twice and nothing is lost across the agent's own
restarts (it goes on from the last line's time in the file): the long-running agent follows each live container's
stream in a thread (``Runtime.follow``); a stopped container, and every container in ``--once`` runs, is read up to
now (``Runtime.logs``). The engine's own log (``vllm_container``'s ``log_max_size``/``log_max_files``) is bounded too.

The pieces (ANSI, filter, stamps, rotation, retention) are plain functions of their input and a clock, unit-tested;
``LogKeeper`` puts them to work, once per tick (``sync``)."""

from __future__ import annotations

import datetime
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.diagnosis import secret_values
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState, Runtime, parse_time

LOGS_DIR = "vllm-logs"  # under the agent's state directory
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_RETENTION_DAYS = 14
SUFFIX, PREVIOUS = ".log", ".log.1"
LIVE = ("running", "paused", "restarting")

_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
# uvicorn's access line of a probe or a scrape that succeeded: 'INFO:  127.0.0.1:5 - "GET /health HTTP/1.1" 200 OK'
_PROBE_RE = re.compile(r'"(?:GET|HEAD) /(?:health|metrics)(?:[?/][^ "]*)? HTTP/[0-9.]+" 2[0-9][0-9]\b')
_ENGINE_TS_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})) ?")
_HEADER_RE = re.compile(r"^\S+ --- run of container (?P<id>[0-9a-f]+), started (?P<started>\S+) ---$")
_TAIL_BYTES = 64 * 1024


def strip_ansi(text: str) -> str:
    """``text`` without terminal escapes (colours, cursor moves, OSC titles) and carriage returns."""
    return _ANSI_RE.sub("", text).replace("\r", "")


def is_probe(text: str) -> bool:
    """A successful ``/health`` or ``/metrics`` access line (kept out of the file)."""
    return _PROBE_RE.search(text) is not None


def stamp(t: float) -> str:
    """A Unix time as the file writes it: UTC, microseconds, ``Z`` (``2026-01-02T03:04:05.123456Z``)."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def split_engine_line(line: str) -> tuple[float | None, str]:
    """(the engine's time of the line, its text) of a line read with timestamps; (None, line) without one."""
    m = _ENGINE_TS_RE.match(line)
    if not m:
        return None, line
    return parse_time(m.group(1)), line[m.end() :]


def micros(t: float) -> int:
    """A time in whole microseconds: what a stamp keeps, and what decides whether a line was copied already."""
    return round(t * 1_000_000)


def file_line(line: str, now: float) -> tuple[float | None, str | None]:
    """An engine line (with its timestamp) as the file keeps it: (its time, ``<UTC stamp> <text>``), or (its time,
    None) when it is left out (a probe's access line). A line without a timestamp is stamped ``now``."""
    t, text = split_engine_line(line)
    text = strip_ansi(text).rstrip("\n")
    if is_probe(text):
        return t, None
    return t, f"{stamp(t if t is not None else now)} {text}"


def line_time(line: str) -> float | None:
    """The time at the start of a line of the file (None when it has none)."""
    head = line.split(" ", 1)[0]
    return parse_time(head) if head.endswith("Z") else None


@dataclass(frozen=True)
class Run:
    """One start of one container: what its file's first line says."""

    container_id: str
    started_at: str

    def header(self, t: float) -> str:
        return f"{stamp(t)} --- run of container {self.container_id[:12]}, started {self.started_at} ---"

    def same(self, other: Run | None) -> bool:
        """The same run (a header keeps the id's first 12 characters)."""
        return other is not None and (other.container_id[:12], other.started_at) == (
            self.container_id[:12],
            self.started_at,
        )

    @classmethod
    def of(cls, c: ContainerState) -> Run | None:
        """The container's current run; None when it never started."""
        started = parse_time(c.started_at)
        return cls(c.id, stamp(started)) if started is not None else None


# ------------------------------------------------------------------------------------------------ files
def paths(directory: str, name: str) -> tuple[str, str]:
    """(current run, previous run) file paths of replica ``name``."""
    base = os.path.join(directory, name)
    return base + SUFFIX, base + PREVIOUS


def read_header(path: str) -> Run | None:
    """The run a file holds, from its first line; None for no file or no header."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline().rstrip("\n")
    except OSError:
        return None
    m = _HEADER_RE.match(first)
    return Run(m.group("id"), m.group("started")) if m else None


def last_time(path: str) -> tuple[float | None, int]:
    """The time of the last stamped line of a file (where copying goes on after the agent's restart) and how many
    lines at its end carry exactly that time."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _TAIL_BYTES))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None, 0
    last, count = None, 0
    for line in reversed(lines):
        t = None if _HEADER_RE.match(line) else line_time(line)  # the run's header is no copied line
        if t is None or (last is not None and micros(t) != micros(last)):
            if last is not None:
                break
            continue
        last, count = t, count + 1
    return last, count


def begin_run(directory: str, name: str, run: Run, now: float) -> None:
    """A new run of ``name``: the current file becomes the previous one (replacing it), a new one starts."""
    current, previous = paths(directory, name)
    if os.path.exists(current):
        os.replace(current, previous)
    append(current, [run.header(now)], 0)


def append(path: str, lines: list[str], max_bytes: int) -> None:
    """Append ``lines``; past ``max_bytes`` (0: no limit) the older half of the file is dropped (its first line, the
    run's header, stays), with a line that says how many bytes went."""
    if not lines:
        return
    data = "".join(line + "\n" for line in lines).encode("utf-8", "replace")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, data)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if max_bytes and size > max_bytes:
        trim(path, max_bytes // 2)


def trim(path: str, keep_bytes: int) -> int:
    """Keep the header and about the last ``keep_bytes`` of the file (from a line start): atomically, by a rename.
    Returns the bytes dropped."""
    with open(path, "rb") as fh:
        header = fh.readline()
        size = os.fstat(fh.fileno()).st_size
        start = max(len(header), size - keep_bytes)
        fh.seek(start)
        rest = fh.read()
    if start > len(header):
        cut = rest.find(b"\n")
        rest = rest[cut + 1 :] if cut >= 0 else b""
    dropped = size - len(header) - len(rest)
    if dropped <= 0:
        return 0
    first = line_time(rest.decode("utf-8", "replace").split("\n", 1)[0])
    note = f"{stamp(first) if first is not None else stamp(time.time())} --- {dropped} bytes of this run dropped ---\n"
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, header + note.encode() + rest)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return dropped


def prune(directory: str, now: float, retention_days: float) -> list[str]:
    """Delete the files not written for ``retention_days`` (0: never); returns their names."""
    if retention_days <= 0:
        return []
    limit = now - retention_days * 86400
    gone = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    for fname in names:
        if not (fname.endswith(SUFFIX) or fname.endswith(PREVIOUS)):
            continue
        path = os.path.join(directory, fname)
        try:
            if os.stat(path).st_mtime < limit:
                os.unlink(path)
                gone.append(fname)
        except OSError:
            continue
    return gone


# ------------------------------------------------------------------------------------------------ the keeper
@dataclass
class _Copy:
    """Where the copy of one replica stands: its run, the time of the last line copied, what was read to the end."""

    run: Run
    last: int  # micros() of the last line copied
    at_last: int = 0  # lines copied with exactly that time (an engine stamps a burst of lines alike)
    done: str = ""  # the container state (id|finished) read to its end: a stopped one is read once
    thread: threading.Thread | None = None
    secrets: list[str] = field(default_factory=list, repr=False)  # the container's secret values: masked


class LogKeeper:
    """Keeps the logs of the managed containers in ``directory`` (see the module docstring). ``follow``: the
    long-running agent's streams (False for ``--once``: read up to now). ``clock``: time.time, or a test's."""

    def __init__(
        self,
        directory: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        retention_days: float = DEFAULT_RETENTION_DAYS,
        follow: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.retention_days = retention_days
        self.follow = follow
        self.clock = clock
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.copies: dict[str, _Copy] = {}
        self.errors: list[str] = []
        os.makedirs(directory, mode=0o750, exist_ok=True)

    def sync(self, rt: Runtime, containers: Iterable[ContainerState]) -> None:
        """One tick: for each managed container, a new run when it started again, its new lines copied (or its
        stream followed); then the retention."""
        for c in containers:
            name = lb.parse(c.labels)["name"]
            run = Run.of(c)
            if not name or run is None or c.name.endswith(lb.PREVIOUS_SUFFIX):
                continue
            try:
                self._sync_one(rt, name, run, c)
            except Exception as e:  # one container's log never stops the others' (nor the tick)
                self.errors.append(f"{name}: {e}")
        prune(self.directory, self.clock(), self.retention_days)

    def _sync_one(self, rt: Runtime, name: str, run: Run, c: ContainerState) -> None:
        cp = self.copies.get(name) or self._recover(name)
        if cp is None or not run.same(cp.run):
            if cp is not None and cp.run.container_id[:12] == c.id[:12]:
                # The same container started again: its previous run's last lines first (read up to now).
                self._read(rt, name, cp, c.id, before=parse_time(run.started_at))
            start = parse_time(run.started_at) or self.clock()
            with self.lock:
                begin_run(self.directory, name, run, start)
            cp = _Copy(run, micros(start) - 1)
            self.copies[name] = cp
        cp.secrets = secret_values(c)
        if c.status in LIVE and self.follow:
            if cp.thread is None or not cp.thread.is_alive():
                cp.thread = threading.Thread(
                    target=self._follow, args=(rt, name, cp, c.id), name=f"vllm-log-{name}", daemon=True
                )
                cp.thread.start()
            return
        state = f"{c.id}|{c.status}|{c.finished_at}"
        if c.status in LIVE or cp.done != state:
            self._read(rt, name, cp, c.id)
            cp.done = "" if c.status in LIVE else state

    def _recover(self, name: str) -> _Copy | None:
        """After the agent's own restart: the run the current file holds and its last line's time."""
        current = paths(self.directory, name)[0]
        run = read_header(current)
        if run is None:
            return None
        last, count = last_time(current)
        if last is None:
            last, count = parse_time(run.started_at) or 0.0, 0
        cp = _Copy(run, micros(last), count)
        self.copies[name] = cp
        return cp

    def _write(self, name: str, cp: _Copy, lines: Iterable[str], skip: list[int], before: float | None = None) -> None:
        """Copy the new ``lines`` of one read (``skip``: [lines at ``cp.last`` still to pass over, as copied before
        this read began: the engine's since is inclusive])."""
        out, now = [], self.clock()
        for line in lines:
            t, kept = file_line(line, now)
            if t is not None:
                us = micros(t)
                if us < cp.last or (before is not None and t >= before):
                    continue  # copied already, or the next run's
                if us == cp.last and skip[0] > 0:
                    skip[0] -= 1
                    continue
                cp.at_last = cp.at_last + 1 if us == cp.last else 1
                cp.last = us
            if kept is not None:
                out.append(kept)
        if not out:
            return
        out = failures.mask(out, cp.secrets)  # as every line the agent writes: no secret value, nothing token-shaped
        with self.lock:
            if self.copies.get(name) is not cp:
                return  # a newer run began meanwhile: this one's file is the previous one now
            current = paths(self.directory, name)[0]
            if not os.path.exists(current):  # deleted by the retention while quiet: start it again
                append(current, [cp.run.header(self.clock())], 0)
            append(current, out, self.max_bytes)

    def _read(self, rt: Runtime, name: str, cp: _Copy, cid: str, before: float | None = None) -> None:
        skip = [cp.at_last]
        self._write(name, cp, rt.logs(cid, tail=-1, since=cp.last / 1e6, timestamps=True), skip, before)

    def _follow(self, rt: Runtime, name: str, cp: _Copy, cid: str) -> None:
        skip = [cp.at_last]
        try:
            for line in rt.follow(cid, since=cp.last / 1e6, timestamps=True):
                if self.stopping.is_set() or self.copies.get(name) is not cp:
                    return
                self._write(name, cp, [line], skip)
        except Exception as e:  # the stream broke: the next tick follows again from the last line
            self.errors.append(f"{name}: {e}")

    def take_errors(self) -> list[str]:
        errors, self.errors = self.errors, []
        return errors

    def close(self, timeout: float = 2.0) -> None:
        """Stop following (the threads end with their stream or at their next line)."""
        self.stopping.set()
        for cp in self.copies.values():
            if cp.thread is not None:
                cp.thread.join(timeout)
