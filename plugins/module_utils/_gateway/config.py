# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the gateway runs: one vllm-router per deployment, its port and its workers, from the fleet plan.

``routers()`` turns the plan's assignments (fleet_plan: ``deployment``, ``host``, ``port`` per replica) and the
hosts' addresses into one ``Router`` per deployment; ``router_argv()`` is the router's command line (no secret: the
API key goes through a file, see launch.py). Ports: ``ports[name]`` when given, else ``base_port`` + the position of
the deployment's name among all declared names, sorted (stable while the set of names does not change; pin ports in
``ports`` for deployments that come and go). An entry of ``ports`` for a deployment that is not declared (``absent``,
pruned, or a typo: ``unused_ports()`` names them) gets no router and is no error: a pinned port outlives its deployment,
and a converge that removes a deployment must not fail at its gateway after its replicas are gone. The Prometheus port
is the router's port + ``metrics_offset``.

The admin guard (``admin_guard``, docs/gateway.md "The admin API"): vllm-router serves its worker API (``/add_worker``,
``/remove_worker``, ...) on the clients' port without any authentication and has no flag to move or guard it, so with
the guard the router listens on loopback only (its port + ``internal_offset``) and HAProxy (the Debian package) takes
the clients' port: ``haproxy_config()`` passes the OpenAI API (``/v1/...``), ``/health`` and the read-only worker
listings from anywhere, and every other path only from the fleet's own hosts (the GPU hosts, whose ``fleet_apply``
drains replicas, and this host). Its head, bind address and section names: ``haproxy.py``, as the replica guard's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.haproxy import head, listen_address, section_name

POLICIES = ("random", "round_robin", "cache_aware", "power_of_two", "consistent_hash")
# What a client may reach through the guard from anywhere: the OpenAI API and the health check. Everything else of
# vllm-router (its worker API, /flush_cache, /get_loads, ...) only from the fleet's own hosts: an allow-list, so a
# route a newer vllm-router adds is guarded too.
CLIENT_PATH_PREFIXES = ("/v1/",)
CLIENT_PATHS = ("/health",)
# Read-only listings of the workers (GET/HEAD only: sglang-style routers take POST /workers as an add).
LISTING_PATHS = ("/list_workers", "/workers")
DEFAULT_INTERNAL_OFFSET = 2000
_SOURCE_RE = re.compile(r"^[A-Za-z0-9_.:-]+(/[0-9]{1,3})?$")  # an address, a network or a host name
_HOST_RE = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")


@dataclass(frozen=True)
class Router:
    """One deployment's router: where it listens and the worker URLs it must route to (sorted)."""

    deployment: str
    port: int
    metrics_port: int
    workers: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "port": self.port,
            "metrics_port": self.metrics_port,
            "workers": list(self.workers),
        }


def worker_url(address: str, port: int) -> str:
    """``http://address:port`` (IPv6 addresses bracketed); refuses what is not a host name or address."""
    address = str(address).strip()
    if not address or not _HOST_RE.match(address):
        raise GpufleetError(f"worker address {address!r} is not a host name or IP address")
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    port = int(port)
    if not 1 <= port <= 65535:
        raise GpufleetError(f"worker port {port} is not in 1..65535")
    return f"http://{address}:{port}"


def routers(
    names: Iterable[str],
    assignments: Iterable[Mapping[str, Any]],
    addresses: Mapping[str, str],
    ports: Mapping[str, int] | None = None,
    base_port: int = 30000,
    metrics_offset: int = 1000,
) -> list[Router]:
    """One Router per deployment name (sorted), its workers from the plan's assignments.

    ``addresses`` maps an inventory host to the address the gateway reaches its replicas at (the host's
    ``gpufleet_advertise_address``, else ``ansible_host``, else its name). An assignment without a port, or on a
    host with no address, is an error: a gateway that silently drops a replica hides a broken plan. ``ports`` of names
    not declared are left out (see the module's docstring and ``unused_ports()``)."""
    ports = dict(ports or {})
    all_names = sorted(set(names))
    index = {n: i for i, n in enumerate(all_names)}
    workers: dict[str, set[str]] = {n: set() for n in all_names}
    for asg in assignments:
        dep = str(asg["deployment"])
        if dep not in workers:
            continue
        if asg.get("port") is None:
            raise GpufleetError(f"{dep}: replica {asg.get('replica')} on {asg.get('host')} has no port in the plan")
        host = str(asg["host"])
        workers[dep].add(worker_url(addresses.get(host) or host, int(asg["port"])))
    out, used = [], {}
    for name in all_names:
        port = int(ports.get(name, base_port + index[name]))
        metrics = port + int(metrics_offset)
        for p in (port, metrics):
            if not 1 <= p <= 65535:
                raise GpufleetError(f"{name}: gateway port {p} is not in 1..65535 (gateway ports / base port)")
            if p in used:
                raise GpufleetError(f"{name}: gateway port {p} is already used by {used[p]}'s router")
            used[p] = name
        out.append(Router(name, port, metrics, tuple(sorted(workers[name]))))
    return out


def unused_ports(ports: Mapping[str, Any] | None, names: Iterable[str]) -> list[str]:
    """The names in ``ports`` that are not among ``names`` (sorted): ports ``routers()`` gives no router."""
    return sorted(set(ports or {}) - {str(n) for n in names})


