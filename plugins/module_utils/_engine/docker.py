# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Docker adapter (docker SDK, low-level API client).

GPUs: one ``DeviceRequest(driver='nvidia', device_ids=[...], capabilities=[['gpu']])`` (``count=-1`` for all).
dockerd reports it back with ``Count``/``Driver`` normalized differently from what was sent (the trap that makes
community.docker recreate on every run); we never compare it: the config-hash label decides.

Reads (container and image inspects: the whole no-op path of vllm_container and vllm_image) are plain HTTP GETs on
the unix socket through ``runtime.raw_http`` (unversioned paths: no GET /version on the no-op path); the docker SDK
is imported only for writes, pulls and builds, or when the engine is not on a unix socket (tcp://, TLS). The image
operations (``inspect_image``, ``pull``, ``build``) only use the Docker Engine API, so the podman adapter runs them
against podman's Docker-compatible API service with an instance of this class.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import (
    ContainerState,
    CreateSpec,
    Runtime,
    raw_http,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._labels import MANAGED

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


# The oldest Engine API the collection needs (dockerd 20.10 / podman 4.3: DeviceRequests). The version actually used is
# the daemon's own (GET /version, one cheap round trip on the socket): newer dockerd releases refuse old client
# versions (Docker 29 requires 1.44 or newer), so a fixed version would break there. DOCKER_API_VERSION overrides.
API_VERSION = "1.41"
BUILD_LOG_TAIL = 25
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Substrings of engine/registry pull error messages (dockerd 20.10+, podman 4.x), first match wins.
_PULL_CLASSES: list[tuple[str, tuple[str, ...]]] = [
    (
        "registry_unreachable",
        (
            "connection refused",
            "no such host",
            "i/o timeout",
            "network is unreachable",
            "no route to host",
            "tls handshake timeout",
            "server gave http response to https client",
            "context deadline exceeded",
            "connection reset by peer",
            "dial tcp",
            "temporary failure in name resolution",
        ),
    ),
    (
        "unauthorized",
        (
            "unauthorized",
            "authentication required",
            "no basic auth credentials",
            "incorrect username or password",
            "denied: ",
            "401 unauthorized",
        ),
    ),
    ("not_found", ("manifest unknown", "not found", "name unknown", "repository does not exist", "no such image")),
]

_PULL_HINTS = {
    "registry_unreachable": "the registry cannot be reached from this host (check the registry address, the "
    "network/proxy settings of the engine, or use pull: never with a pre-loaded image)",
    "unauthorized": "the registry refused the credentials (set registry_username/registry_password, or log the "
    "engine in to the registry)",
    "not_found": "the registry has no such image or tag (check version/image: vLLM publishes v<release>, latest, "
    "nightly and nightly-<commit>; a private repository may also answer like this without credentials)",
}


def classify_pull_error(message: str) -> str:
    m = message.lower()
    for cls, needles in _PULL_CLASSES:
        if any(n in m for n in needles):
            return cls
    return "pull_failed"


def pull_error(ref: str, message: str, verb: str = "pull") -> GpufleetError:
    cls = classify_pull_error(message)
    hint = _PULL_HINTS.get(cls, f"the engine could not {verb} it")
    return GpufleetError(
        f"cannot {verb} {ref}: {hint}. Engine said: {message.strip()}", failure_class=cls, image=ref, cause=message
    )


def unix_socket_path(url: str) -> str | None:
    """The socket path of ``unix:///path`` (or a bare ``/path``); None for other engine addresses."""
    if url.startswith("unix://"):
        return url[len("unix://") :]
    if url.startswith("/"):
        return url
    return None


class _FastReader:
    """Read-only Engine API calls over the unix socket without the docker SDK (requests, urllib3, websocket...).

    The no-op path of vllm_container is three GETs; doing them this way is most of what makes it cheap.
    Writes go through the docker SDK.
    """

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self._version: str | None = os.environ.get("DOCKER_API_VERSION") or None

    @property
    def version(self) -> str:
        """The daemon's API version (unversioned GET /version), API_VERSION when it does not say."""
        if self._version is None:
            try:
                status, body = raw_http(self.path, "GET", "/version", timeout=self.timeout)
            except OSError as e:
                raise GpufleetError(f"cannot reach dockerd at unix://{self.path}: {e}") from e
            found = None
            if status == 200 and body:
                try:
                    found = json.loads(body).get("ApiVersion")
                except ValueError:
                    found = None
            self._version = str(found) if found else API_VERSION
        return self._version

    def get(self, url: str) -> tuple[int, Any]:
        # Unversioned: the daemon answers in its own API version (the inspect fields read here are the same in
        # every version since 1.41), which saves the GET /version round trip (~5 ms on dockerd 20.10) of a no-op.
        # DOCKER_API_VERSION still pins it.
        path = f"/v{self._version}{url}" if self._version else url
        try:
            status, body = raw_http(self.path, "GET", path, timeout=self.timeout)
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

    def __init__(self, base_url: str | None = None, timeout: int | None = None, engine: str = "docker") -> None:
        """``engine``: what error messages call the daemon (the podman adapter reuses this class on its API
        service for image operations)."""
        self.url = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self.engine = engine
        self.timeout = timeout or 60
        self._api: Any = None
        sock = unix_socket_path(self.url)
        if sock is not None:
            self.url = f"unix://{sock}"
        self.fast = _FastReader(sock, self.timeout) if sock is not None else None
        if self.fast is None:
            self._sdk()

    def _sdk(self) -> Any:
        if self._api is None:
            _load_sdk()
            try:
                version = self.fast.version if self.fast is not None else os.environ.get("DOCKER_API_VERSION", "auto")
                self._api = docker.APIClient(base_url=self.url, version=version, timeout=self.timeout)
            except DockerException as e:
                raise self._unreachable(e) from e
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
            status, data = self.fast.get(f"/{kind}s/{urllib.parse.quote(ref, safe='/:@')}/json")
            if status == 404:
                return None
            if status >= 400:
                raise GpufleetError(f"docker {kind}s inspect {ref} failed: {data}")
            return data
        fn = self.api.inspect_container if kind == "container" else self.api.inspect_image
        try:
            return self._call("inspect", fn, ref)
        except NotFound:
            return None

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
        if spec.restart_retries is not None and spec.restart_policy == "on-failure":
            host_kw["restart_policy"]["MaximumRetryCount"] = spec.restart_retries
        if spec.pid:
            host_kw["pid_mode"] = spec.pid
        if spec.ipc:
            host_kw["ipc_mode"] = spec.ipc
        if spec.shm_size:
            host_kw["shm_size"] = spec.shm_size
        if spec.log_driver:
            opts = {"max-size": spec.log_max_size, "max-file": str(spec.log_max_files) if spec.log_max_files else None}
            host_kw["log_config"] = {"type": spec.log_driver, "config": {k: v for k, v in opts.items() if v}}
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
            entrypoint=spec.entrypoint,
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

    def logs(self, cid: str, tail: int = 300, since: float | None = None, timestamps: bool = False) -> list[str]:
        kw: dict[str, Any] = {"tail": "all" if tail < 0 else tail, "timestamps": timestamps}
        if since:
            kw["since"] = float(since)
        try:
            raw = self.api.logs(cid, stdout=True, stderr=True, **kw)
        except (APIError, DockerException):
            return []
        return raw.decode("utf-8", "replace").splitlines()

    def follow(self, cid: str, since: float | None = None, timestamps: bool = False) -> Iterator[str]:
        _load_sdk()
        # A separate client: the stream holds its connection for as long as the container runs.
        client = docker.APIClient(base_url=self.url, version=self.api.api_version, timeout=None)
        kw: dict[str, Any] = {"timestamps": timestamps}
        if since:
            kw["since"] = float(since)
        try:
            yield from _lines(client.logs(cid, stdout=True, stderr=True, stream=True, follow=True, **kw))
        finally:
            client.close()

    def list_managed(self) -> list[ContainerState]:
        return self.list_labeled(f"{MANAGED}=true")

    def list_labeled(self, label: str) -> list[ContainerState]:
        out = []
        if self.fast is not None:  # a plain GET on the socket: vllm_deployment_info never needs the SDK
            query = urllib.parse.urlencode({"all": "1", "filters": json.dumps({"label": [label]})})
            status, listed = self.fast.get(f"/containers/json?{query}")
            if status >= 400:
                raise GpufleetError(f"docker container list failed: {listed}")
        else:
            listed = self._call("list", self.api.containers, all=True, filters={"label": label})
        for c in listed:
            st = self.container(c["Id"])
            if st:
                out.append(st)
        return out

    # --- image operations (vllm_image)

    def _unreachable(self, e: object) -> GpufleetError:
        return GpufleetError(
            f"cannot talk to the {self.engine} engine at {self.url}: {e}", failure_class="engine_unreachable"
        )

    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        if self.fast is not None:
            try:
                status, body = raw_http(
                    self.fast.path, "GET", f"/images/{urllib.parse.quote(ref, safe='/:@')}/json", timeout=self.timeout
                )
            except OSError as e:
                raise self._unreachable(e) from e
            if status == 404:
                return None
            if status != 200:
                raise GpufleetError(
                    f"cannot inspect image {ref}: {body.decode(errors='replace').strip()}", failure_class="engine"
                )
            return json.loads(body)
        api = self.api
        try:
            return api.inspect_image(ref)
        except (APIError, DockerException) as e:  # one clause: the names are Exception until the SDK is loaded
            if isinstance(e, NotFound) or getattr(getattr(e, "response", None), "status_code", None) == 404:
                return None
            if isinstance(e, APIError):
                msg = getattr(e, "explanation", None) or e
                raise GpufleetError(f"cannot inspect image {ref}: {msg}", failure_class="engine") from e
            raise self._unreachable(e) from e

    def pull(
        self,
        repository: str,
        tag: str,
        auth: dict[str, str] | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        ref = f"{repository}:{tag}" if not tag.startswith("sha256:") else f"{repository}@{tag}"
        api = self.api
        try:
            for line in api.pull(repository, tag, stream=True, decode=True, auth_config=auth or None):
                if progress is not None and isinstance(line, dict):
                    progress(line)
                if isinstance(line, dict) and (line.get("error") or line.get("errorDetail")):
                    msg = line.get("error") or (line.get("errorDetail") or {}).get("message") or str(line)
                    raise pull_error(ref, msg)
        except (APIError, DockerException) as e:
            if isinstance(e, APIError):
                raise pull_error(ref, str(getattr(e, "explanation", None) or e)) from e
            raise self._unreachable(e) from e

    def push(self, repository: str, tag: str, auth: dict[str, str] | None = None) -> None:
        ref = f"{repository}:{tag}"
        api = self.api
        try:
            for line in api.push(repository, tag, stream=True, decode=True, auth_config=auth or None):
                if isinstance(line, dict) and (line.get("error") or line.get("errorDetail")):
                    msg = line.get("error") or (line.get("errorDetail") or {}).get("message") or str(line)
                    raise pull_error(ref, msg, "push")
        except (APIError, DockerException) as e:
            if isinstance(e, APIError):
                raise pull_error(ref, str(getattr(e, "explanation", None) or e), "push") from e
            raise self._unreachable(e) from e

    def build(self, context_dir: str, tag: str) -> list[str]:
        api = self.api
        lines: list[str] = []
        error = None
        try:
            for chunk in api.build(
                path=context_dir, tag=tag, rm=True, forcerm=True, pull=False, decode=True, nocache=False
            ):
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("stream"):
                    text = _ANSI_RE.sub("", chunk["stream"])
                    lines.extend(s for s in text.splitlines() if s.strip())
                if chunk.get("error") or chunk.get("errorDetail"):
                    error = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message")
        except (APIError, DockerException) as e:
            if not isinstance(e, APIError):
                raise self._unreachable(e) from e
            error = str(getattr(e, "explanation", None) or e)
            lines.append(error)
        if error is None and self.inspect_image(tag) is None:
            error = "the engine reported no error but the image is not there"
        if error:
            error = " ".join(str(error).split())
            if len(error) > 300:
                error = error[:300] + " ..."
            tail = lines[-BUILD_LOG_TAIL:]
            raise GpufleetError(
                f"building {tag} failed: {error}\n--- last lines of the build log ---\n" + "\n".join(tail),
                failure_class="build_failed",
                image=tag,
                build_log_tail=tail,
            )
        return lines

    def exec(self, cid: str, argv: list[str], timeout: float = 30.0) -> tuple[int, str]:
        run = self._call("exec", self.api.exec_create, cid, argv, stdout=True, stderr=True)
        out = self._call("exec", self.api.exec_start, run["Id"], demux=False)
        rc = self._call("exec", self.api.exec_inspect, run["Id"]).get("ExitCode")
        return (1 if rc is None else int(rc)), (out or b"").decode("utf-8", "replace")

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
