# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gateway's program on a gateway host: runs one vllm-router for one deployment.

The role ``gpufleet.vllm.gateway`` copies this file and ``_supervisor.py`` (both import only the standard library;
this one, at run time, ``vllm_router`` too) next to the router's venv and runs it under systemd or as its own
supervised process:

    <venv>/bin/python launch.py @<dir>/router.args [--api-key-file F] [--workers-file W]
    <venv>/bin/python launch.py @<dir>/router.args --pidfile P --log L --daemonize | --stop | --restart

Why a launcher and not ``vllm-router`` itself:

- **The API key never reaches argv.** vllm-router takes ``--api-key`` only on its command line (visible to every
  user in ``ps``/``/proc/PID/cmdline``); its launcher is Python, so this program reads the key from a 0600 file and
  hands it to ``vllm_router.launch_router`` in process.
- **Workers survive a restart without restarting on a change.** The router starts with no workers (so it serves at
  once instead of waiting for every worker to be healthy); a helper process then adds the URLs of ``--workers-file``
  through the router's own ``POST /add_worker``. gateway_workers keeps that file equal to the live set, so a worker change
  never touches the arguments (no restart) and a restarted router comes back with the current set.
- **Supervision without systemd** (``--daemonize``): a supervisor (double fork, new session, pid file) starts the
  router again when it dies (back-off 1 s doubling to 60 s); SIGTERM stops both.
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from typing import Any

try:  # in the collection (the tests, a controller)
    from ansible_collections.gpufleet.vllm.plugins.module_utils import _supervisor
except ImportError:  # on a gateway host: the role ships _supervisor.py beside this file (the same bytes)
    import _supervisor  # type: ignore[no-redef]

SUPERVISE = "--supervise-internal"
ADD_WORKERS = "--add-workers-internal"  # argv[1] of the helper process that adds the workers file's URLs
MARK = "gpufleet-gateway"  # in every supervisor's argv: how a pid file's process is recognised


def read_lines(path: str) -> list[str]:
    """Non-empty, non-comment lines of a file; [] when it does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    except FileNotFoundError:
        return []


def _router_url(argv: list[str]) -> str:
    ns = _bind_parser().parse_known_args(argv)[0]
    host = ns.host if ns.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{ns.port}"


def _bind_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    return p


def _request(url: str, method: str, timeout: float) -> int:
    """The status of one request to this host's router (http.client: this runs in the router's venv, outside
    Ansible); 0 when it cannot be reached."""
    parts = urllib.parse.urlsplit(url)
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def _post(url: str, timeout: float) -> int:
    return _request(url, "POST", timeout)


def add_workers_when_up(base: str, workers: list[str], deadline_s: float = 600.0) -> None:
    """Wait for the router's /health, then add each worker (a thread each: /add_worker blocks until the worker is
    healthy) and wait for them, within ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if _request(base + "/health", "GET", 2):  # any answer: the router is up
            break
        time.sleep(0.2)
    threads = []
    for url in workers:
        q = urllib.parse.urlencode({"url": url})
        t = threading.Thread(target=_post, args=(f"{base}/add_worker?{q}", max(1.0, end - time.monotonic())))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))


def run_router(argv: list[str], api_key_file: str, workers_file: str) -> None:
    """Run vllm-router in this process (blocks): argv plus the key read from its file, workers added after start."""
    from vllm_router.launch_router import launch_router, parse_router_args  # the router's venv only

    args = list(argv)
    if api_key_file:
        key = "".join(read_lines(api_key_file))
        if key:
            args += ["--api-key", key]
    router_args = parse_router_args(args)
    del args
    if workers_file and read_lines(workers_file):
        # A helper process, not a thread: vllm-router's start() keeps the GIL while it runs, so no Python thread of
        # this process would ever get to send the adds.
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), ADD_WORKERS, _router_url(argv), workers_file],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    launch_router(router_args)


# --- supervision without systemd: _supervisor (shipped beside this file) -------------------------------------------


def running_pid(pidfile: str) -> int | None:
    """The pid of the live supervisor of ``pidfile``, else None."""
    return _supervisor.live_pid(pidfile, (MARK, pidfile))


def stop(pidfile: str, timeout: float = 20.0) -> bool:
    """SIGTERM the supervisor (it stops the router); True when one was running."""
    return _supervisor.stop(pidfile, (MARK, pidfile), timeout)


def daemonize(worker: list[str], pidfile: str, log_path: str) -> tuple[bool, int]:
    """Start a supervisor of ``worker`` (double fork, new session) unless one runs: (started, pid)."""
    supervisor = [sys.executable, os.path.abspath(__file__), SUPERVISE, MARK, pidfile, *worker]
    return _supervisor.daemonize(supervisor, pidfile, log_path, (MARK, pidfile))


def _say(text: str, stream: Any = None) -> None:
    """One line to stdout (or ``stream``), flushed: this runs as a program, not a module."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufleet-gateway",
        description="Run vllm-router for one gpufleet deployment. Unknown arguments go to vllm-router; @FILE reads "
        "arguments from a file, one per line.",
        fromfile_prefix_chars="@",
    )
    p.add_argument("--api-key-file", default="", help="file holding the deployment's API key (never on argv)")
    p.add_argument("--workers-file", default="", help="worker URLs added after start, one per line")
    p.add_argument("--pidfile", default="", help="with --daemonize/--stop/--restart: the supervisor's pid file")
    p.add_argument("--log", default="/dev/null", help="with --daemonize: the router's log file")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--daemonize", action="store_true", help="start a supervised background router (idempotent)")
    mode.add_argument("--stop", action="store_true", help="stop the background router of --pidfile")
    mode.add_argument("--restart", action="store_true", help="stop, then start the background router")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [SUPERVISE]:
        _supervisor.supervise(argv[3:], argv[2])
        return 0
    if argv[:1] == [ADD_WORKERS]:
        add_workers_when_up(argv[1], read_lines(argv[2]))
        return 0
    ns, router_argv = build_parser().parse_known_args(argv)
    if ns.daemonize or ns.stop or ns.restart:
        if not ns.pidfile:
            _say("--pidfile is required with --daemonize, --stop and --restart", sys.stderr)
            return 2
        stopped = stop(ns.pidfile) if (ns.stop or ns.restart) else False
        if ns.stop:
            _say("stopped" if stopped else "not running")
            return 0
        worker = [sys.executable, os.path.abspath(__file__), *router_argv]
        worker += [f"--api-key-file={ns.api_key_file}", f"--workers-file={ns.workers_file}"]
        started, pid = daemonize(worker, ns.pidfile, ns.log)
        _say(f"{'started' if started else 'running'} {pid}")
        return 0
    run_router(router_argv, ns.api_key_file, ns.workers_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
