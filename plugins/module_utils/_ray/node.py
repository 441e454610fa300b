# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One Ray node container on its host, through the engine adapters (docker, podman): ensure it runs as declared
(``spec.NodeSpec``), or remove it. Idempotent by a config hash label of the normalized declaration: the same
declaration keeps the running container, another one replaces it, a stopped one is started again. ``stop`` stops one
and keeps it (stop.yml ``state=stopped``: the next ``ensure`` starts it again). Check mode plans the same actions
without calling the engine.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as labels
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import CreateSpec, Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray.spec import NodeSpec

STOP_TIMEOUT_S = 10  # Ray holds nothing to save on a stop: its processes end with the container


def normalized(node: NodeSpec) -> dict[str, Any]:
    """What the node is declared with (env keys and values: a Ray node holds no secret of its own)."""
    return {
        "image": node.image,
        "entrypoint": list(node.entrypoint),
        "command": list(node.command),
        "env": dict(sorted(node.env.items())),
        "mounts": sorted(list(m) for m in node.mounts),
        "gpus": sorted(node.gpus),
        "network": node.network,
        "ipc": node.ipc,
        "restart": [node.restart_policy, node.restart_retries],
        "labels": dict(sorted(node.labels.items())),
    }


def config_hash(node: NodeSpec) -> str:
    text = json.dumps(normalized(node), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def create_spec(node: NodeSpec) -> CreateSpec:
    """The engine-neutral create request: the node's labels plus its config hash."""
    base = int(node.labels.get(labels.RAY_PORT) or 0)
    return CreateSpec(
        name=node.name,
        image=node.image,
        command=list(node.command),
        env=dict(node.env),
        mounts=list(node.mounts),
        gpus=list(node.gpus),
        network=node.network,
        ipc=node.ipc,
        shm_size=None,
        restart_policy=node.restart_policy,
        labels={**node.labels, labels.CONFIG_HASH: config_hash(node)},
        port=base,  # host network: nothing is published
        host="0.0.0.0",
        entrypoint=list(node.entrypoint),
        restart_retries=node.restart_retries,
    )


def ensure(rt: Runtime, node: NodeSpec, check_mode: bool = False) -> dict[str, Any]:
    """The node running as declared. Returns ``{changed, action: keep|start|create|replace, name, id}``."""
    want = config_hash(node)
    cur = rt.container(node.name)
    if cur is not None and cur.labels.get(labels.CONFIG_HASH) == want:
        if cur.running:
            return {"changed": False, "action": "keep", "name": node.name, "id": cur.id}
        if not check_mode:
            rt.start(cur.id)
        return {"changed": True, "action": "start", "name": node.name, "id": cur.id}
    action = "replace" if cur is not None else "create"
    if check_mode:
        return {"changed": True, "action": action, "name": node.name, "id": cur.id if cur else None}
    if cur is not None:
        rt.remove(cur.id)
    cid = rt.create(create_spec(node))
    rt.start(cid)
    return {"changed": True, "action": action, "name": node.name, "id": cid}


def stop(rt: Runtime, name: str, timeout: int = STOP_TIMEOUT_S, check_mode: bool = False) -> dict[str, Any]:
    """Container ``name`` stopped, kept as it is (a Ray node: its GPUs are free again). Returns ``{changed, action:
    stop|stopped|absent, name, id}``; a node the engine is restarting (``on-failure``) is stopped too."""
    cur = rt.container(name)
    if cur is None:
        return {"changed": False, "action": "absent", "name": name, "id": None}
    if not cur.running and cur.status != "restarting":
        return {"changed": False, "action": "stopped", "name": name, "id": cur.id}
    if not check_mode:
        rt.stop(cur.id, timeout)
    return {"changed": True, "action": "stop", "name": name, "id": cur.id}


def remove(rt: Runtime, name: str, check_mode: bool = False) -> dict[str, Any]:
    """No container ``name`` (a Ray node: the engine stops it; Ray's processes end with it)."""
    cur = rt.container(name)
    if cur is None:
        return {"changed": False, "action": "absent", "name": name, "id": None}
    if not check_mode:
        rt.remove(cur.id)
    return {"changed": True, "action": "remove", "name": name, "id": cur.id}


def previous_name(name: str) -> str:
    """Where a node waits while the rollout wave tries its replacement (``<container>-previous``): kept for the
    rollback to the old cluster (docs/ray.md, "Rolling updates")."""
    return f"{name}{labels.PREVIOUS_SUFFIX}"


def set_aside(rt: Runtime, name: str, timeout: int = STOP_TIMEOUT_S, check_mode: bool = False) -> dict[str, Any]:
    """Container ``name`` stopped and renamed ``previous_name(name)`` (a leftover there from an interrupted wave is
    removed first), so that its replacement takes its name, GPUs and ports. Returns ``{changed, action:
    set_aside|absent, name, id}``."""
    cur = rt.container(name)
    if cur is None:
        return {"changed": False, "action": "absent", "name": name, "id": None}
    if not check_mode:
        old = rt.container(previous_name(name))
        if old is not None:
            rt.remove(old.id)
        if cur.running or cur.status == "restarting":
            rt.stop(cur.id, timeout)
        rt.rename(cur.id, previous_name(name))
    return {"changed": True, "action": "set_aside", "name": name, "id": cur.id}


def restore(rt: Runtime, name: str, check_mode: bool = False) -> dict[str, Any]:
    """The node set aside brought back (the rollback to the old cluster): its replacement ``name`` removed, the
    previous container renamed ``name`` and started. Returns ``{changed, action: restore|none, name, id}``; none
    when nothing was set aside."""
    old = rt.container(previous_name(name))
    if old is None:
        return {"changed": False, "action": "none", "name": name, "id": None}
    if not check_mode:
        new = rt.container(name)
        if new is not None:
            rt.remove(new.id)
        rt.rename(old.id, name)
        rt.start(old.id)
    return {"changed": True, "action": "restore", "name": name, "id": old.id}


def drop_previous(rt: Runtime, name: str, check_mode: bool = False) -> dict[str, Any]:
    """The node set aside removed (its replacement passed the wave). Returns ``{changed, action: remove|none,
    name, id}``."""
    old = rt.container(previous_name(name))
    if old is None:
        return {"changed": False, "action": "none", "name": name, "id": None}
    if not check_mode:
        rt.remove(old.id)
    return {"changed": True, "action": "remove", "name": previous_name(name), "id": old.id}
