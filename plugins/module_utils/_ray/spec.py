# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The containers of a multi-host replica's Ray cluster, and what its vLLM server needs to join it (docs/ray.md).

Pure: argv, env, mounts and labels from the plan's numbers; no engine call. A replica placed on several hosts
(``_fleet/placement.py``, ``distributed: ray``) runs:

- on its first host, a **head** container: the deployment's own image with the entrypoint ``ray`` (the image's own Ray,
  the one its vLLM was built with), ``ray start --head --block``, host network, the host's share of the GPUs;
- on each other host, a **worker** container: the same image, ``ray start --address=<head>:<port> --block``;
- on the head's host, the vLLM server itself (vllm_container, as for any replica) with ``--distributed-executor-backend
  ray``, host network, the head's GPUs, ``RAY_ADDRESS`` and the head's Ray directory: vLLM's engine connects to the
  running cluster as a driver on the head node and places one Ray worker per GPU over all the nodes.

Host network because Ray's processes address each other by node IP and a fixed set of ports (``ports.py`` pins all of
them inside the replica's block); the head's temp directory is a host directory shared by the head and the server
(a Ray driver talks to its node's raylet over the Unix sockets there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as labels
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import ports

Role = Literal["head", "worker"]
ROLES: tuple[Role, ...] = ("head", "worker")
# Where each Ray node keeps its sessions and sockets: a host directory per replica and role, mounted at TEMP_DIR.
HOST_DIR = "/var/lib/gpufleet/ray"
TEMP_DIR = "/tmp/ray"
EXECUTOR_FLAG = "--distributed-executor-backend"
# Env of every Ray node: no usage reports (hosts are often offline), logs not deduplicated (each line says its node).
NODE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9.:\-\[\]]+$")


@dataclass(frozen=True)
class NodeSpec:
    """One Ray node container: what an engine adapter needs to create it."""

    name: str  # the container name (gpufleet-<deployment>-<replica>-ray-<role>)
    role: Role
    image: str
    entrypoint: list[str]
    command: list[str]
    env: dict[str, str]
    mounts: list[tuple[str, str, str]]  # (host path, container path, mode)
    gpus: list[str]
    labels: dict[str, str]
    network: str = "host"
    ipc: str = "host"  # Ray's object store lives in /dev/shm: the host's, not a 64 MB container default
    # A node that fails to start or crashes is started again by the engine (a few times) and rejoins its cluster: the
    # raylet gives Ray's agents a fixed 15 s to start (ray-project/ray#65983), which a busy host can miss. A node
    # whose host is lost is not (there is no engine left): the replica's server fails with the cause (docs/ray.md).
    restart_policy: str = "on-failure"
    restart_retries: int = 5
    host_dirs: list[str] = field(default_factory=list)  # to create before the container starts


def node_key(deployment: str, replica: int, role: Role) -> str:
    """``<deployment>-<replica>-ray-<role>``: the container is ``gpufleet-<this>``."""
    return f"{deployment}-{replica}-ray-{role}"


def host_dir(deployment: str, replica: int, role: Role) -> str:
    return f"{HOST_DIR}/{deployment}-{replica}-{role}"


def head_address(head_ip: str, base: int) -> str:
    """``<ip>:<port>`` of the cluster's GCS (``ray start --address``, ``RAY_ADDRESS``)."""
    if not head_ip or not _ADDRESS_RE.match(head_ip):
        raise GpufleetError(f"Ray head address {head_ip!r}: must be the head host's IP address or name")
    return f"[{head_ip}]:{base}" if ":" in head_ip and not head_ip.startswith("[") else f"{head_ip}:{base}"


def start_argv(
    role: Role,
    base: int,
    num_gpus: int,
    node_ip: str,
    head_ip: str | None = None,
    object_store_bytes: int | None = None,
) -> list[str]:
    """``ray start`` for one node: in the foreground (``--block``: the container lives as long as the node), every
    port pinned inside the replica's block, ``--num-gpus`` = the GPUs this container was given (Ray's own count of
    ``CUDA_VISIBLE_DEVICES`` would do the same on a real host; stated, it holds in every engine)."""
    if role not in ROLES:
        raise GpufleetError(f"Ray role {role!r}: must be head or worker")
    if num_gpus < 1:
        raise GpufleetError(f"Ray {role} of a multi-host replica needs at least one GPU, got {num_gpus}")
    named = ports.ports(base)
    argv = ["start", "--block", "--disable-usage-stats", f"--node-ip-address={node_ip}", f"--num-gpus={num_gpus}"]
    if role == "head":
        argv += [
            "--head",
            f"--port={named['port']}",
            "--include-dashboard=false",
            f"--dashboard-port={named['dashboard_port']}",
        ]
    else:
        if head_ip is None:
            raise GpufleetError("a Ray worker needs the head's address")
        argv.append(f"--address={head_address(head_ip, base)}")
    for option in (
        "node_manager_port",
        "object_manager_port",
        "dashboard_agent_grpc_port",
        "dashboard_agent_listen_port",
        "metrics_export_port",
        "runtime_env_agent_port",
        "min_worker_port",
        "max_worker_port",
    ):
        argv.append(f"--{option.replace('_', '-')}={named[option]}")
    argv.append(f"--temp-dir={TEMP_DIR}")
    if object_store_bytes:
        argv.append(f"--object-store-memory={int(object_store_bytes)}")
    return argv


