# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A vllm-router's worker set: its HTTP API (``RouterClient``), the diff against a wanted set and ``ensure_workers``.

The API of the rollout (the module ``gpufleet.vllm.gateway_workers`` runs these same functions):

    client = RouterClient("http://10.0.0.5:30000")
    ensure_workers(client, wanted, remove=[url])           # take a replica out before its container stops
    ensure_workers(client, wanted, add=[url])              # put it back once it passed the gate
    ensure_workers(client, wanted=[...])                   # make the set exactly `wanted`
    client.workers()                                       # [{url, healthy, load}] for status

Facts about vllm-router 0.1.17 this relies on (tested against it in tests/integration/test_gateway.py):
``GET /list_workers`` → ``{"urls": [...]}``; ``GET /workers`` → ``{"workers": [{"url", "is_healthy", "load"}]}``;
``POST /add_worker?url=U`` blocks until U answers its health check (up to the router's
``--worker-startup-timeout-secs``) and answers 400 when U is already there; ``POST /remove_worker?url=U`` answers 200
even for a URL it does not have. So idempotence comes from the listed set, never from status codes, and a removed
worker gets no new request while the requests it already has finish (the router only stops choosing it).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_if_changed


def normalize_url(url: str) -> str:
    """A worker URL as the router lists it: scheme and host lower-case, no trailing slash."""
    url = str(url).strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise GpufleetError(f"worker {url!r} is not an http(s)://host:port URL")
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class WorkerDiff:
    add: tuple[str, ...]
    remove: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.add or self.remove)


def diff_workers(
    current: Iterable[str],
    wanted: Iterable[str] | None = None,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
) -> tuple[list[str], WorkerDiff]:
    """The set the router must end with and what to add/remove to get there (sorted, normalized).

    ``wanted`` (None: keep the current set) is the whole set; ``add`` and ``remove`` then adjust it. A URL in both
    ``add`` and ``remove`` is an error."""
    cur = {normalize_url(u) for u in current}
    add_s = {normalize_url(u) for u in add}
    rm_s = {normalize_url(u) for u in remove}
    both = sorted(add_s & rm_s)
    if both:
        raise GpufleetError(f"worker(s) both added and removed: {', '.join(both)}")
    target = set(cur) if wanted is None else {normalize_url(u) for u in wanted}
    target = (target | add_s) - rm_s
    return sorted(target), WorkerDiff(tuple(sorted(target - cur)), tuple(sorted(cur - target)))


class RouterClient:
    """The router's worker API over HTTP (urllib; the router's address is loopback or the gateway host's)."""

    def __init__(self, url: str, timeout: float = 10.0, add_timeout: float = 150.0, api_key: str | None = None) -> None:
        parts = urllib.parse.urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise GpufleetError(f"router {url!r} is not an http(s)://host:port URL")
        self.url = str(url).rstrip("/")
        self.timeout = float(timeout)
        self.add_timeout = float(add_timeout)
        # Sent as a bearer token on every call, for a router whose admin API asks for one (never logged).
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _call(self, method: str, path: str, timeout: float | None = None) -> tuple[int, str]:
        # Imported here: ansible.module_utils.urls (http.client, ssl, ...) is ~0.15 s of CPU per module run, and
        # fleet_apply, which imports this file, mostly runs without a router to call. It honours proxy env and CAs.
        from ansible.module_utils.urls import open_url

        try:
            with open_url(
                self.url + path,
                method=method,
                data=b"" if method == "POST" else None,
                headers=self._headers,
                timeout=timeout or self.timeout,
            ) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode("utf-8", "replace")
        except (OSError, ValueError) as err:
            raise GpufleetError(
                f"the gateway router at {self.url} cannot be reached ({err}); is it running? "
                "(playbooks/gateway.yml starts it)",
                failure_class="gateway_unreachable",
            ) from err

    def _json(self, path: str) -> Any:
        code, body = self._call("GET", path)
        if code != 200:
            raise GpufleetError(f"GET {self.url}{path} answered {code}: {body[:200]}")
        try:
            return json.loads(body)
        except ValueError as err:
            raise GpufleetError(f"GET {self.url}{path} did not answer JSON: {body[:200]}") from err

    def list_workers(self) -> list[str]:
        urls = self._json("/list_workers").get("urls", [])
        return sorted(normalize_url(u) for u in urls)

    def workers(self) -> list[dict[str, Any]]:
        """Each worker's URL, health as the router last checked it, and load (the router's count; load-aware policies
        only, 0 with round_robin), sorted by URL."""
        rows = self._json("/workers").get("workers", [])
        out = [
            {"url": normalize_url(w["url"]), "healthy": bool(w.get("is_healthy")), "load": int(w.get("load") or 0)}
            for w in rows
        ]
        return sorted(out, key=lambda w: w["url"])

    def health(self) -> bool:
        try:
            return self._call("GET", "/health", timeout=min(self.timeout, 5.0))[0] == 200
        except GpufleetError:
            return False

    def add_worker(self, url: str) -> None:
        q = urllib.parse.urlencode({"url": url})
        code, body = self._call("POST", f"/add_worker?{q}", timeout=self.add_timeout)
        if code != 200 and url not in self.list_workers():
            raise GpufleetError(
                f"the gateway router at {self.url} did not add {url} ({code}: {body.strip()[:200]}); the router adds "
                "a worker only once it answers /health",
                failure_class="gateway_worker_unhealthy",
            )

    def remove_worker(self, url: str) -> None:
        q = urllib.parse.urlencode({"url": url})
        code, body = self._call("POST", f"/remove_worker?{q}")
        if code != 200 or url in self.list_workers():
            raise GpufleetError(f"the gateway router at {self.url} did not remove {url} ({code}: {body.strip()[:200]})")


def write_workers_file(path: str, urls: Iterable[str]) -> bool:
    """Write the URL list the launcher adds after a restart (one per line, its directory created); True when the
    content changed (an unchanged file is not touched)."""
    return write_if_changed(path, _workers_text(urls), 0o644)


def _workers_text(urls: Iterable[str]) -> str:
    return "".join(f"{u}\n" for u in urls)


def ensure_workers(
    client: RouterClient,
    wanted: Iterable[str] | None = None,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    check_mode: bool = False,
    workers_file: str = "",
) -> dict[str, Any]:
    """Make the router's worker set what ``diff_workers`` says; removals first (a replica leaves before anything
    else happens). Result: changed, added, removed, before, after (sorted lists), workers_file_changed."""
    before = client.list_workers()
    target, d = diff_workers(before, wanted, add, remove)
    if not check_mode:
        for url in d.remove:
            client.remove_worker(url)
        for url in d.add:
            client.add_worker(url)
    file_changed = False
    if workers_file:
        if check_mode:
            try:
                with open(workers_file, encoding="utf-8") as fh:
                    file_changed = fh.read() != _workers_text(target)
            except FileNotFoundError:
                file_changed = True
        else:
            file_changed = write_workers_file(workers_file, target)
    after = target if check_mode else client.list_workers()
    return {
        "changed": d.changed or file_changed,
        "added": list(d.add),
        "removed": list(d.remove),
        "before": before,
        "after": after,
        "workers_file_changed": file_changed,
    }
