# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node agent's event log: one JSON line per event in ``<state_dir>/events.jsonl``, rotated by size with
logging's ``RotatingFileHandler`` (``events.jsonl.1`` ... ``.<backups>``), and echoed without the log tail to stdout
(the journal, or agent.log in process mode).

Events arrive masked: the loop masks log tails, hints and error texts (``failures.mask``) before it emits them."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, TextIO

from ansible_collections.gpufleet.vllm.plugins.module_utils._utc import stamp

EVENTS_FILE = "events.jsonl"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3

Emit = Callable[[dict[str, Any]], None]


def print_line(text: str, stream: TextIO | None = None) -> None:
    """One line to stdout (or ``stream``), flushed: the journal or agent.log (this runs as a program, not a module)."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


class _JsonLinesFile(logging.handlers.RotatingFileHandler):
    """logging's size-rotated file as the event log needs it: created 0640, opened for each record only (the agent
    holds no descriptor, so a rotation by another agent process is seen), an empty file never rotated (a record
    larger than max_bytes must not push the backups out), with no backups the file starts afresh (logging's handler
    would grow it for ever), and a failed write raises (the tick counts it) instead of printing a traceback."""

    def _open(self) -> TextIO:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        return bool(super().shouldRollover(record)) and self.stream is not None and self.stream.tell() > 0

    def doRollover(self) -> None:
        if self.backupCount > 0:
            super().doRollover()
            return
        self._close_stream()
        if os.path.exists(self.baseFilename):
            os.unlink(self.baseFilename)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            super().emit(record)
        finally:
            self._close_stream()

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # pylint: disable=misplaced-bare-raise  # called in emit()'s except block: the error goes on up

    def _close_stream(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None  # type: ignore[assignment]


class EventLog:
    """JSON lines appended to ``path``; rotated to ``path.1`` ... ``path.<backups>`` before a line would take the
    file to ``max_bytes``. ``echo``: the same events, without ``tail``, ``ts`` and ``host``, on stdout."""

    def __init__(
        self, path: str, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS, echo: bool = False
    ) -> None:
        self.path = path
        self.echo = echo
        self._file = _JsonLinesFile(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self._file.setFormatter(logging.Formatter("%(message)s"))

    @property
    def max_bytes(self) -> int:
        return int(self._file.maxBytes)

    @property
    def backups(self) -> int:
        return int(self._file.backupCount)

    def __call__(self, event: dict[str, Any]) -> None:
        record = {"ts": stamp(), "host": socket.gethostname(), **event}
        line = json.dumps(record, sort_keys=True, default=str)  # ASCII: the size check counts characters
        self._file.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"}))
        if self.echo:
            short = {k: v for k, v in record.items() if k not in ("tail", "ts", "host")}
            print_line(json.dumps(short, sort_keys=True, default=str))
