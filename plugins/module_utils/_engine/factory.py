"""The engine adapter for a runtime name: the one place above both adapters (base <- docker, podman <- factory)."""

from __future__ import annotations

from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError


def get_runtime(
    kind: str, docker_host: str | None = None, podman_socket: str | None = None, timeout: int | None = None
) -> Runtime:
    """The adapter of engine ``kind``. ``timeout``: seconds for one engine call (long for pulls and builds);
    ``podman_socket``: podman's API service for image operations (see runtime_podman)."""
    if kind == "docker":
        from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.docker import DockerRuntime

        return DockerRuntime(docker_host, timeout=timeout)
    if kind == "podman":
        from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.podman import PodmanRuntime

        return PodmanRuntime(podman_socket=podman_socket, timeout=timeout)
    raise GpufleetError(f"unknown runtime {kind!r}; use docker or podman")
