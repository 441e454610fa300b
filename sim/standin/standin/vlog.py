"""vLLM-shaped log lines: `(APIServer pid=1) INFO 11-23 12:00:00 [api_server.py:1896] message` (0.10+ prefix)."""

from __future__ import annotations

import os
import sys
import time

from .tables import version_key


class VLog:
    def __init__(self, version: str) -> None:
        self.v = version_key(version)
        self.pid = os.getpid()
        self.engine_pid = self.pid + 100  # the engine core is a child process in real vLLM
        if self.v >= (0, 11):
            self.engine_name = "EngineCore_DP0"
        else:
            self.engine_name = "EngineCore_0"

    def _prefix(self, who: str) -> str:
        if self.v < (0, 10) or who == "":
            return ""
        if who == "engine":
            return f"({self.engine_name} pid={self.engine_pid}) "
        return f"(APIServer pid={self.pid}) "

    @staticmethod
    def _stamp() -> str:
        return time.strftime("%m-%d %H:%M:%S")

    def line(self, level: str, where: str, msg: str, who: str = "api", stream=None) -> None:
        out = stream or sys.stdout
        p = self._prefix(who)
        text = "".join(f"{p}{level} {self._stamp()} [{where}] {part}\n" for part in msg.split("\n"))
        out.write(text)
        out.flush()

    def info(self, where: str, msg: str, who: str = "api") -> None:
        self.line("INFO", where, msg, who)

    def warning(self, where: str, msg: str, who: str = "api") -> None:
        self.line("WARNING", where, msg, who)

    def error(self, where: str, msg: str, who: str = "api") -> None:
        self.line("ERROR", where, msg, who)

    def raw(self, text: str, who: str = "api", stream=None) -> None:
        """Lines written as-is (tracebacks, uvicorn, progress bars), with the process prefix on 0.10+."""
        out = stream or sys.stdout
        p = self._prefix(who)
        out.write("".join(f"{p}{ln}\n" for ln in text.rstrip("\n").split("\n")))
        out.flush()

    def uvicorn(self, msg: str) -> None:
        self.raw(f"INFO:     {msg}", stream=sys.stderr if self.v < (0, 10) else sys.stdout)


def traceback_text(frames: list[tuple[str, int, str, str]], exc: str, cause: str | None = None) -> str:
    """A Python traceback; frames are (file, line, function, source)."""
    body = "Traceback (most recent call last):\n"
    for f, ln, fn, src in frames:
        body += f'  File "{f}", line {ln}, in {fn}\n    {src}\n'
    body += exc
    if cause:
        return (
            cause.rstrip("\n") + "\n\nThe above exception was the direct cause of the following exception:\n\n" + body
        )
    return body
