# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Multi-host replicas (``distributed: ray``) in the converge (docs/ray.md): the plan's part and the hosts' steps.

- ``plan_nodes`` (controller, ``payload.fleet_plan``): each host of a Ray replica gets its Ray node (the head on the
  replica's first host, a worker on the others) in ``plan.ray[<host>]``, and the head's server spec gets the settings
  that run it over the cluster (``_ray/spec.serve_settings``: the executor flag, ``RAY_ADDRESS``, the head's Ray
  directory and PID namespace) and the replica's whole tensor parallel size.
- ``apply_nodes`` (``fleet_apply state=ray_nodes``, every host at once, before the rolling batches): the Ray removals
  (the server, then its head; the workers), then per node the model (vLLM's Ray workers load it on their own node),
  the image and the node container (``_ray/node.ensure``). A head whose declaration changed takes its server with it:
  an update replaces the whole cluster.
- ``wait_ready`` (``fleet_apply state=ray_ready``, after every host ran ``apply_nodes``): on the head's host, until
  ``ray status`` shows every node and GPU of the replica (``spec.cluster_ready``); then the batches start the server.
- ``stop_nodes`` (``fleet_apply state=ray_stopped``, stop.yml ``state=stopped``): the selected replicas' Ray nodes
  stopped and kept (a head's server first); the next converge's ``apply_nodes`` starts them again.
- ``existing_parts``: the placements that the Ray nodes a host runs make (``ray_nodes`` of its gathered facts,
  ``_container/info.ray_nodes``), with ``ray_role``/``ray_port``, so that the planner keeps a multi-host replica where
  it is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as labels
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.factory import get_runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.apply import (
    HostApply,
    container_params,
    failure_hint,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.layout import DEFAULT_MODELS_ROOT, model_path
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import node as ray_node
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import spec as ray_spec

POLL_S = 1.0


def address(hosts: Mapping[str, Mapping[str, Any]], name: str) -> str:
    """The address Ray uses for a host: its ``address`` (fleet_plan: gpufleet_advertise_address, ansible_host), else
    its inventory name."""
    return str((hosts.get(name) or {}).get("address") or name)


# ------------------------------------------------------------------------------------------------ controller
def plan_nodes(
    assignments: Iterable[Mapping[str, Any]],
    per_host: Mapping[str, list[dict[str, Any]]],
    hosts: Mapping[str, Mapping[str, Any]],
    deps: Mapping[str, Mapping[str, Any]],
) -> dict[str, list[dict[str, Any]]]:
    """The Ray nodes of every host (``{host: [node]}``, every host a key); sets the server settings of each head's
    spec in ``per_host`` in place (and its ``ray``: ``{port, role, hosts, nodes, gpus}``)."""
    out: dict[str, list[dict[str, Any]]] = {h: [] for h in per_host}
    for asg in assignments:
        if not asg.get("ray"):
            continue
        dep = deps[asg["deployment"]]
        spec = next(s for s in per_host[asg["host"]] if s["name"] == asg["name"])
        head_ip, base, replica = address(hosts, asg["host"]), int(asg["ray"]["port"]), int(asg["replica"])
        parts = [(asg["host"], asg["gpus"], "head")]
        parts += [(w["host"], w["gpus"], "worker") for w in asg["ray"]["workers"]]
        model = dep.get("model") or {}
        for host, gpus, role in parts:
            info = hosts.get(host) or {}
            sync = dict(spec["model_sync"])
            if model.get("source") == "local":
                where = str(model["path"])
                sync["allowed_dirs"] = list(info.get("allowed_model_dirs") or [])
            else:
                sync["models_root"] = info.get("models_root") or DEFAULT_MODELS_ROOT
                where = model_path(sync["models_root"], dep["name"])
            out.setdefault(host, []).append(
                {
                    "name": ray_spec.node_key(dep["name"], replica, role),  # the container: gpufleet-<name>
                    "deployment": dep["name"],
                    "replica": replica,
                    "role": role,
                    "host": host,
                    "port": base,
                    "gpus": [str(g) for g in gpus],
                    "node_ip": address(hosts, host),
                    "head_ip": head_ip,
                    "nodes": len(parts),
                    "cluster_gpus": int(dep["gpus_per_replica"]),
                    "server": spec["name"] if role == "head" else None,
                    "image": spec["image"],
                    "vllm_version": spec["vllm_version"],
                    "image_build": spec.get("image_build"),
                    "env": dict(dep.get("env") or {}),
                    "model_sync": sync,
                    "model_path": where,
                }
            )
        settings = ray_spec.serve_settings(dep["name"], replica, head_ip, base)
        container = spec["container"]
        container["extra_args"] = [*container.get("extra_args", []), *settings["extra_args"]]  # type: ignore[misc]
        container["env"] = {**container.get("env", {}), **settings["env"]}  # type: ignore[dict-item]
        container["mounts"] = [
            *container.get("mounts", []),
            *(f"{h}:{c}:{m}" for h, c, m in settings["mounts"]),  # type: ignore[attr-defined]
        ]
        container.update(network=settings["network"], ipc=settings["ipc"], pid=settings["pid"])
        container["labels"] = {**container.get("labels", {}), labels.RAY_HOSTS: ",".join(p[0] for p in parts)}
        container["tensor_parallel_size"] = dep.get("tensor_parallel_size") or int(dep["gpus_per_replica"]) // int(
            dep.get("pipeline_parallel_size") or 1
        )
        spec["ray"] = {"port": base, "role": "head", "hosts": [p[0] for p in parts], "nodes": len(parts)}
        spec["ray"]["gpus"] = int(dep["gpus_per_replica"])
    return out


def mark_waves(nodes: Mapping[str, list[dict[str, Any]]], per_host: Mapping[str, list[dict[str, Any]]]) -> None:
    """Every Ray node of a replica that rolls (its head's server spec has ``rollout``, ``rollout.compute``) gets the
    ``wave`` that replaces it: the Ray play leaves its old cluster serving until then (``apply_nodes``), and the
    wave swaps every node of the replica on every host (``_fleet/ray_wave.py``)."""
    waves = {
        str(spec["name"]): int(spec["rollout"]["wave"])
        for specs in per_host.values()
        for spec in specs
        if spec.get("ray") and (spec.get("rollout") or {}).get("wave")
    }
    for host_nodes in nodes.values():
        for n in host_nodes:
            wave = waves.get(f"{n['deployment']}-{n['replica']}")
            if wave is not None:
                n["wave"] = wave


def existing_parts(
    host: str, entries: list[dict[str, Any]], nodes: Iterable[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """The host's existing placements (fleet_plan's ``existing_from_info``) with its Ray nodes: the server of a head
    gets ``ray_role: head`` and ``ray_port``; a head without its server and every worker are placements of their
    own (no port), so the planner keeps, moves or removes the replica as a whole."""
    out = [dict(e) for e in entries]
    for n in nodes or []:
        key = f"{n['deployment']}-{n['replica']}"
        mark = {"ray_role": n["role"], "ray_port": n["port"]}
        server = next((e for e in out if e.get("name") == key and not e.get("ray_role")), None)
        if n["role"] == "head" and server is not None:
            server.update(mark)
            continue
        out.append(
            {"host": host, "name": key, "deployment": n["deployment"], "replica": n["replica"], "gpus": list(n["gpus"])}
            | {"port": None, **mark}
        )
    return out


# ------------------------------------------------------------------------------------------------ hosts
def _remove_parts(host: HostApply, results: list[dict[str, Any]]) -> None:
    """The Ray removals of the plan on this host: a head's server first, then the node."""
    for item in host.p.get("removals") or []:
        role = item.get("ray_role")
        if role not in ray_spec.ROLES:
            continue
        if role == "head" and not host.remove(item):
            continue  # the server is still there: its head stays too
        name = labels.container_name(ray_spec.node_key(str(item["deployment"]), int(item["replica"]), role))
        try:
            res = ray_node.remove(host.rt, name, host.check_mode)
            ray_node.remove(host.rt, ray_node.previous_name(name), host.check_mode)  # a wave's leftover, if any
        except GpufleetError as err:
            host.errors.append(f"removal of {name}: {err}")
            results.append({"name": name, "role": role, "action": "remove", "changed": False, "failed": True})
            continue
        host.changed = host.changed or res["changed"]
        results.append({"name": name, "role": role, "action": res["action"], "changed": res["changed"]})


def node_spec_of(n: Mapping[str, Any], image: str) -> ray_spec.NodeSpec:
    """The container of one plan node (``plan.ray[<host>]``) with its image reference."""
    return ray_spec.node_spec(
        deployment=str(n["deployment"]),
        replica=int(n["replica"]),
        role=n["role"],
        image=image,
        base=int(n["port"]),
        gpus=[str(g) for g in n["gpus"]],
        node_ip=str(n["node_ip"]),
        host=str(n["host"]),
        head_ip=str(n["head_ip"]),
        env=dict(n.get("env") or {}),
        model_dirs=[str(n["model_path"])] if n.get("model_path") else [],
    )


def _leftover(host: HostApply, name: str, actions: list[str]) -> None:
    """A node set aside by a rollout wave that did not finish (``_fleet/ray_wave.py``): dropped when its replacement
    is there, else renamed back (as vllm_container treats its ``-previous``)."""
    old = host.rt.container(ray_node.previous_name(name))
    if old is None:
        return
    if host.rt.container(name) is not None:
        actions.append(f"remove leftover {ray_node.previous_name(name)}")
        if not host.check_mode:
            host.rt.remove(old.id)
    else:
        actions.append(f"rename leftover {ray_node.previous_name(name)} back to {name}")
        if not host.check_mode:
            host.rt.rename(old.id, name)


def _ensure(host: HostApply, n: Mapping[str, Any], image: str) -> dict[str, Any]:
    node = node_spec_of(n, image)
    actions: list[str] = []
    _leftover(host, node.name, actions)
    cur = host.rt.container(node.name)
    if cur is not None and cur.labels.get(labels.CONFIG_HASH) != ray_node.config_hash(node) and n.get("wave"):
        # A replica that rolls (the plan's rollout waves): its old cluster serves until its wave replaces it and
        # is kept there for the rollback (_fleet/ray_wave.py).
        return {
            "changed": False,
            "action": "defer",
            "name": node.name,
            "id": cur.id,
            "actions": [*actions, f"replace {node.name} in rollout wave {n['wave']}"],
        }
    if n["role"] == "head" and n.get("server") and cur is not None:
        if cur.labels.get(labels.CONFIG_HASH) != ray_node.config_hash(node):
            # A new cluster: the server of the old one goes first (it shares the old head's PID namespace), drained
            # from its gateways first (it joins them again after its gate in the rollout, _fleet/apply.py).
            if not host.check_mode:
                host.drain(str(n["deployment"]), str(n["server"]), actions)
                host._remove_container(str(n["server"]))
            actions.append(f"remove gpufleet-{n['server']} (its Ray head is replaced)")
    if not host.check_mode:
        for d in node.host_dirs:
            os.makedirs(d, mode=0o700, exist_ok=True)
    res = ray_node.ensure(host.rt, node, host.check_mode)
    return {**res, "actions": [*actions, f"{res['action']} {node.name}"]}


def apply_nodes(
    params: Mapping[str, Any], check_mode: bool = False, warn: Callable[[str], None] | None = None, runtime: Any = None
) -> tuple[dict[str, Any], list[str]]:
    """``fleet_apply state=ray_nodes``: the Ray removals, then this host's Ray nodes (model, image, container).
    Returns the result (``ray_nodes``: one entry per node and removal) and the one-line errors."""
    host = HostApply(params, check_mode, warn, runtime)
    results: list[dict[str, Any]] = []
    _remove_parts(host, results)
    syncs: dict[str, dict[str, Any]] = {}
    for n in params.get("ray_nodes") or []:
        name = labels.container_name(str(n["name"]))
        entry: dict[str, Any] = {"name": name, "role": n["role"], "changed": False}
        results.append(entry)
        dep = str(n["deployment"])
        if dep not in syncs:
            syncs[dep] = host.sync_model(n)
        image_res = host.ensure_image(n.get("image"), n.get("vllm_version"), n.get("image_build"))
        failed = next((r for r in (syncs[dep], image_res) if r.get("failed")), None)
        if failed is not None:
            entry.update(failed=True, hint=failure_hint(failed))
            host.errors.append(f"{name}: {entry['hint']}")
            continue
        if not image_res.get("image") or not image_res.get("image_id"):  # check mode: pulled or built first
            entry.update(changed=True, action="create", hint="the image would be pulled first")
            continue
        try:
            res = _ensure(host, n, str(image_res["image"]))
        except (GpufleetError, OSError) as err:
            entry.update(failed=True, hint=str(err))
            host.errors.append(f"{name}: {err}")
            continue
        entry.update(changed=res["changed"], action=res["action"], actions=res["actions"])
        entry["changed"] = entry["changed"] or bool(syncs[dep].get("changed") or image_res.get("changed"))
    if host._rt is not None:  # the apply's one engine connection
        host.rt.close()
    changed = host.changed or any(r.get("changed") for r in results)
    removals = [r.to_dict() for r in host.records]
    return {"changed": changed, "ray_nodes": results, "records": removals, "diff": host.diffs}, host.errors


def wait_ready(
    params: Mapping[str, Any],
    check_mode: bool = False,
    runtime: Runtime | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict[str, Any], list[str]]:
    """``fleet_apply state=ray_ready``: for each Ray head on this host, until ``ray status`` in it shows every node
    and GPU of its replica (at most ``wait_timeout`` s). Check mode waits for nothing."""
    heads = [n for n in params.get("ray_nodes") or [] if n.get("role") == "head"]
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    if check_mode or not heads:
        return {"changed": False, "ray_nodes": results}, errors
    rt = runtime or get_runtime(params["runtime"], params.get("docker_host"), params.get("podman_socket"))
    try:
        for n in heads:
            name = labels.container_name(str(n["name"]))
            ok, why = cluster_ready(rt, n, float(params.get("wait_timeout") or 600), clock, sleep)
            results.append({"name": name, "role": "head", "ready": ok, "status": why})
            if not ok:
                errors.append(f"{name}: the Ray cluster is not complete: {why} (ray_cluster_incomplete)")
    finally:
        if runtime is None:
            rt.close()
    return {"changed": False, "ray_nodes": results}, errors


def cluster_ready(
    rt: Runtime,
    n: Mapping[str, Any],
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, str]:
    """Until ``ray status`` in the head ``n`` (a plan node) shows every node and GPU of its replica, at most
    ``timeout`` s: ``(ready, Ray's words or why not)``."""
    name = labels.container_name(str(n["name"]))
    argv = ray_spec.status_argv(str(n["head_ip"]), int(n["port"]))
    deadline = clock() + timeout
    why = "the Ray head is not running"
    while True:
        cur = rt.container(name)
        if cur is not None and cur.running:
            rc, text = rt.exec(cur.id, argv)
            if rc == 0:
                ok, why = ray_spec.cluster_ready(text, int(n["nodes"]), int(n["cluster_gpus"]))
            else:
                ok, why = False, (text.strip().splitlines() or ["ray status failed"])[-1]
            if ok:
                return True, why
        if clock() >= deadline:
            return False, why
        sleep(POLL_S)


def stop_nodes(
    params: Mapping[str, Any], check_mode: bool = False, warn: Callable[[str], None] | None = None, runtime: Any = None
) -> tuple[dict[str, Any], list[str]]:
    """``fleet_apply state=ray_stopped``: stop the Ray nodes of ``removals`` (``ray_nodes`` of vllm_deployment_info:
    each with ``deployment``, ``replica`` and ``ray_role``) and keep them; a head's server is stopped first when it
    still runs (it shares the head's PID namespace). The next converge starts them again (``_ray/node.ensure``: the
    same declaration, stopped, is started). Returns the result (``ray_nodes``: one entry per node) and the errors."""
    host = HostApply(params, check_mode, warn, runtime)
    results: list[dict[str, Any]] = []
    for item in params.get("removals") or []:
        role = item.get("ray_role")
        if role not in ray_spec.ROLES:
            continue
        key = f"{item['deployment']}-{int(item['replica'])}"
        name = labels.container_name(ray_spec.node_key(str(item["deployment"]), int(item["replica"]), role))
        entry: dict[str, Any] = {"name": name, "role": role, "changed": False}
        results.append(entry)
        try:
            server = host.rt.container(labels.container_name(key)) if role == "head" else None
            if server is not None and (server.running or server.status == "restarting"):
                args = {"name": key, "state": "stopped", "runtime": params["runtime"]}
                args.update(docker_host=params.get("docker_host"), manifest_dir=params["manifest_dir"])
                host._note(labels.container_name(key), host._converge(container_params(f"stop of {key}", args)))
            res = ray_node.stop(host.rt, name, check_mode=check_mode)
        except GpufleetError as err:
            entry.update(action="stop", failed=True, hint=str(err))
            host.errors.append(f"stop of {name}: {err}")
            continue
        entry.update(action=res["action"], changed=res["changed"])
        if res["changed"]:
            host._note(name, {"changed": True, "diff": {"before": {"state": "started"}, "after": {"state": "stopped"}}})
    if host._rt is not None:
        host.rt.close()
    return {"changed": host.changed, "ray_nodes": results, "diff": host.diffs}, host.errors
