# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drain during a rollout (docs/rollouts.md, "Gateway"): a replica leaves its deployment's routers before its
container stops and joins them again only after it passed the readiness gate.

``fleet_apply`` runs on the GPU host; the routers run on the gateway hosts. The role hands ``fleet_apply`` the
routers the gateway hosts run (``gateway_info``: deployment and URL of each), and ``Gateways`` calls their worker
API from the GPU host (``_gateway/workers.py``, the same client as ``gateway_workers``):

* ``leave(deployment, url, base)``: removes the worker from every router of the deployment that lists it (a router
  that no longer lists a worker sends it no new request; the requests it is serving finish), then waits until the
  replica has no request running or waiting (its own ``/metrics``: ``vllm:num_requests_running`` +
  ``vllm:num_requests_waiting``, read on this host, two readings in a row), at most ``drain_timeout`` seconds;
* ``join(routers, url)``: adds it back to those routers (the router's add returns once its own health check of the
  worker passed).

Nothing here runs in check mode (fleet_apply does not build a ``Gateways`` then). A router that does not answer is a
warning, not a failure: its own health checks and retries then cover the replica's restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.config import worker_url
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.workers import RouterClient, normalize_url
from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import metrics

IN_FLIGHT_METRICS = (metrics.RUNNING, metrics.WAITING)
POLL_S = 0.2


def in_flight(metrics_text: str) -> float:
    """Requests a vLLM server is running or has waiting, from its Prometheus text (summed over label sets)."""
    return sum(metrics.sums(metrics_text, IN_FLIGHT_METRICS).values())


def replica_in_flight(base: str) -> float | None:
    """The replica's requests in flight (None: its /metrics did not answer, so it serves nothing)."""
    status, body = readiness.http(base + "/metrics", timeout=2.0)
    if status != 200:
        return None
    return in_flight(body.decode("utf-8", "replace"))


def routers_by_deployment(entries: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """``gateway_info``'s routers (``deployment``, ``url``; those not ``up`` left out) as {deployment: [url]}."""
    out: dict[str, list[str]] = {}
    for e in entries or []:
        if not isinstance(e, Mapping) or not e.get("deployment") or not e.get("url") or e.get("up") is False:
            continue
        urls = out.setdefault(str(e["deployment"]), [])
        if str(e["url"]) not in urls:
            urls.append(str(e["url"]))
    return out


class Gateways:
    """The routers of each deployment, and the drain of one replica from them."""

    def __init__(
        self,
        routers: Iterable[Mapping[str, Any]],
        worker_address: str,
        drain_timeout: float = 60.0,
        api_key: str | None = None,
        warn: Callable[[str], None] | None = None,
        client: Callable[..., RouterClient] = RouterClient,
        idle: Callable[[str], float | None] = replica_in_flight,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.by_dep = routers_by_deployment(routers)
        self.address = worker_address
        self.drain_timeout = float(drain_timeout)
        self.warn = warn or (lambda msg: None)
        self._client, self._api_key = client, api_key
        self._clients: dict[str, RouterClient] = {}
        self.idle, self.clock, self.sleep = idle, clock, sleep

    def has(self, deployment: str) -> bool:
        return bool(self.by_dep.get(deployment))

    def worker(self, port: int) -> str:
        """The URL the routers know this host's replica on ``port`` by (as the gateway role computes it)."""
        return normalize_url(worker_url(self.address, int(port)))

    def routers(self, deployment: str) -> list[RouterClient]:
        out = []
        for url in self.by_dep.get(deployment) or []:
            if url not in self._clients:
                kwargs = {"api_key": self._api_key} if self._api_key else {}
                self._clients[url] = self._client(url, **kwargs)
            out.append(self._clients[url])
        return out

    def wait_idle(self, base: str) -> tuple[bool, float]:
        """Until the replica at ``base`` has nothing in flight two readings in a row (True), or drain_timeout
        passed (False); and the seconds waited."""
        start = self.clock()
        quiet = 0
        while True:
            n = self.idle(base)
            quiet = quiet + 1 if not n else 0
            waited = self.clock() - start
            if quiet >= 2:
                return True, waited
            if waited >= self.drain_timeout:
                return False, waited
            self.sleep(POLL_S)

    def leave(self, deployment: str, url: str, base: str, actions: list[str]) -> list[RouterClient]:
        """Take ``url`` out of the deployment's routers that list it and wait for its requests in flight to finish.
        Returns the routers it left (to ``join`` again)."""
        left = []
        for router in self.routers(deployment):
            try:
                if url not in router.list_workers():
                    continue
                router.remove_worker(url)
            except GpufleetError as err:
                self.warn(f"{deployment}: could not take {url} out of the gateway {router.url}: {err}")
                continue
            left.append(router)
            actions.append(f"gateway: {url} left {router.url}")
        if left:
            drained, waited = self.wait_idle(base)
            if drained:
                actions.append(f"gateway: {url} drained in {waited:.1f} s")
            else:
                actions.append(f"gateway: {url} still had requests after the drain timeout ({waited:.0f} s)")
                self.warn(f"{deployment}: {url} still had requests in flight after {waited:.0f} s (drain_timeout)")
        return left

    def join(self, deployment: str, routers: Iterable[RouterClient], url: str, actions: list[str]) -> None:
        """Put ``url`` (which passed the readiness gate) into ``routers``; raises when a router refuses it."""
        for router in routers:
            if url in router.list_workers():
                continue
            router.add_worker(url)
            actions.append(f"gateway: {url} joined {router.url}")

    def rejoin(self, deployment: str, routers: Iterable[RouterClient], url: str, actions: list[str]) -> None:
        """``join`` after an in-place replacement: a router that does not take the replica back is a warning (the
        gateway play sets every router's whole set at the end of the converge)."""
        for router in routers:
            try:
                self.join(deployment, [router], url, actions)
            except GpufleetError as err:
                self.warn(f"{deployment}: {url} did not join the gateway {router.url} again: {err}")