def node_spec(
    *,
    deployment: str,
    replica: int,
    role: Role,
    image: str,
    base: int,
    gpus: list[str],
    node_ip: str,
    host: str,
    head_ip: str | None = None,
    env: dict[str, str] | None = None,
    object_store_bytes: int | None = None,
    model_dirs: list[str] | None = None,
) -> NodeSpec:
    """The container of one Ray node. ``gpus``: this host's share (indices or UUIDs, as vllm_container takes them);
    ``env``: the deployment's env (HF_*, NCCL_*, RAY_* settings reach the Ray processes that run the model), then
    Ray's own; ``object_store_bytes``: Ray's object store (default: Ray's share of the host's memory);
    ``model_dirs``: the model's directories on this host, mounted read-only at the same path (vLLM's Ray workers in
    this container load the weights from the path the server was given, as the server's own mount does)."""
    key = node_key(deployment, replica, role)
    hdir = host_dir(deployment, replica, role)
    node_env = {**(env or {}), **NODE_ENV, "VLLM_HOST_IP": node_ip}
    return NodeSpec(
        name=labels.container_name(key),
        role=role,
        image=image,
        entrypoint=["ray"],
        command=start_argv(role, base, len(gpus), node_ip, head_ip if role == "worker" else None, object_store_bytes),
        env=node_env,
        mounts=[(hdir, TEMP_DIR, "rw"), *((d, d, "ro") for d in sorted(set(model_dirs or [])))],
        gpus=list(gpus),
        labels={
            labels.DEPLOYMENT: deployment,
            labels.RAY_REPLICA: str(replica),
            labels.RAY_ROLE: role,
            labels.RAY_PORT: str(base),
            labels.GPUS: ",".join(gpus),
            labels.HOST: host,
        },
        host_dirs=[hdir],
    )


def serve_settings(deployment: str, replica: int, head_ip: str, base: int) -> dict[str, object]:
    """What the head host's vLLM server adds to its vllm_container arguments to run over the cluster: the executor
    flag, ``RAY_ADDRESS``, ``VLLM_HOST_IP`` (the node IP vLLM reports to Ray), the head's Ray directory (read-write:
    the driver's session files go there too), the host network and IPC, and the head container's PID namespace: the
    head's raylet checks its drivers by PID, and a driver it cannot see never finishes ``ray.init`` (seen with Ray
    2.60: "Failed to connect to Ray cluster" after a minute; with the shared namespace it connects at once)."""
    return {
        "extra_args": [EXECUTOR_FLAG, "ray"],
        "env": {"RAY_ADDRESS": head_address(head_ip, base), "VLLM_HOST_IP": head_ip, **NODE_ENV},
        "mounts": [(host_dir(deployment, replica, "head"), TEMP_DIR, "rw")],
        "network": "host",
        "ipc": "host",
        "pid": f"container:{labels.container_name(node_key(deployment, replica, 'head'))}",
    }


# "0.0/4.0 GPU", and once a placement group holds them "2.0/2.0 GPU (2.0 used of 2.0 reserved in placement groups)".
_GPU_LINE = re.compile(r"^\s*(?P<used>[0-9.]+)/(?P<total>[0-9.]+)\s+GPU(?:\s+\(.*\))?\s*$", re.MULTILINE)
_NODE_LINE = re.compile(r"^\s+\d+\s+node_[0-9a-f]+\s*$", re.MULTILINE)


def status_argv(head_ip: str, base: int) -> list[str]:
    """``ray status`` against the replica's cluster (run in its head container)."""
    return ["ray", "status", f"--address={head_address(head_ip, base)}"]


def parse_status(text: str) -> dict[str, float | int] | None:
    """``{nodes, gpus, gpus_used}`` from ``ray status``'s text (its "Active:" nodes, "x/N GPU"); None when it does
    not show a cluster (not up yet, or no GPU resource line)."""
    match = _GPU_LINE.search(text or "")
    if match is None:
        return None
    return {
        "nodes": len(_NODE_LINE.findall(text.split("Pending:", 1)[0])),
        "gpus": float(match["total"]),
        "gpus_used": float(match["used"]),
    }


def cluster_ready(text: str, nodes: int, gpus: int) -> tuple[bool, str]:
    """Whether ``ray status`` shows every node of the replica and all its GPUs; the reason when not."""
    status = parse_status(text)
    if status is None:
        return False, "the Ray cluster shows no GPUs yet"
    if status["nodes"] < nodes:
        return False, f"{status['nodes']}/{nodes} Ray nodes joined"
    if status["gpus"] < gpus:
        return False, f"the Ray cluster shows {status['gpus']:g}/{gpus} GPUs"
    return True, f"{status['nodes']} Ray nodes, {status['gpus']:g} GPUs"
