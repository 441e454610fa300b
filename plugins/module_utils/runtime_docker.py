# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Docker adapter (docker SDK, low-level API client).

GPUs: one ``DeviceRequest(driver='nvidia', device_ids=[...], capabilities=[['gpu']])`` (``count=-1`` for all).
dockerd reports it back with ``Count``/``Driver`` normalized differently from what was sent (the trap that makes
community.docker recreate on every run); we never compare it: the config-hash label decides.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils.errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils.labels import MANAGED
from ansible_collections.gpufleet.vllm.plugins.module_utils.runtime import (
    ContainerState,
    CreateSpec,
    ImageInfo,
    Runtime,
    raw_http,
    state_from_inspect,
)

# The docker SDK is imported on first use (writes, logs): the no-op path never needs it.
docker: Any = None
APIError: Any = Exception
DockerException: Any = Exception
NotFound: Any = Exception
DeviceRequest: Any = None


def _load_sdk() -> None:
    global docker, APIError, DockerException, NotFound, DeviceRequest
    if docker is not None:
        return
    try:
        import docker as _docker
        from docker.errors import APIError as _APIError
        from docker.errors import DockerException as _DockerException
        from docker.errors import NotFound as _NotFound
        from docker.types import DeviceRequest as _DeviceRequest
    except ImportError as e:  # pragma: no cover - depends on the target
        raise GpufleetError(f"the docker Python SDK is needed on the target (pip install docker): {e}") from e
    docker, APIError, DockerException, NotFound, DeviceRequest = (
        _docker, _APIError, _DockerException, _NotFound, _DeviceRequest)  # fmt: skip


API_VERSION = "1.41"  # dockerd 20.10: enough for DeviceRequests; a fixed version avoids a /version round trip


