# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The replica guard: a sleep-mode replica's clients' port on its host's address, without vLLM's dev endpoints.

Sleep mode turns on vLLM's unauthenticated dev endpoints (``/sleep``, ``/wake_up``, ``/collective_rpc``, ...), so a
sleep-mode server listens on ``127.0.0.1:<port>`` only (``_container/validate.with_sleep_mode_host``). A gateway on
another host must still reach it, as it reaches every other replica, at ``<host address>:<port>``: HAProxy (the
Debian package, as the gateway's admin guard in ``config.py``) on the GPU host listens there, on the same port number
but the host's address (two sockets on two specific addresses do not collide), and passes only what a client of a
replica needs: the OpenAI API (``/v1/...``), ``/health``, ``/metrics``, ``/version``, ``/ping``, ``/tokenize`` and
``/detokenize`` (what vLLM itself serves without a key beside ``/v1``). Every other path, and any path written with
dot segments, doubled or encoded slashes, gets 403 from HAProxy and never reaches vLLM.

``guarded()`` picks the replicas of one host's plan that need it (sleep mode, no explicit loopback ``host``), with
their rollout's surge port (a surge serves through the gateway while its replica is replaced); ``haproxy_config()``
writes the configuration (one frontend per replica, the server on loopback; its head, the same as the admin
guard's: ``haproxy.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.haproxy import head, listen_address, section_name

# What a replica's clients may reach from the network: the paths vLLM serves on a server without sleep mode too.
CLIENT_PATH_PREFIXES = ("/v1/",)
CLIENT_PATHS = ("/health", "/metrics", "/version", "/ping", "/tokenize", "/detokenize")
# A path that another reader could resolve to a dev endpoint: dot segments, doubled and encoded slashes or dots.
ODD_PATH_PARTS = ("/../", "/./", "//", "%2e", "%2f", "%5c")
WILDCARD = ("", "0.0.0.0", "::")
DEFAULT_TIMEOUT = 1860  # the gateway's request timeout (1800 s) + 60 s: a held first request and a long generation
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")


@dataclass(frozen=True)
class GuardedReplica:
    """One replica (or its surge) behind the guard: its container name and its port (vLLM on 127.0.0.1:port)."""

    name: str
    port: int


def guarded(specs: Iterable[Mapping[str, Any]]) -> list[GuardedReplica]:
    """The replicas of one host's plan (fleet_plan's ``hosts[host]`` specs) that listen on loopback because of sleep
    mode: ``container.sleep_mode`` and no ``host`` of their own (an explicit loopback ``host`` stays private). A
    rolling replica's surge port is guarded too. Sorted by port; two on one port is an error."""
    out: dict[int, GuardedReplica] = {}
    for spec in specs:
        container = spec.get("container") or {}
        if not container.get("sleep_mode") or str(container.get("host") or "") not in WILDCARD:
            continue
        rollout = spec.get("rollout") or {}
        pairs = [(str(spec["name"]), spec.get("port"))]
        if rollout.get("surge_port") is not None:
            pairs.append((f"{spec['name']}-surge", rollout["surge_port"]))
        for name, port in pairs:
            if port is None:
                raise GpufleetError(f"replica guard: {name} has no port in the plan")
            port = int(port)
            if not 1 <= port <= 65535:
                raise GpufleetError(f"replica guard: {name}'s port {port} is not in 1..65535")
            if port in out:
                raise GpufleetError(f"replica guard: {name} and {out[port].name} both on port {port}")
            out[port] = GuardedReplica(name, port)
    return [out[p] for p in sorted(out)]


def haproxy_config(replicas: Iterable[GuardedReplica], bind: str, timeout: int | str | None = None) -> str:
    """HAProxy's configuration for one GPU host: per guarded replica a frontend on ``bind:port`` and the server on
    ``127.0.0.1:port``; the client paths pass (vLLM checks the API key on ``/v1``), anything else is 403.
    ``bind`` must be one address of the host: a wildcard would collide with vLLM's loopback socket on the same port,
    and loopback would guard nothing."""
    bind = str(bind or "").strip().strip("[]")
    if bind in WILDCARD or bind in ("127.0.0.1", "::1", "localhost") or not _ADDRESS_RE.match(bind):
        raise GpufleetError(
            f"replica guard: bind address {bind or 'nothing'!r} must be the host's own address (the one the gateway "
            "reaches its replicas at), not a wildcard or loopback: vLLM listens on 127.0.0.1 on the same port"
        )
    seconds = int(DEFAULT_TIMEOUT if timeout in (None, "") else timeout)
    if seconds < 1:
        raise GpufleetError(f"replica guard: timeout must be a positive number of seconds, got {seconds}")
    listen = listen_address(bind)
    lines = head(
        "Managed by gpufleet.vllm (role deployments): HAProxy in front of the sleep-mode replicas (docs/node_agent.md)",
        seconds,
    )
    for r in replicas:
        name = section_name(r.name)
        lines += [
            f"frontend replica_{name}",
            f"    bind {listen}:{r.port}",
            f"    acl client_path path_beg {' '.join(CLIENT_PATH_PREFIXES)}",
            f"    acl client_path path {' '.join(CLIENT_PATHS)}",
            f"    acl odd_path path_sub -i {' '.join(ODD_PATH_PARTS)}",
            "    http-request deny deny_status 403 if odd_path",
            "    http-request deny deny_status 403 if !client_path",
            f"    default_backend vllm_{name}",
            "",
            f"backend vllm_{name}",
            f"    server vllm 127.0.0.1:{r.port}",
            "",
        ]
    return "\n".join(lines)
