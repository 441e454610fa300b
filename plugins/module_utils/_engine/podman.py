# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Podman adapter through the podman CLI.

Why the CLI and not podman's Docker-compatible API: the API needs a ``podman system service`` running (no systemd
socket unit on many GPU hosts), and podman 4.3's compat endpoint has no way to ask for CDI devices except through
HostConfig.Devices path strings, while ``podman create --device nvidia.com/gpu=N`` is the documented CDI path.
Secrets never appear on podman's command line: env values travel in podman's own environment (``--env KEY``).

Image operations (vllm_image: ``inspect_image``, ``pull``, ``build``) are the exception: they go through podman's
Docker-compatible API service, driven by a ``DockerRuntime`` on its socket (the same code as docker's, and the same
Docker-shaped inspect dicts and stream errors). Verified on podman 4.3.1: image inspect, pull (with credentials;
errors come back in the stream like dockerd's) and build (the /build endpoint, run by buildah) work. The socket is
``podman_socket``, else ``CONTAINER_HOST`` (unix://), else ``/run/podman/podman.sock`` (systemd's podman.socket),
else ``unix:///run/gpufleet-podman.sock``; when none answers, ``podman system service --time=0
unix:///run/gpufleet-podman.sock`` is started (detached) and used. It is looked for on the first image operation
only: container operations never need it. Registry settings (insecure registries, mirrors) come from the host's
/etc/containers/registries.conf, read by the service when it starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import (
    ContainerState,
    CreateSpec,
    Runtime,
    raw_http,
    state_from_inspect,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.docker import DockerRuntime, unix_socket_path
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._labels import MANAGED

CDI_KIND = "nvidia.com/gpu"
PODMAN_SERVICE_SOCKET = "unix:///run/gpufleet-podman.sock"
PODMAN_SYSTEMD_SOCKET = "unix:///run/podman/podman.sock"
# Seconds one podman CLI call may take (a stop adds its own grace period): a hung podman (storage lock, stuck
# conmon) then fails the module or the node agent's tick with a clear error instead of hanging it.
CLI_TIMEOUT = 120.0


def create_args(spec: CreateSpec) -> list[str]:
    """``podman create`` arguments (env keys only: values come from podman's environment)."""
    args = ["create", "--name", spec.name]
    for k, v in sorted(spec.labels.items()):
        args += ["--label", f"{k}={v}"]
    for k in sorted(spec.env):
        args += ["--env", k]
    for s, d, m in spec.mounts:
        args += ["--volume", f"{s}:{d}:{m}"]
    for g in spec.gpus:
        args += ["--device", f"{CDI_KIND}={g}"]
    args += ["--network", spec.network]
    if spec.network != "host":
        bind = "" if spec.host in ("0.0.0.0", "") else spec.host
        args += ["--publish", f"{bind}:{spec.port}:{spec.port}" if bind else f"{spec.port}:{spec.port}"]
    if spec.ipc:
        args += ["--ipc", spec.ipc]
    if spec.shm_size:
        args += ["--shm-size", spec.shm_size]
    restart = spec.restart_policy or "no"
    if restart == "on-failure" and spec.restart_retries is not None:
        restart = f"on-failure:{spec.restart_retries}"
    args += ["--restart", restart]
    if spec.pid:
        args += ["--pid", spec.pid]
    if spec.entrypoint is not None:
        args += ["--entrypoint", json.dumps(spec.entrypoint)]
    if spec.log_driver:
        args += ["--log-driver", spec.log_driver]
        if spec.log_max_size:  # k8s-file has no max-file: podman keeps one file, truncated at the size
            args += ["--log-opt", f"max-size={spec.log_max_size}"]
    args += [spec.image, *spec.command]
    return args


class PodmanRuntime(Runtime):
    name = "podman"

    def __init__(
        self,
        binary: str | None = None,
        podman_socket: str | None = None,
        timeout: int | None = None,
        cli_timeout: float = CLI_TIMEOUT,
    ) -> None:
        """``podman_socket``: podman's API service for the image operations (found or started on first use; with
        it given, the podman binary is only needed to start the service). ``cli_timeout``: seconds one podman
        command may take."""
        self.bin = binary or shutil.which("podman") or ""
        if not self.bin and not podman_socket:
            raise GpufleetError("podman is not installed on the target (runtime=podman)")
        self.podman_socket = podman_socket
        self.timeout = timeout
        self.cli_timeout = cli_timeout
        self.service_started = False
        self._images: DockerRuntime | None = None

    def _exec(
        self, args: list[str], what: str, env: dict[str, str] | None = None, extra: float = 0, merged: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``podman ARGS`` with the CLI timeout (+ ``extra`` s); a timeout is one clear error, never a hang."""
        limit = self.cli_timeout + extra
        try:
            return subprocess.run(
                [self.bin, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                text=True,
                env=env,
                check=False,
                timeout=limit,
            )
        except subprocess.TimeoutExpired:
            raise GpufleetError(
                f"podman {what} did not finish within {limit:.0f} s (podman killed): podman looks hung on this host; "
                "check `podman ps` and `podman info` there (a held storage lock or a stuck conmon), then run again",
                failure_class="engine_unreachable",
            ) from None

    def _run(
        self, args: list[str], what: str, env: dict[str, str] | None = None, check: bool = True, extra: float = 0
    ) -> str:
        full_env = None
        if env:
            full_env = dict(os.environ)
            full_env.update(env)
        r = self._exec(args, what, full_env, extra)
        if check and r.returncode != 0:
            raise GpufleetError(f"podman {what} failed: {(r.stderr or r.stdout).strip()[-2000:]}")
        return r.stdout

    def _inspect(self, kind: str, ref: str) -> dict | None:
        r = self._exec([kind, "inspect", ref], f"{kind} inspect")
        if r.returncode != 0:
            err = r.stderr.lower()
            if "no such" in err or "not known" in err or "unknown" in err or "not found" in err:
                return None
            raise GpufleetError(f"podman {kind} inspect {ref} failed: {r.stderr.strip()}")
        data = json.loads(r.stdout or "[]")
        return data[0] if data else None

    def create(self, spec: CreateSpec) -> str:
        return self._run(create_args(spec), "create", env=spec.env).strip()

    def start(self, cid: str) -> None:
        self._run(["start", cid], "start")

    def stop(self, cid: str, timeout: int) -> None:
        self._run(["stop", "--time", str(timeout), cid], "stop", extra=max(0, timeout))

    def remove(self, cid: str) -> None:
        self._run(["rm", "--force", "--ignore", cid], "rm")

    def rename(self, cid: str, new_name: str) -> None:
        self._run(["rename", cid, new_name], "rename")

    def pause(self, cid: str) -> None:
        self._run(["pause", cid], "pause")

    def unpause(self, cid: str) -> None:
        self._run(["unpause", cid], "unpause")

    def logs(self, cid: str, tail: int = 300, since: float | None = None, timestamps: bool = False) -> list[str]:
        args = ["logs", "--tail", str(tail), *(["--timestamps"] if timestamps else [])]
        if since:
            args += ["--since", f"{since:.6f}"]
        r = self._exec([*args, cid], "logs", merged=True)
        return r.stdout.splitlines() if r.returncode == 0 else []

    def follow(self, cid: str, since: float | None = None, timestamps: bool = False) -> Iterator[str]:
        args = ["logs", "--follow", *(["--timestamps"] if timestamps else [])]
        if since:
            args += ["--since", f"{since:.6f}"]
        p = subprocess.Popen(
            [self.bin, *args, cid],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        try:
            if p.stdout is None:  # cannot happen with stdout=PIPE; keeps the type checker and sanity happy
                raise RuntimeError(f"{self.bin} logs --follow {cid}: no stdout pipe")
            for line in p.stdout:
                yield line.rstrip("\n")
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()

    def list_managed(self) -> list[ContainerState]:
        return self.list_labeled(f"{MANAGED}=true")

    def list_labeled(self, label: str) -> list[ContainerState]:
        out = self._run(["ps", "--all", "--filter", f"label={label}", "--format", "json"], "ps")
        ids = [c.get("Id") or c.get("ID") for c in json.loads(out or "[]")]
        if not ids:
            return []
        data = json.loads(self._run(["container", "inspect", *ids], "inspect") or "[]")
        return [state_from_inspect(d) for d in data]

    def exec(self, cid: str, argv: list[str], timeout: float = 30.0) -> tuple[int, str]:
        r = self._exec(["exec", cid, *argv], "exec", extra=timeout, merged=True)
        return r.returncode, r.stdout or ""

    def pids(self, cid: str) -> list[int]:
        r = self._exec(["top", cid, "hpid"], "top")
        return [int(x) for x in r.stdout.split() if x.isdigit()]

    # --- image operations, through podman's Docker-compatible API service (see the module docstring)

    @property
    def images(self) -> DockerRuntime:
        if self._images is None:
            self._images = DockerRuntime(self._api_socket(), timeout=self.timeout or 600, engine="podman")
        return self._images

    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        return self.images.inspect_image(ref)

    def pull(
        self,
        repository: str,
        tag: str,
        auth: dict[str, str] | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.images.pull(repository, tag, auth, progress)  # the compat API's stream: layers, no bytes in podman 4.3

    def build(self, context_dir: str, tag: str) -> list[str]:
        return self.images.build(context_dir, tag)

    def push(self, repository: str, tag: str, auth: dict[str, str] | None = None) -> None:
        self.images.push(repository, tag, auth)

    def close(self) -> None:
        if self._images is not None:
            self._images.close()

    def _answers(self, url: str) -> bool:
        path = unix_socket_path(url)
        if not path or not os.path.exists(path):
            return False
        try:
            return raw_http(path, "GET", "/_ping", timeout=5)[0] == 200
        except OSError:
            return False

    def _api_socket(self) -> str:
        if self.podman_socket:
            candidates = [self.podman_socket]
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
        self._start_service(target)
        return target

    def _start_service(self, url: str) -> None:
        if not self.bin:
            raise GpufleetError("runtime is podman but podman is not installed on this host", failure_class="engine")
        path = unix_socket_path(url)
        if path is None:
            raise GpufleetError(f"podman_socket must be unix:///path, not {url!r}")
        if os.path.exists(path):
            os.unlink(path)  # a stale socket of a service that is gone
        with open(os.devnull, "wb") as null:
            subprocess.Popen(
                [self.bin, "system", "service", "--time=0", f"unix://{path}"],
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