class _FastReader:
    """Read-only Engine API calls over the unix socket without the docker SDK (requests, urllib3, websocket...).

    The no-op path of vllm_container is three GETs; doing them this way is most of what makes it cheap.
    Writes go through the docker SDK.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def get(self, url: str) -> tuple[int, Any]:
        try:
            status, body = raw_http(self.path, "GET", f"/v{API_VERSION}{url}")
        except OSError as e:
            raise GpufleetError(f"cannot reach dockerd at unix://{self.path}: {e}") from e
        if status >= 400:
            return status, body.decode("utf-8", "replace")
        return status, json.loads(body) if body else None

    def close(self) -> None:
        pass


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    buf = b""
    for chunk in chunks:
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode("utf-8", "replace").rstrip("\r")
    if buf:
        yield buf.decode("utf-8", "replace")


class DockerRuntime(Runtime):
    name = "docker"

    def __init__(self, base_url: str | None = None) -> None:
        self.url = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self._api: Any = None
        self.fast = _FastReader(self.url[len("unix://") :]) if self.url.startswith("unix://") else None
        if self.fast is None:
            self._sdk()

    def _sdk(self) -> Any:
        if self._api is None:
            _load_sdk()
            try:
                self._api = docker.APIClient(
                    base_url=self.url, version=os.environ.get("DOCKER_API_VERSION", API_VERSION), timeout=60
                )
            except DockerException as e:
                raise GpufleetError(f"cannot reach dockerd at {self.url}: {e}") from e
        return self._api

    @property
    def api(self) -> Any:
        return self._sdk()

    def _call(self, what: str, fn: Any, *a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except NotFound:
            raise
        except (APIError, DockerException) as e:
            raise GpufleetError(f"docker {what} failed: {getattr(e, 'explanation', None) or e}") from e

    def _inspect(self, kind: str, ref: str) -> dict[str, Any] | None:
        if self.fast is not None:
            status, data = self.fast.get(f"/{kind}/{urllib.parse.quote(ref, safe='/:@')}/json")
            if status == 404:
                return None
            if status >= 400:
                raise GpufleetError(f"docker {kind} inspect {ref} failed: {data}")
            return data
        fn = self.api.inspect_container if kind == "containers" else self.api.inspect_image
        try:
            return self._call("inspect", fn, ref)
        except NotFound:
            return None

    def container(self, name: str) -> ContainerState | None:
        d = self._inspect("containers", name)
        return state_from_inspect(d) if d else None

    def image(self, ref: str) -> ImageInfo | None:
        d = self._inspect("images", ref)
        if not d:
            return None
        cfg = d.get("Config") or {}
        env = dict(e.split("=", 1) for e in cfg.get("Env") or [] if "=" in e)
        return ImageInfo(
            id=d["Id"],
            entrypoint=list(cfg.get("Entrypoint") or []),
            env=env,
            labels=dict(cfg.get("Labels") or {}),
            repo_digests=list(d.get("RepoDigests") or []),
        )

    def create(self, spec: CreateSpec) -> str:
        _load_sdk()
        device_requests = []
        if spec.gpus == ["all"]:
            device_requests = [DeviceRequest(driver="nvidia", count=-1, capabilities=[["gpu"]])]
        elif spec.gpus:
            device_requests = [DeviceRequest(driver="nvidia", device_ids=list(spec.gpus), capabilities=[["gpu"]])]
        host_kw: dict[str, Any] = {
            "binds": [f"{s}:{d}:{m}" for s, d, m in spec.mounts],
            "network_mode": spec.network,
            "device_requests": device_requests or None,
            "restart_policy": {"Name": spec.restart_policy if spec.restart_policy != "no" else ""},
        }
        if spec.ipc:
            host_kw["ipc_mode"] = spec.ipc
        if spec.shm_size:
            host_kw["shm_size"] = spec.shm_size
        ports = None
        if spec.network != "host":
            ports = [spec.port]
            host_kw["port_bindings"] = {spec.port: (spec.host if spec.host != "0.0.0.0" else "", spec.port)}
        hc = self.api.create_host_config(**host_kw)
        r = self._call(
            "create",
            self.api.create_container,
            image=spec.image,
            command=spec.command,
            name=spec.name,
            environment=spec.env,
            labels=spec.labels,
            host_config=hc,
            ports=ports,
            detach=True,
        )
        return r["Id"]

    def start(self, cid: str) -> None:
        self._call("start", self.api.start, cid)

    def stop(self, cid: str, timeout: int) -> None:
        self._call("stop", self.api.stop, cid, timeout=timeout)

    def remove(self, cid: str) -> None:
        try:
            self._call("remove", self.api.remove_container, cid, force=True)
        except NotFound:
            pass

    def rename(self, cid: str, new_name: str) -> None:
        self._call("rename", self.api.rename, cid, new_name)

    def pause(self, cid: str) -> None:
        self._call("pause", self.api.pause, cid)

    def unpause(self, cid: str) -> None:
        self._call("unpause", self.api.unpause, cid)

    def logs(self, cid: str, tail: int = 300) -> list[str]:
        try:
            raw = self.api.logs(cid, stdout=True, stderr=True, tail=tail)
        except (APIError, DockerException):
            return []
        return raw.decode("utf-8", "replace").splitlines()

    def follow(self, cid: str) -> Iterator[str]:
        _load_sdk()
        # A separate client: the stream holds its connection for as long as the container runs.
        client = docker.APIClient(base_url=self.url, version=self.api.api_version, timeout=None)
        try:
            yield from _lines(client.logs(cid, stdout=True, stderr=True, stream=True, follow=True))
        finally:
            client.close()

    def list_managed(self) -> list[ContainerState]:
        out = []
        for c in self._call("list", self.api.containers, all=True, filters={"label": f"{MANAGED}=true"}):
            st = self.container(c["Id"])
            if st:
                out.append(st)
        return out

    def pids(self, cid: str) -> list[int]:
        try:
            top = self.api.top(cid, ps_args="-eo pid")
        except (APIError, DockerException):
            return []
        return [int(p[0]) for p in top.get("Processes") or [] if p and str(p[0]).isdigit()]

    def close(self) -> None:
        if self.fast is not None:
            self.fast.close()
        if self._api is not None:
            self._api.close()
