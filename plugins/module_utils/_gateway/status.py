# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a gateway host runs: its routers (from ``<install_dir>/routers/<deployment>/router.args``, written by the
role) and, asked over HTTP, whether each answers and its workers' health as the router last checked it.

Behind the admin guard (HAProxy, docs/gateway.md) the router listens on loopback; the clients' endpoint is then in
``routers/<deployment>/endpoint`` (``address port``, written by the role), and that is what ``address``/``port``/``url``
report: the URL the fleet's hosts reach the router (and its worker API) at."""

from __future__ import annotations

import os
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.workers import RouterClient


def parse_args_file(text: str) -> dict[str, str]:
    """``--key=value`` lines of router.args as {key: value} (the role writes one argument per line)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("--") and "=" in line:
            key, value = line[2:].split("=", 1)
            out[key] = value
    return out


def configured_routers(install_dir: str) -> list[dict[str, Any]]:
    """The routers the role configured on this host: deployment, address, port, metrics_port (sorted by name)."""
    routers_dir = os.path.join(install_dir, "routers")
    try:
        names = sorted(os.listdir(routers_dir))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        path = os.path.join(routers_dir, name, "router.args")
        try:
            with open(path, encoding="utf-8") as fh:
                args = parse_args_file(fh.read())
        except FileNotFoundError:
            continue
        try:
            port, metrics = int(args["port"]), int(args.get("prometheus-port", 0))
        except (KeyError, ValueError) as err:
            raise GpufleetError(f"{path} has no valid --port (rewrite it with playbooks/gateway.yml)") from err
        entry = {"deployment": name, "address": args.get("host", "127.0.0.1"), "port": port, "metrics_port": metrics}
        endpoint = _endpoint(os.path.join(routers_dir, name, "endpoint"))
        if endpoint:
            entry.update(address=endpoint[0], port=endpoint[1])
        out.append(entry)
    return out


def _endpoint(path: str) -> tuple[str, int] | None:
    """``address port`` of the clients' endpoint (the guard's HAProxy), when the role wrote one."""
    try:
        with open(path, encoding="utf-8") as fh:
            address, port = fh.read().split()
        return address, int(port)
    except (FileNotFoundError, ValueError):
        return None


def router_status(router: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """``router`` plus url, up (its /health answered), workers [{url, healthy, load}] and error (when down)."""
    host = router["address"]
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://[{host}]:{router['port']}" if ":" in host else f"http://{host}:{router['port']}"
    client = RouterClient(url, timeout=timeout)
    out = {**router, "url": url, "up": False, "workers": [], "error": None}
    try:
        out["workers"] = client.workers()
        out["up"] = True
    except GpufleetError as err:
        out["error"] = str(err)
    return out


def gateway_status(install_dir: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    return [router_status(r, timeout) for r in configured_routers(install_dir)]
