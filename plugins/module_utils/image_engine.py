# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image operations on an engine (inspect, pull, build) through the docker SDK — the one engine-specific place of
vllm_image, to be merged into the per-engine adapters of ``runtime_docker`` / ``runtime_podman``.

docker: the daemon of ``docker_host`` (default: ``DOCKER_HOST`` or the local socket).
podman: podman's Docker-compatible API service, reached through the same SDK. Verified on podman 4.3.1: image
inspect, pull (with credentials; errors come back in the stream like dockerd's) and build (the /build endpoint,
run by buildah) work. The socket is ``podman_socket``, else ``CONTAINER_HOST`` (unix://), else
``/run/podman/podman.sock`` (systemd's podman.socket), else ``unix:///run/gpufleet-podman.sock``; when none
answers, ``podman system service --time=0 unix:///run/gpufleet-podman.sock`` is started (detached) and used.
Registry settings (insecure registries, mirrors) come from the host's /etc/containers/registries.conf, read by the
service when it starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from urllib.parse import quote

from ansible_collections.gpufleet.vllm.plugins.module_utils.errors import GpufleetError

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PODMAN_SERVICE_SOCKET = "unix:///run/gpufleet-podman.sock"
PODMAN_SYSTEMD_SOCKET = "unix:///run/podman/podman.sock"
BUILD_LOG_TAIL = 25

# Substrings of engine/registry error messages (dockerd 20.10+, podman 4.x), first match wins.
_CLASSES: list[tuple[str, tuple[str, ...]]] = [
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

_HINTS = {
    "registry_unreachable": "the registry cannot be reached from this host (check the registry address, the "
    "network/proxy settings of the engine, or use pull: never with a pre-loaded image)",
    "unauthorized": "the registry refused the credentials (set registry_username/registry_password, or log the "
    "engine in to the registry)",
    "not_found": "the registry has no such image or tag (check version/image: vLLM publishes v<release>, latest, "
    "nightly and nightly-<commit>; a private repository may also answer like this without credentials)",
}


def classify_pull_error(message: str) -> str:
    m = message.lower()
    for cls, needles in _CLASSES:
        if any(n in m for n in needles):
            return cls
    return "pull_failed"


def pull_error(ref: str, message: str) -> GpufleetError:
    cls = classify_pull_error(message)
    hint = _HINTS.get(cls, "the engine could not pull it")
    return GpufleetError(
        f"cannot pull {ref}: {hint}. Engine said: {message.strip()}", failure_class=cls, image=ref, cause=message
    )


def _docker_sdk():
    try:
        import docker
        import docker.errors
    except ImportError as e:
        raise GpufleetError(
            "the Python docker SDK is missing on the target: install it for the interpreter Ansible uses "
            "(pip install 'docker>=7.0')",
            failure_class="missing_dependency",
        ) from e
    return docker


def _unix_get(sock_path: str, path: str, timeout: float) -> tuple[int, bytes]:
    """One HTTP/1.0 GET on a unix socket (the server closes the connection; no chunked body). Stdlib ``socket``
    only: http.client alone costs ~30 ms of import on a no-op run."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: gpufleet-vllm_image\r\n\r\n".encode())
        chunks = []
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            chunks.append(b)
    head, _sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError) as e:
        raise OSError(f"not an HTTP answer from {sock_path}: {head[:80]!r}") from e
    return status, body


def _unix_path(url: str) -> str | None:
    if url.startswith("unix://"):
        return url[len("unix://") :]
    if url.startswith("/"):
        return url
    return None


class ImageEngine:
    """inspect / pull / build on one engine.

    The no-op path (image inspect) is one plain HTTP GET on the engine's unix socket (stdlib only): importing the
    docker SDK costs about as much as the rest of a no-op run, so it is imported only to pull or build, or when the
    engine is not on a unix socket (tcp://, TLS).
    """

    def __init__(
        self,
        runtime: str = "docker",
        docker_host: str | None = None,
        podman_socket: str | None = None,
        timeout: int = 600,
    ) -> None:
        self.runtime = runtime
        self.timeout = timeout
        self.service_started = False
        self._client = None
        if runtime == "docker":
            self.base_url = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        elif runtime == "podman":
            self.base_url = self._podman(podman_socket)
        else:
            raise GpufleetError(f"runtime must be docker or podman, not {runtime!r}")

    @property
    def client(self):
        """The docker SDK's APIClient for this engine (created on first use)."""
        if self._client is None:
            self._docker = _docker_sdk()
            try:
                self._client = self._docker.APIClient(base_url=self.base_url, version="auto", timeout=self.timeout)
            except self._docker.errors.DockerException as e:
                raise self._unreachable(e) from e
        return self._client

    def _unreachable(self, e: object) -> GpufleetError:
        return GpufleetError(
            f"cannot talk to the {self.runtime} engine at {self.base_url}: {e}", failure_class="engine_unreachable"
        )

    def _get(self, url: str, path: str, timeout: float | None = None) -> tuple[int, bytes]:
        sock = _unix_path(url)
        if sock is None:
            raise OSError(f"{url} is not a unix socket")
        return _unix_get(sock, path, timeout or self.timeout)

    def _answers(self, url: str) -> bool:
        path = _unix_path(url)
        if not path or not os.path.exists(path):
            return False
        try:
            return self._get(url, "/_ping", timeout=5)[0] == 200
        except OSError:
            return False

    def _podman(self, socket_url: str | None) -> str:
        if socket_url:
            candidates = [socket_url]
        else:
            candidates = []
            ch = os.environ.get("CONTAINER_HOST", "")
            if ch.startswith("unix://"):
                candidates.append(ch)
            candidates += [PODMAN_SYSTEMD_SOCKET, PODMAN_SERVICE_SOCKET]
        for c in candidates:
            if self._answers(c):
                return c
        target = candidates[-1]
        self._start_podman_service(target)
        return target

    def _start_podman_service(self, url: str) -> None:
        podman = shutil.which("podman")
        if not podman:
            raise GpufleetError("runtime is podman but podman is not installed on this host", failure_class="engine")
        path = _unix_path(url)
        if path is None:
            raise GpufleetError(f"podman_socket must be unix:///path, not {url!r}")
        if os.path.exists(path):
            os.unlink(path)  # a stale socket of a service that is gone
        with open(os.devnull, "wb") as null:
            subprocess.Popen(
                [podman, "system", "service", "--time=0", f"unix://{path}"],
                stdin=subprocess.DEVNULL,
                stdout=null,
                stderr=null,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._answers(url):
                self.service_started = True
                return
            time.sleep(0.1)
        raise GpufleetError(
            f"podman's API service did not come up on {url} (started: podman system service --time=0 {url})",
            failure_class="engine_unreachable",
        )

    # --- operations

    def inspect(self, ref: str) -> dict | None:
        """The engine's image inspect dict, or None when the image is not present."""
        if _unix_path(self.base_url) is not None:
            try:
                status, body = self._get(self.base_url, f"/images/{quote(ref, safe='/:@')}/json")
            except OSError as e:
                raise self._unreachable(e) from e
            if status == 404:
                return None
            if status != 200:
                raise GpufleetError(
                    f"cannot inspect image {ref}: {body.decode(errors='replace').strip()}", failure_class="engine"
                )
            return json.loads(body)
        client = self.client
        try:
            return client.inspect_image(ref)
        except self._docker.errors.NotFound:
            return None
        except self._docker.errors.APIError as e:
            if e.response is not None and e.response.status_code == 404:
                return None
            raise GpufleetError(f"cannot inspect image {ref}: {e.explanation or e}", failure_class="engine") from e
        except self._docker.errors.DockerException as e:
            raise self._unreachable(e) from e

    def pull(self, repository: str, tag: str, auth: dict | None = None) -> None:
        """Pull ``repository:tag``; a classified ``GpufleetError`` (registry_unreachable, unauthorized, not_found)."""
        ref = f"{repository}:{tag}" if not tag.startswith("sha256:") else f"{repository}@{tag}"
        client = self.client
        try:
            for line in client.pull(repository, tag, stream=True, decode=True, auth_config=auth or None):
                if isinstance(line, dict) and (line.get("error") or line.get("errorDetail")):
                    msg = line.get("error") or (line.get("errorDetail") or {}).get("message") or str(line)
                    raise pull_error(ref, msg)
        except self._docker.errors.APIError as e:
            raise pull_error(ref, str(e.explanation or e)) from e
        except self._docker.errors.DockerException as e:
            raise self._unreachable(e) from e

    def build(self, context_dir: str, tag: str) -> list[str]:
        """Build the context with its Dockerfile as ``tag``; returns the build log lines; raises with the tail."""
        client = self.client
        lines: list[str] = []
        error = None
        try:
            for chunk in client.build(
                path=context_dir, tag=tag, rm=True, forcerm=True, pull=False, decode=True, nocache=False
            ):
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("stream"):
                    text = _ANSI_RE.sub("", chunk["stream"])
                    lines.extend(s for s in text.splitlines() if s.strip())
                if chunk.get("error") or chunk.get("errorDetail"):
                    error = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message")
        except self._docker.errors.APIError as e:
            error = str(e.explanation or e)
            lines.append(error)
        except self._docker.errors.DockerException as e:
            raise self._unreachable(e) from e
        if error is None and self.inspect(tag) is None:
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
