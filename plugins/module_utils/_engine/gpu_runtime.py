# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Can this host run GPU containers? Docker (daemon reachable, NVIDIA device driver usable) and podman (CDI).

How "docker can give a container a GPU" is decided, since dockerd 20.10-27 do not list their device drivers:
dockerd registers its ``nvidia`` device driver (what ``--gpus`` and the API's DeviceRequests use) at start if and
only if an executable ``nvidia-container-runtime-hook`` is on dockerd's own PATH (moby daemon/nvidia_linux.go).
So we read the PATH of the dockerd process serving this host (same mount namespace, via /proc/PID/environ, root
only) and look for the hook there. When that process cannot be read (not root, rootless or remote daemon), we look
on this process's PATH and the usual install places and say that it is a guess. The ``nvidia`` runtime in
``docker info`` (``nvidia-ctk runtime configure``) is reported too; on its own it serves ``--runtime=nvidia``, not
DeviceRequests. Podman: CDI spec files (/etc/cdi, /var/run/cdi) declaring ``nvidia.com/gpu`` devices.

No docker SDK needed: one ``GET /info`` over the daemon socket with the collection's one raw HTTP client
(``runtime.raw_http``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import raw_http

HOOK = "nvidia-container-runtime-hook"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOOK_PLACES = ("/usr/bin", "/usr/local/bin", "/usr/local/nvidia/toolkit")
CDI_GPU_KIND = "nvidia.com/gpu"


def docker_info(docker_host: str | None = None, timeout: float = 3.0) -> dict[str, Any]:
    """``GET /info`` of the docker daemon; raises OSError / ValueError when it does not answer."""
    url = urlparse(docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST)
    target: str | tuple[str, int]
    if url.scheme == "unix":
        target = url.path
    elif url.scheme in ("tcp", "http"):
        target = (url.hostname or "localhost", url.port or 2375)
    else:
        raise ValueError(f"unsupported docker host {docker_host!r} (unix:// or tcp:// without TLS)")
    status, body = raw_http(target, "GET", "/info", timeout=timeout)
    if status != 200:
        raise OSError(f"the docker daemon answered HTTP {status}")
    return json.loads(body)


def hook_on_path(path_value: str | None) -> str | None:
    for d in (path_value if path_value is not None else DEFAULT_PATH).split(os.pathsep):
        candidate = os.path.join(d or ".", HOOK)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _dockerd_paths(proc: str = "/proc") -> list[str | None] | None:
    """PATH of each dockerd in our mount namespace (None for one without PATH), or None when none can be read."""
    try:
        own_ns = os.readlink(f"{proc}/self/ns/mnt")
    except OSError:
        own_ns = None
    paths: list[str | None] = []
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as f:
                if f.read().strip() != "dockerd":
                    continue
            if own_ns is not None and os.readlink(f"{proc}/{pid}/ns/mnt") != own_ns:
                continue
            with open(f"{proc}/{pid}/environ", "rb") as f:
                env = dict(
                    item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item
                )  # fmt: skip
        except OSError:
            continue
        raw = env.get(b"PATH")
        paths.append(raw.decode(errors="replace") if raw is not None else None)
    return paths or None


def docker_readiness(docker_host: str | None = None, timeout: float = 3.0, proc: str = "/proc") -> dict[str, Any]:
    """Docker's part of ``gpu_container_runtime``."""
    out: dict[str, Any] = {
        "reachable": False,
        "server_version": None,
        "runtimes": [],
        "nvidia_runtime": False,
        "gpu_device_driver": None,
        "gpu_device_driver_evidence": None,
        "gpu_ready": False,
        "reason": None,
    }
    try:
        info = docker_info(docker_host, timeout)
    except (OSError, ValueError) as exc:
        where = docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
        out["reason"] = f"the docker daemon at {where} does not answer ({exc}): is dockerd installed and running?"
        return out
    out["reachable"] = True
    out["server_version"] = info.get("ServerVersion")
    out["runtimes"] = sorted((info.get("Runtimes") or {}).keys())
    out["nvidia_runtime"] = "nvidia" in out["runtimes"]
    host = docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    paths = _dockerd_paths(proc) if host.startswith("unix://") else None  # a remote daemon's PATH is not ours to see
    if paths is not None:
        found = [hook_on_path(p) for p in paths]
        hit = next((h for h in found if h), None)
        out["gpu_device_driver"] = hit is not None
        out["gpu_device_driver_evidence"] = (
            f"{HOOK} is on dockerd's PATH ({hit})" if hit else f"{HOOK} is not on dockerd's PATH"
        )
    else:
        hit = hook_on_path(os.environ.get("PATH", DEFAULT_PATH) + os.pathsep + os.pathsep.join(HOOK_PLACES))
        out["gpu_device_driver"] = hit is not None
        out["gpu_device_driver_evidence"] = f"guessed: dockerd's environment could not be read; {HOOK} " + (
            f"found at {hit}" if hit else "not found on this PATH nor in /usr/bin, /usr/local/bin"
        )
    out["gpu_ready"] = bool(out["gpu_device_driver"])
    if not out["gpu_ready"]:
        hint = (
            " (the nvidia runtime is configured, but --gpus / device requests need the hook)"
            if out["nvidia_runtime"]
            else ""
        )
        out["reason"] = (
            f"dockerd has no NVIDIA device driver: {HOOK} was not on its PATH when it started{hint}. "
            "Install the NVIDIA Container Toolkit (nvidia-container-toolkit) and restart dockerd"
        )
    return out


def _cdi_devices_of(doc: Any) -> tuple[str | None, list[str]]:
    if not isinstance(doc, dict):
        return None, []
    kind = doc.get("kind")
    names = [str(d.get("name")) for d in doc.get("devices") or [] if isinstance(d, dict) and d.get("name") is not None]
    return (str(kind) if kind else None), names


def _load_spec(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        return json.loads(text)
    try:
        import yaml
    except ImportError:
        return _scan_yaml(text)
    return yaml.safe_load(text)


def _scan_yaml(text: str) -> dict[str, Any]:
    """Enough of a CDI spec without PyYAML: the top-level kind and the device names."""
    doc: dict[str, Any] = {"devices": []}
    in_devices = False
    for line in text.splitlines():
        stripped = line.strip()
        if not line.startswith((" ", "-")) and ":" in line:
            key, _sep, value = line.partition(":")
            in_devices = key.strip() == "devices"
            if key.strip() == "kind":
                doc["kind"] = value.strip().strip("'\"")
        elif in_devices and stripped.startswith("- name:"):
            doc["devices"].append({"name": stripped.split(":", 1)[1].strip().strip("'\"")})
    return doc


def cdi_gpu_devices(dirs: Sequence[str] = DEFAULT_CDI_DIRS) -> tuple[list[str], list[str], list[str]]:
    """(spec files read, ``nvidia.com/gpu=NAME`` devices, problems) from the CDI spec directories."""
    files: list[str] = []
    devices: list[str] = []
    problems: list[str] = []
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*.yaml")) + glob.glob(os.path.join(d, "*.yml")) +
                           glob.glob(os.path.join(d, "*.json"))):  # fmt: skip
            try:
                kind, names = _cdi_devices_of(_load_spec(path))
            except Exception as exc:  # OSError, ValueError, yaml.YAMLError: report, go on
                problems.append(f"{path}: cannot be read ({exc.__class__.__name__}: {exc})")
                continue
            files.append(path)
            if kind == CDI_GPU_KIND:
                devices.extend(f"{kind}={n}" for n in names if f"{kind}={n}" not in devices)
    return files, devices, problems


def podman_readiness(cdi_dirs: Sequence[str] = DEFAULT_CDI_DIRS, gpu_count: int | None = None) -> dict[str, Any]:
    """Podman's part of ``gpu_container_runtime``: podman installed and a CDI spec with nvidia.com/gpu devices."""
    podman = shutil.which("podman")
    files, devices, problems = cdi_gpu_devices(cdi_dirs)
    out: dict[str, Any] = {
        "installed": podman is not None,
        "cdi_spec_dirs": list(cdi_dirs),
        "cdi_spec_files": files,
        "cdi_devices": devices,
        "gpu_ready": False,
        "reason": None,
    }
    notes = list(problems)
    if not podman:
        notes.insert(0, "podman is not installed")
    elif not devices:
        notes.insert(
            0,
            f"no CDI spec in {', '.join(cdi_dirs)} declares {CDI_GPU_KIND} devices: generate one with "
            "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
        )
    else:
        out["gpu_ready"] = True
        per_gpu = [d for d in devices if d.split("=", 1)[1].isdigit()]
        if gpu_count is not None and per_gpu and len(per_gpu) != gpu_count:
            notes.append(
                f"the CDI spec lists {len(per_gpu)} GPUs but {gpu_count} were found: it may be stale "
                "(regenerate it with nvidia-ctk cdi generate)"
            )
    out["reason"] = "; ".join(notes) or None
    return out


def container_readiness(
    docker_host: str | None = None,
    cdi_dirs: Sequence[str] = DEFAULT_CDI_DIRS,
    gpu_count: int | None = None,
    timeout: float = 3.0,
) -> dict[str, Any]:
    """``gpu_container_runtime``: ``ready`` when docker or podman can give a container a GPU, and why not."""
    docker = docker_readiness(docker_host, timeout)
    podman = podman_readiness(cdi_dirs, gpu_count)
    ready = docker["gpu_ready"] or podman["gpu_ready"]
    if ready:
        parts = []
        if docker["gpu_ready"]:
            parts.append("docker can give containers GPUs (--gpus / device requests)")
        if podman["gpu_ready"]:
            parts.append(f"podman can through CDI ({', '.join(podman['cdi_devices'])})")
        summary = "; ".join(parts)
    else:
        summary = (
            "this host cannot run GPU containers: docker: "
            + (docker["reason"] or "not ready")
            + "; podman: "
            + (podman["reason"] or "not ready")
        )
    return {"ready": ready, "summary": summary, "docker": docker, "podman": podman}