def router_argv(router: Router, bind: str, settings: Mapping[str, Any]) -> list[str]:
    """The router's arguments (one per element; the role writes one per line into router.args). Never a secret."""
    if not bind or (bind in ("0.0.0.0", "::") and not settings.get("allow_any_address")):
        raise GpufleetError(
            f"{router.deployment}: refusing to bind the gateway to {bind or 'nothing'!r}; name an address "
            "(set gateway_allow_any_address=true to listen on every interface)"
        )
    policy = str(settings.get("policy", "round_robin"))
    if policy not in POLICIES:
        raise GpufleetError(f"gateway policy {policy!r} is not one of {', '.join(POLICIES)}")
    s = {
        "health_check_interval_secs": 2,
        "health_check_timeout_secs": 2,
        "health_failure_threshold": 2,
        "health_success_threshold": 1,
        "retry_max_retries": 3,
        "worker_startup_timeout_secs": 120,
        "worker_startup_check_interval": 1,
        "request_timeout_secs": 1800,
        "metrics_address": bind,
        "log_level": "info",
    }
    s.update({k: v for k, v in settings.items() if v is not None and v != ""})
    host, port = bind, router.port
    if _truthy(s.get("admin_guard")):  # HAProxy takes the clients' port; the router listens on loopback only
        host, port = "127.0.0.1", internal_port(router, s)
    argv = [
        f"--host={host}",
        f"--port={port}",
        f"--policy={policy}",
        f"--prometheus-host={s['metrics_address']}",
        f"--prometheus-port={router.metrics_port}",
        "--health-check-endpoint=/health",
    ]
    for key in (
        "health_check_interval_secs",
        "health_check_timeout_secs",
        "health_failure_threshold",
        "health_success_threshold",
        "retry_max_retries",
        "worker_startup_timeout_secs",
        "worker_startup_check_interval",
        "request_timeout_secs",
    ):
        value = int(s[key])
        if value < (0 if key == "retry_max_retries" else 1):
            raise GpufleetError(f"gateway {key} must be a positive integer, got {value}")
        argv.append(f"--{key.replace('_', '-')}={value}")
    argv.append(f"--log-level={s['log_level']}")
    return argv


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def admin_url(router: Router, bind: str, settings: Mapping[str, Any]) -> str:
    """Where the gateway host itself reaches the router (its worker API): loopback with the admin guard."""
    if _truthy(settings.get("admin_guard")):
        return f"http://127.0.0.1:{internal_port(router, settings)}"
    host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind
    return f"http://[{host}]:{router.port}" if ":" in host else f"http://{host}:{router.port}"


def internal_port(router: Router, settings: Mapping[str, Any]) -> int:
    """Where the guarded router listens on loopback: its port + ``internal_offset`` (default 2000)."""
    offset = settings.get("internal_offset")
    port = router.port + int(DEFAULT_INTERNAL_OFFSET if offset in (None, "") else offset)
    if not 1 <= port <= 65535 or port in (router.port, router.metrics_port):
        raise GpufleetError(f"{router.deployment}: internal router port {port} is not a free port in 1..65535")
    return port


def _source(address: str) -> str:
    address = str(address).strip().strip("[]")
    if not address or not _SOURCE_RE.match(address):
        raise GpufleetError(
            f"admin source {address!r} is not an IP address, network or host name (HAProxy resolves names at start)"
        )
    return address


def haproxy_config(
    routers: Iterable[Router], bind: str, admin_sources: Iterable[str], settings: Mapping[str, Any]
) -> str:
    """HAProxy's configuration for the guarded routers of one gateway host: per router a frontend on
    ``bind:port`` (the clients' endpoint) and the router on ``127.0.0.1:internal port``. The OpenAI API, /health and
    the read-only worker listings (GET /list_workers, /workers) pass from anywhere; any other path or method only
    from ``admin_sources`` (the GPU hosts' addresses; loopback and ``bind`` are added), else 403. Timeouts follow
    the router's request timeout (long generations and streams)."""
    routers = list(routers)
    if not bind or (bind in ("0.0.0.0", "::") and not _truthy(settings.get("allow_any_address"))):
        raise GpufleetError(f"refusing to bind the gateway to {bind or 'nothing'!r}; name an address")
    sources = sorted({_source(a) for a in [*admin_sources, "127.0.0.1", "::1", bind] if a not in ("0.0.0.0", "::")})
    request_timeout = int(settings.get("request_timeout_secs") or 1800)
    listen = listen_address(bind)
    lines = head(
        "Managed by gpufleet.vllm (role gateway): HAProxy in front of the deployments' vllm-routers (docs/gateway.md)",
        request_timeout + 60,
    )
    for r in routers:
        name = section_name(r.deployment)
        lines += [
            f"frontend gw_{name}",
            f"    bind {listen}:{r.port}",
            f"    acl client_path path_beg {' '.join(CLIENT_PATH_PREFIXES)}",
            f"    acl client_path path {' '.join(CLIENT_PATHS)}",
            f"    acl fleet_host src {' '.join(sources)}",
            f"    acl listing path {' '.join(LISTING_PATHS)}",
            "    acl read_only method GET HEAD",
            "    http-request allow if listing read_only",
            "    http-request deny deny_status 403 if !client_path !fleet_host",
            f"    default_backend router_{name}",
            "",
            f"backend router_{name}",
            f"    server router 127.0.0.1:{internal_port(r, settings)}",
            "",
        ]
    return "\n".join(lines)
