# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A multi-host replica's rolling update, in its rollout wave (docs/ray.md, "Rolling updates").

A Ray replica whose declaration changed keeps serving on its old cluster until its wave (the Ray play defers it,
``ray.apply_nodes``), where it is replaced in place (it never surges: a copy would need a second cluster on every
host) and so counts against its deployment's ``max_unavailable``. The wave's steps, each on every host at once:

1. ``drain`` (``fleet_apply state=ray_drain``, heads' hosts): the server leaves its routers (its requests finish)
   and is stopped, kept; then ``swap`` (``state=ray_swap``): on every host each node whose declaration changed is
   stopped and set aside as
   ``<node>-previous`` (``_ray/node.set_aside``) and the new node takes its name, GPUs and ports. The role then
   waits for the new cluster (``state=ray_ready``) and the wave converges the server as any replica
   (``vllm_container``: the stopped old server is kept as ``-previous`` until the new one passed its gate).
2. ``settle`` (``state=ray_settle``): the nodes set aside are removed when the replica passed; when it failed the
   new nodes are removed and the old ones renamed back and started (``_ray/node.restore``).
3. ``restore`` (``state=ray_restore``, on the head's host of a failed replica): once the old cluster shows every
   node and GPU again, its old server (renamed back by vllm_container's rollback) is started, waited for and joins
   its routers again; the replica's record says so.

``wave_nodes`` (controller, the filter ``gpufleet.vllm.wave_ray_nodes``) picks each host's nodes for these steps;
``merge_results`` joins a step's per-node entries to the Ray play's for the converge summary.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as labels
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.apply import (
    HostApply,
    container_params,
    failure_hint,
    public_endpoint,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.ray import cluster_ready, node_spec_of
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.records import ReplicaRecord
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.rollout import failed_deployments
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import node as ray_node

STEPS = ("swap", "settle")


# ------------------------------------------------------------------------------------------------ controller
def failed_records(results: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """The failed replica records of the hosts' registered results so far, by replica name (the last one wins)."""
    out: dict[str, dict[str, Any]] = {}
    for res in results or []:
        if not isinstance(res, Mapping):
            continue
        for rec in res.get("records") or []:
            if isinstance(rec, Mapping) and rec.get("failed") and rec.get("kind", "replica") == "replica":
                out[str(rec.get("name"))] = dict(rec)
    return out


def wave_nodes(nodes: Iterable[Mapping[str, Any]], wave: Mapping[str, Any], step: str, results: Iterable[Any]) -> list:
    """A host's Ray nodes (``plan.ray[<host>]``) that ``wave`` replaces. ``swap``: those of deployments with no
    failed replica so far (a failure stops its deployment's rollout, as ``rollout.wave_replicas``). ``settle``:
    every one, each with ``failed`` (its replica failed in the wave) and, on a head, the replica's failed record
    (``failed_record``) that ``restore`` completes."""
    if step not in STEPS:
        raise GpufleetError(f"wave_ray_nodes: step must be one of {', '.join(STEPS)}, not {step!r}")
    index = (wave or {}).get("index")
    mine = [dict(n) for n in nodes or [] if index is not None and n.get("wave") == index]
    results = list(results or [])
    if step == "swap":
        halted = set(failed_deployments(results))
        return [n for n in mine if n.get("deployment") not in halted]
    failed = failed_records(results)
    for n in mine:
        rec = failed.get(f"{n['deployment']}-{n['replica']}")
        n["failed"] = rec is not None
        if rec is not None and n.get("role") == "head":
            n["failed_record"] = rec
    return mine


def merge_results(before: Any, *after: Any) -> dict[str, Any]:
    """One host's Ray step results as one (the Ray play's, then a wave's steps): per-node entries by container name,
    the later one winning; failed when any failed."""
    runs = [r for r in (before, *after) if isinstance(r, Mapping) and not r.get("skipped")]
    if not runs:
        return dict(before) if isinstance(before, Mapping) else {}
    entries: dict[str, Any] = {}
    for r in runs:
        for e in r.get("ray_nodes") or []:
            if isinstance(e, Mapping) and e.get("name"):
                entries[str(e["name"])] = e
    out: dict[str, Any] = {
        "changed": any(bool(r.get("changed")) for r in runs),
        "failed": any(bool(r.get("failed")) for r in runs),
        "ray_nodes": list(entries.values()),
    }
    msgs = [str(r["msg"]) for r in runs if r.get("failed") and r.get("msg")]
    if msgs:
        out["msg"] = "; ".join(msgs)
    return out


# ------------------------------------------------------------------------------------------------ hosts
def _stop_server(host: HostApply, n: Mapping[str, Any], actions: list[str]) -> None:
    """The head's server leaves its routers (drained) and stops, kept: vllm_container replaces it in the wave and
    keeps it until the new one passed its gate (it shares the old head's PID namespace: it cannot outlive it)."""
    key = str(n["server"])
    server = host.rt.container(labels.container_name(key))
    if server is None or not (server.running or server.status in ("paused", "restarting")):
        return
    if host.check_mode:
        actions.append(f"stop {labels.container_name(key)} (kept for the rollback)")
        return
    host.drain(str(n["deployment"]), key, actions)
    args = {"name": key, "state": "stopped", "runtime": host.p["runtime"], "manifest_dir": host.p["manifest_dir"]}
    args["docker_host"] = host.p.get("docker_host")
    res = host._converge(container_params(f"stop of {key}", args))
    host._note(labels.container_name(key), res)
    actions.extend(res.get("actions") or [])


def _changed(
    host: HostApply, nodes: Iterable[Mapping[str, Any]], results: list[dict[str, Any]]
) -> list[tuple[Mapping[str, Any], Any, dict[str, Any]]]:
    """The nodes whose container is not the declared one, running: ``(plan node, NodeSpec, entry)``; every node
    gets an entry in ``results`` (``keep`` for one as declared, a failure when its image is missing)."""
    out = []
    for n in nodes:
        name = labels.container_name(str(n["name"]))
        entry: dict[str, Any] = {"name": name, "role": n["role"], "changed": False}
        results.append(entry)
        image_res = host.ensure_image(n.get("image"), n.get("vllm_version"), n.get("image_build"))
        if image_res.get("failed"):
            entry.update(action="replace", failed=True, hint=failure_hint(image_res))
            host.errors.append(f"{name}: {entry['hint']}")
            continue
        if not image_res.get("image") or not image_res.get("image_id"):  # check mode: pulled or built first
            entry.update(changed=True, action="replace", hint="the image would be pulled first")
            continue
        node = node_spec_of(n, str(image_res["image"]))
        cur = host.rt.container(name)
        if cur is not None and cur.labels.get(labels.CONFIG_HASH) == ray_node.config_hash(node) and cur.running:
            entry.update(action="keep")
            continue
        out.append((n, node, entry))
    return out


def drain(
    params: Mapping[str, Any], check_mode: bool = False, warn: Callable[[str], None] | None = None, runtime: Any = None
) -> tuple[dict[str, Any], list[str]]:
    """``fleet_apply state=ray_drain``: the server of each head of the wave (``ray_nodes``) whose cluster will be
    replaced leaves its routers (its requests in flight finish) and stops, kept. The role runs it on every head's
    host before ``swap`` on any host: a worker replaced first would fail the old server's requests."""
    host = HostApply(params, check_mode, warn, runtime)
    results: list[dict[str, Any]] = []
    heads = [n for n in params.get("ray_nodes") or [] if n.get("role") == "head" and n.get("server")]
    for n, _node, entry in _changed(host, heads, results):
        actions: list[str] = []
        try:
            _stop_server(host, n, actions)
        except GpufleetError as err:
            entry.update(action="drain", failed=True, hint=str(err), actions=actions)
            host.errors.append(f"{entry['name']}: {err}")
            continue
        entry.update(action="drain", actions=actions)
    if host._rt is not None:
        host.rt.close()
    return {"changed": host.changed, "ray_nodes": results, "diff": host.diffs}, host.errors


def swap(
    params: Mapping[str, Any], check_mode: bool = False, warn: Callable[[str], None] | None = None, runtime: Any = None
) -> tuple[dict[str, Any], list[str]]:
    """``fleet_apply state=ray_swap``: this host's nodes of the wave (``ray_nodes``) whose declaration changed
    replaced, each old one stopped and kept as ``<node>-previous``; a node already as declared is kept. A head's
    server still running (``drain`` did not run) is drained and stopped first."""
    host = HostApply(params, check_mode, warn, runtime)
    results: list[dict[str, Any]] = []
    for n, node, entry in _changed(host, params.get("ray_nodes") or [], results):
        name = entry["name"]
        actions: list[str] = []
        cur = host.rt.container(name)
        if cur is not None and cur.labels.get(labels.CONFIG_HASH) == ray_node.config_hash(node):
            res = ray_node.ensure(host.rt, node, check_mode)  # as declared, stopped: started, nothing to set aside
            entry.update(changed=res["changed"], action=res["action"], actions=[f"{res['action']} {name}"])
            host.changed = host.changed or res["changed"]
            continue
        try:
            if n["role"] == "head" and n.get("server"):
                _stop_server(host, n, actions)
            aside = ray_node.set_aside(host.rt, name, check_mode=check_mode)
            if aside["changed"]:
                actions.append(f"stop {name} and keep it as {ray_node.previous_name(name)} until the wave passed")
            if not check_mode:
                for d in node.host_dirs:
                    os.makedirs(d, mode=0o700, exist_ok=True)
            res = ray_node.ensure(host.rt, node, check_mode)
            actions.append(f"{res['action']} {name}")
        except (GpufleetError, OSError) as err:
            entry.update(action="replace", failed=True, hint=str(err), actions=actions)
            host.errors.append(f"{name}: {err}")
            continue
        entry.update(changed=True, action="replace" if aside["changed"] else res["action"], actions=actions)
        host.changed = True
    if host._rt is not None:
        host.rt.close()
    return {"changed": host.changed, "ray_nodes": results, "diff": host.diffs}, host.errors


def settle(
    params: Mapping[str, Any], check_mode: bool = False, warn: Callable[[str], None] | None = None, runtime: Any = None
) -> tuple[dict[str, Any], list[str]]:
    """``fleet_apply state=ray_settle``: per node of the wave (``ray_nodes``, each with ``failed``), the old node set
    aside is removed (the replica passed) or brought back in place of the new one (it failed). Returns an entry per
    node brought back (``action: restore``) and the names of the old nodes removed (``removed``)."""
    host = HostApply(params, check_mode, warn, runtime)
    results: list[dict[str, Any]] = []
    removed: list[str] = []
    for n in params.get("ray_nodes") or []:
        name = labels.container_name(str(n["name"]))
        try:
            if n.get("failed"):
                res = ray_node.restore(host.rt, name, check_mode)
                if res["changed"]:
                    results.append(
                        {
                            "name": name,
                            "role": n["role"],
                            "changed": True,
                            "action": "restore",
                            "actions": [
                                f"remove the new {name}",
                                f"rename {ray_node.previous_name(name)} back, start it",
                            ],
                        }
                    )
            else:
                res = ray_node.drop_previous(host.rt, name, check_mode)
                if res["changed"]:
                    removed.append(str(res["name"]))
        except GpufleetError as err:
            results.append({"name": name, "role": n["role"], "changed": False, "action": "restore", "failed": True})
            results[-1]["hint"] = str(err)
            host.errors.append(f"{name}: {err}")
            continue
        host.changed = host.changed or bool(res["changed"])
    if host._rt is not None:
        host.rt.close()
    return {"changed": host.changed, "ray_nodes": results, "removed": removed}, host.errors


def restore(
    params: Mapping[str, Any],
    check_mode: bool = False,
    warn: Callable[[str], None] | None = None,
    runtime: Any = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict[str, Any], list[str]]:
    """``fleet_apply state=ray_restore``: for each head of ``ray_nodes`` whose replica failed in its wave (``failed``,
    ``failed_record``), once the old cluster shows every node and GPU again (at most ``wait_timeout`` s) its old
    server is started, waited for (``/health``: it may use another API key than the new declaration) and joins its
    routers again. Returns the replica's record completed (still failed: the update did not pass; ``rolled_back``,
    the hint says whether the old server serves again). Check mode does nothing."""
    host = HostApply(params, check_mode, warn, runtime)
    heads = [
        n for n in params.get("ray_nodes") or [] if n.get("role") == "head" and n.get("failed") and n.get("server")
    ]
    if check_mode or not heads:
        return {"changed": False, "records": []}, []
    timeout = float(params.get("wait_timeout") or 600)
    address = params.get("address")
    for n in heads:
        rec = ReplicaRecord.from_dict(n.get("failed_record") or {"name": n["server"]})
        rec.deployment = rec.deployment or str(n["deployment"])
        rec.failed, rec.rolled_back = True, True
        host.records.append(rec)
        key = str(n["server"])
        ok, why = cluster_ready(host.rt, n, timeout, clock, sleep)
        serving, port, bind, base = False, 0, None, ""
        if ok:
            server = host.rt.container(labels.container_name(key))
            if server is None:
                why = f"{labels.container_name(key)} is gone"
            else:
                found = labels.parse(server.labels)
                port, bind = int(found.get("port") or 0), found.get("host")
                base = readiness.base_url(found.get("host"), port)
                try:
                    if not server.running:
                        host.rt.start(server.id)
                        rec.actions.append(f"rollback: start {labels.container_name(key)} on its old Ray cluster")
                    secrets = host._secrets(str(n["deployment"]))
                    api_key = secrets.get("api_key")  # the old server's may differ: /health then says it serves
                    out = readiness.wait_ready(host.rt, server.id, base, api_key, timeout, [api_key] if api_key else [])
                    serving = out.ready or out.health_ok_at is not None or readiness.http(base + "/health")[0] == 200
                    why = out.hint or "it did not answer /health"
                except GpufleetError as err:
                    why = str(err)
                gw = host.gateways
                if serving and gw is not None and gw.has(str(n["deployment"])):
                    gw.rejoin(str(n["deployment"]), gw.routers(str(n["deployment"])), gw.worker(port), rec.actions)
        host.changed = True
        base_hint = rec.hint or "the update failed"
        if serving:
            rec.phase = "ready"
            rec.endpoint = public_endpoint({"container": {"host": bind}, "port": port}, {"endpoint": base}, address)
            rec.hint = f"{base_hint}; rolled back to the previous Ray cluster (serving again)"
        else:
            rec.hint = f"{base_hint}; the previous Ray cluster and server are back but do not serve: {why}"
            host.errors.append(f"{key}: {rec.hint}")
    if host._rt is not None:
        host.rt.close()
    return {"changed": host.changed, "records": [r.to_dict() for r in host.records]}, host.errors
