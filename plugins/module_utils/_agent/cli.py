# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node agent's program: a watchdog over the gpufleet-managed vLLM containers of one host, outside Ansible.

It runs on the host from a copy of this collection's module_utils (the role ``gpufleet.vllm.node_agent`` ships
exactly the files ``shipping.shipped_files()`` lists: this module and what it imports), so it shares the one label
schema, the one failure classifier and secret masking, the engine adapters and the health probe with the modules:

    PYTHONPATH=/opt/gpufleet/agent python3 -m ansible_collections.gpufleet.vllm.plugins.module_utils._agent.cli --once

The package, one concern per module: ``policy`` (what the agent may do; pure decisions), ``state`` (what it
remembers, state.json), ``diagnosis`` (secrets, failure class, health probe), ``loop`` (one tick), ``events`` (the
JSON-lines event log), ``logs`` (the vLLM servers' own logs, a file per run), ``metrics`` (Prometheus), ``runner``
(the long-running process), ``daemon`` (background mode without systemd), ``shipping`` (the files it needs), and this
command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.daemon import (
    SUPERVISE,
    start_background,
    stop_background,
    supervise,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.events import (
    DEFAULT_BACKUPS,
    DEFAULT_MAX_BYTES,
    print_line,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.logs import DEFAULT_MAX_BYTES as LOGS_MAX_BYTES
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.logs import DEFAULT_RETENTION_DAYS, LOGS_DIR
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.policy import Policy
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.runner import Agent
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.shipping import pack, shipped_files
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

DEFAULT_STATE_DIR = "/var/lib/gpufleet/agent"
DEFAULT_PORT = 9840
DEFAULT_GPUFLEET_DIR = "/var/lib/gpufleet"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpufleet-node-agent",
        description="Watchdog of the gpufleet-managed vLLM containers of this host (restarts, serve-for expiry, "
        "events, Prometheus metrics). Arguments may come from a file: @FILE, one per line.",
        fromfile_prefix_chars="@",
    )
    p.add_argument("--once", action="store_true", help="one tick, then exit")
    p.add_argument("--interval", type=float, default=15.0, help="seconds between ticks (default 15)")
    p.add_argument("--runtime", choices=("docker", "podman"), default="docker")
    p.add_argument("--docker-host", default="", help="docker engine address (default DOCKER_HOST or the socket)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"metrics port, 0 = none (default {DEFAULT_PORT})")
    p.add_argument("--address", default="127.0.0.1", help="metrics listen address (default 127.0.0.1: this host only)")
    p.add_argument(
        "--web-config-file",
        default="",
        help="exporter-toolkit web config as JSON (tls_server_config, basic_auth_users with bcrypt hashes)",
    )
    p.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, help=f"state, events, metrics (default {DEFAULT_STATE_DIR})"
    )
    p.add_argument(
        "--gpufleet-dir",
        default=DEFAULT_GPUFLEET_DIR,
        help="the host's gpufleet state directory, manifest_dir's parent: the deployments' lifecycle records "
        f"(lifecycle/NAME.json; serve-for deadline, crash-loop budget) ('' = none; default {DEFAULT_GPUFLEET_DIR})",
    )
    p.add_argument("--names", default="", help="comma-separated deployment/replica names to watch (default: all)")
    p.add_argument("--max-restarts", type=int, default=Policy.max_restarts)
    p.add_argument("--restart-window", type=float, default=Policy.window_s, help="seconds")
    p.add_argument("--backoff-base", type=float, default=Policy.backoff_base_s, help="seconds")
    p.add_argument("--backoff-max", type=float, default=Policy.backoff_max_s, help="seconds")
    p.add_argument("--health-failures", type=int, default=Policy.health_failures)
    p.add_argument("--start-grace", type=float, default=Policy.start_grace_s, help="seconds")
    p.add_argument(
        "--max-failed-restarts",
        type=int,
        default=Policy.max_failed_restarts,
        help="failures in a row allowed before the end state, for a deployment without its own (default 3)",
    )
    p.add_argument("--stable-after", type=float, default=Policy.stable_after_s, help="seconds healthy that end a loop")
    p.add_argument("--stop-timeout", type=int, default=Policy.stop_timeout, help="seconds")
    p.add_argument(
        "--log-max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="rotate events.jsonl before it reaches this size"
    )
    p.add_argument("--log-backups", type=int, default=DEFAULT_BACKUPS)
    p.add_argument(
        "--vllm-logs-dir",
        default="",
        help=f"the vLLM servers' own logs, a file per replica and run (default STATE_DIR/{LOGS_DIR})",
    )
    p.add_argument("--no-vllm-logs", action="store_true", help="keep no copy of the vLLM servers' logs")
    p.add_argument(
        "--vllm-log-max-bytes",
        type=int,
        default=LOGS_MAX_BYTES,
        help="a run's file drops its older half past this size (default 20 MiB)",
    )
    p.add_argument(
        "--vllm-log-retention-days",
        type=float,
        default=DEFAULT_RETENTION_DAYS,
        help=f"files not written for this many days are deleted, 0 = never (default {DEFAULT_RETENTION_DAYS})",
    )
    p.add_argument("--pidfile", default="", help="with --daemonize/--stop/--restart: the supervisor's pid file")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--daemonize", action="store_true", help="start a supervised background agent (idempotent)")
    mode.add_argument("--stop", action="store_true", help="stop the background agent of --pidfile")
    mode.add_argument("--restart", action="store_true", help="stop, then start the background agent")
    mode.add_argument("--list-files", action="store_true", help="print the module_utils files the agent needs (JSON)")
    mode.add_argument(
        "--pack",
        metavar="ARCHIVE",
        default="",
        help="write the agent's code (those files) as one reproducible .tar.gz and print its sha256 and files (JSON)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [SUPERVISE]:
        supervise(argv[2:], argv[1])
        return 0
    args = build_parser().parse_args(argv)
    if args.list_files:
        print_line(json.dumps(shipped_files()))
        return 0
    if args.pack:
        print_line(json.dumps(pack(args.pack)))
        return 0
    if (args.daemonize or args.stop or args.restart) and not args.worker:
        if not args.pidfile:
            print_line("--daemonize, --stop and --restart need --pidfile", sys.stderr)
            return 2
        stopped = stop_background(args.pidfile) if (args.stop or args.restart) else False
        if args.stop:
            print_line("stopped" if stopped else "not running")
            return 0
        os.makedirs(args.state_dir, mode=0o750, exist_ok=True)
        rest = [a for a in argv if a not in ("--daemonize", "--restart")]
        started, pid = start_background(rest, args.pidfile, os.path.join(args.state_dir, "agent.log"))
        print_line(f"{'started' if started else 'running'} {pid}")
        return 0
    try:
        agent = Agent(args)
    except GpufleetError as e:
        print_line(f"gpufleet node agent: {e}", sys.stderr)
        return 1

    def on_term(_signum: int, _frame: Any) -> None:
        agent.stop_event.set()

    signal.signal(signal.SIGTERM, on_term)
    return agent.run()


if __name__ == "__main__":
    raise SystemExit(main())
