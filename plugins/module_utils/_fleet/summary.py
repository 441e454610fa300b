# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The converge summary of the ``deployments`` role: JSON for CI (per deployment and replica: what the plan said and
what the host's ``fleet_apply`` run reported) and the human table. Plain functions over the plan and the registered
results; never sees a secret value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as labels
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import records
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.records import RemovalRecord, ReplicaRecord
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.table import gpus_text, render_table
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray.spec import node_key
from ansible_collections.gpufleet.vllm.plugins.module_utils._utc import stamp

SUMMARY_VERSION = 1

# Worst first: a deployment's status is the worst of its replicas'.
STATUS_ORDER = ("failed", "unschedulable", "unreachable", "not_run", "changed", "removed", "ok")


def _worst(statuses: Iterable[str]) -> str:
    found = set(statuses)
    for status in STATUS_ORDER:
        if status in found:
            return status
    return "ok"


# What the Ray step (``fleet_apply state=ray_nodes``, ``_fleet/ray.py``) reports per node, as the summary says it.
RAY_ACTIONS = {
    "keep": "unchanged",
    "start": "started",
    "create": "created",
    "replace": "replaced",
    "remove": "removed",
    "absent": "absent",
    "stop": "stopped",
    "stopped": "stopped",
    "defer": "deferred",  # a replica that rolls: its old cluster serves until its wave (ray_wave.py)
    "drain": "drained",  # its server left the routers and stopped; the swap replaces the node next
    "set_aside": "replaced",
    "restore": "rolled back",  # its wave failed: the old node is back (ray_wave.settle)
}


def _first_line(text: Any) -> str | None:
    lines = str(text or "").strip().splitlines()
    return lines[0] if lines else None


# One host's Ray step: its entries by (container name, removal), and the step's own error (None: none).
RayStep = tuple[dict[tuple[str, bool], Mapping[str, Any]], Optional[str]]  # noqa: UP045 (evaluated at run time: sanity checks older Pythons)


def _ray_step(raw: Any) -> RayStep:
    """One host's registered Ray step result (``deployments_ray_nodes`` or ``deployments_ray_ready``): its entries by
    ``(container name, removal)`` (a removal's entry says ``remove`` or ``absent``), and the step's own error when it
    failed before any entry said why (None otherwise)."""
    if not isinstance(raw, Mapping) or raw.get("skipped"):
        return {}, None
    entries = {
        (str(e["name"]), e.get("action") in ("remove", "absent")): e
        for e in raw.get("ray_nodes") or []
        if isinstance(e, Mapping) and e.get("name")
    }
    bad = any(e.get("failed") or e.get("ready") is False for e in entries.values())
    error = _first_line(raw.get("msg") or "the Ray step failed") if raw.get("failed") and not bad else None
    return entries, error


def _ray_node_row(
    node: Mapping[str, Any],
    steps: Mapping[str, RayStep],
    ready: Mapping[str, RayStep],
    unreachable: set[str],
    removal: bool = False,
) -> dict[str, Any]:
    """One Ray node of the plan (``plan.ray[<host>]``) with what the Ray step did to it on its host this run:
    ``action`` (created, unchanged, replaced, started, …), ``status`` (ok, changed, failed, not_run, unreachable),
    ``ready`` (a head: whether its cluster showed every node and GPU; None when not waited for), ``failed_step`` and
    ``hint`` of a failure."""
    host, role = str(node.get("host")), str(node.get("role"))
    container = labels.container_name(str(node.get("name")))
    row: dict[str, Any] = {
        "host": host,
        "role": role,
        "container": container,
        "gpus": list(node.get("gpus") or []),
        "action": None,
        "status": "not_run",
        "ready": None,
        "failed_step": None,
        "hint": None,
    }
    if host in unreachable:
        row["status"] = "unreachable"
        return row
    entries, error = steps.get(host, ({}, None))
    entry = entries.get((container, removal))
    if entry is None:
        if error:
            row.update(status="failed", failed_step="ray_nodes", hint=error)
        return row
    row["action"] = RAY_ACTIONS.get(str(entry.get("action")), entry.get("action"))
    if entry.get("failed"):
        row.update(status="failed", failed_step="ray_nodes", hint=_first_line(entry.get("hint")) or "failed")
        return row
    row["status"] = "changed" if entry.get("changed") else "ok"
    if role == "head" and not removal:
        waited, wait_error = ready.get(host, ({}, None))
        found = waited.get((container, False))
        if found is not None:
            row["ready"] = bool(found.get("ready"))
            if not row["ready"]:
                why = _first_line(found.get("status")) or "not every node and GPU joined"
                row.update(status="failed", failed_step="ray_ready", hint=f"the Ray cluster is not complete: {why}")
        elif wait_error:
            row.update(status="failed", failed_step="ray_ready", hint=wait_error)
    return row


def _with_ray_nodes(row: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
    """A multi-host replica's row with its Ray nodes (``hosts``: head first; ``ray_nodes``): any node changed makes
    the replica changed; the first node that failed in the Ray step (the head, then the workers), else the head
    whose cluster did not complete, is the replica's failure cause (its step and hint; class
    ``ray_cluster_incomplete`` unless the server failed with a class of its own)."""
    row["hosts"] = list(dict.fromkeys([str(row["host"]), *(n["host"] for n in nodes)]))
    row["ray_nodes"] = nodes
    if any(n["status"] == "changed" for n in nodes) and row["status"] == "ok":
        row.update(changed=True, status="changed")
    failed = [n for n in nodes if n["status"] == "failed"]
    cause = next((n for n in failed if n["failed_step"] == "ray_nodes"), failed[0] if failed else None)
    if cause is None:
        return
    server_hint = row.get("hint")
    hint = f"Ray {cause['role']} {cause['container']} on {cause['host']}: {cause['hint']}"
    row.update(failed=True, status="failed", failed_step=cause["failed_step"])
    row["hint"] = f"{hint} (then the server: {server_hint})" if server_hint else hint
    if row.get("failure_class") in (None, "unknown"):
        row["failure_class"] = "ray_cluster_incomplete"


def _replica_row(spec: Mapping[str, Any], result: ReplicaRecord | None, unreachable: bool) -> dict[str, Any]:
    """One placed replica: what the plan said plus what the host's run reported."""
    row: dict[str, Any] = {
        "deployment": spec.get("deployment"),
        "replica": spec.get("replica"),
        "name": spec.get("name"),
        "container": f"gpufleet-{spec.get('name')}",
        "host": spec.get("host"),
        "gpus": list(spec.get("gpus") or []),
        "gpu_uuids": list(spec.get("gpu_uuids") or []),
        "port": spec.get("port"),
        "action": spec.get("action"),
        "endpoint": None,
        "status": "not_run",
        "changed": False,
        "failed": False,
        "failure_class": None,
        "failed_step": None,
        "hint": None,
        "rolled_back": None,
        "phase": None,
    }
    if result is None:
        row["status"] = "unreachable" if unreachable else "not_run"
        if unreachable:
            row["failure_class"] = "unreachable"
            row["hint"] = f"{spec.get('host')} is unreachable: its replicas are kept where they are and not converged"
        return row
    for key in ("endpoint", "failure_class", "failed_step", "hint", "rolled_back", "phase"):
        value = getattr(result, key)
        if value is not None:
            row[key] = value
    if result.model_source is not None:  # a model with sources: the one that served (only then: rows keep their keys)
        row["model_source"] = result.model_source
    row["changed"] = result.changed
    row["failed"] = result.failed
    if row["failed"]:
        row["status"] = "failed"
        row["failure_class"] = row["failure_class"] or "unknown"
    else:
        row["status"] = "changed" if row["changed"] else "ok"
    return row


def converge_summary(
    plan: Mapping[str, Any],
    host_results: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    unreachable: Iterable[str] = (),
    plan_errors: Iterable[Mapping[str, Any]] = (),
    check_mode: bool = False,
    generated_at: float | None = None,
    ray_nodes: Mapping[str, Any] | None = None,
    ray_ready: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The machine-readable converge summary.

    ``plan``: fleet_plan's ``plan`` (``hosts``, ``remove``, ``undeclared``). ``host_results``: per host, the
    registered ``fleet_apply`` result or its records (``records.py``: ``{kind: replica|remove, name,
    changed, failed, failure_class, hint, endpoint, ...}``); a host with None did not run (unreachable, or a batch
    stopped the run before it). ``ray_nodes`` / ``ray_ready``: per host, the registered results of the Ray step
    (``fleet_apply state=ray_nodes`` / ``state=ray_ready``): a multi-host replica's row gets ``hosts`` and
    ``ray_nodes`` (the plan's ``ray`` nodes with what that step did to each), a removed Ray part its ``ray_node``.
    Returns ``{version, generated_at, check_mode, ok, counts, deployments: {name:
    {status, replicas: [...]}}, removed: [...], unschedulable: [...], undeclared: [...], unreachable_hosts}``.
    """
    unreachable_set = {str(h) for h in unreachable}
    by_host: dict[str, dict[tuple[str, str], ReplicaRecord | RemovalRecord]] = {}
    apply_errors: dict[str, str] = {}
    for host, raw in (host_results or {}).items():
        if isinstance(raw, Mapping):  # the registered fleet_apply result
            if raw.get("skipped"):
                continue
            if raw.get("failed") and not any(
                isinstance(r, Mapping) and r.get("failed") for r in raw.get("records") or []
            ):
                # the apply failed before any record said why (a bad argument, an engine it could not reach)
                apply_errors[str(host)] = str(raw.get("msg") or "the apply failed").strip().splitlines()[0]
            raw = raw.get("records") or []
        if not isinstance(raw, list):
            continue
        by_host[str(host)] = records.by_key(raw)

    steps = {str(h): _ray_step(raw) for h, raw in (ray_nodes or {}).items()}
    ready = {str(h): _ray_step(raw) for h, raw in (ray_ready or {}).items()}
    plan_nodes: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}  # (deployment, replica) -> host -> node
    for host, nodes in (plan.get("ray") or {}).items():
        for n in nodes or []:
            plan_nodes.setdefault((str(n.get("deployment")), str(n.get("replica"))), {})[str(host)] = n

    deployments: dict[str, dict[str, Any]] = {}
    for host, specs in sorted((plan.get("hosts") or {}).items()):
        for spec in specs or []:
            result = by_host.get(host, {}).get((records.REPLICA, str(spec.get("name"))))
            row = _replica_row(spec, result if isinstance(result, ReplicaRecord) else None, host in unreachable_set)
            if spec.get("ray"):  # a multi-host replica: its Ray nodes, head first (docs/ray.md)
                parts = plan_nodes.get((str(spec.get("deployment")), str(spec.get("replica"))), {})
                order = [str(h) for h in spec["ray"].get("hosts") or []] or sorted(parts)
                nodes = [_ray_node_row(parts[h], steps, ready, unreachable_set) for h in order if h in parts]
                _with_ray_nodes(row, nodes)
            deployments.setdefault(str(spec.get("deployment")), {"replicas": []})["replicas"].append(row)

    removed: list[dict[str, Any]] = []
    for host, items in sorted((plan.get("remove") or {}).items()):
        for item in items or []:
            found = by_host.get(host, {}).get((records.REMOVE, str(item.get("name"))))
            result = found if isinstance(found, RemovalRecord) else None
            entry = {
                "deployment": item.get("deployment"),
                "replica": item.get("replica"),
                "name": item.get("name"),
                "host": host,
                "gpus": list(item.get("gpus") or []),
                "port": item.get("port"),
                "reason": item.get("reason"),
                "status": "not_run",
                "changed": False,
                "failed": False,
                "failure_class": None,
                "hint": None,
            }
            if result is not None:
                entry["changed"] = result.changed
                entry["failed"] = result.failed
                entry["hint"] = result.hint
                entry["status"] = "failed" if entry["failed"] else "removed"
                if entry["failed"]:
                    entry["failure_class"] = result.failure_class or "unknown"
            elif host in unreachable_set:
                entry["status"] = "unreachable"
                entry["failure_class"] = "unreachable"
            role = item.get("ray_role")
            if role in ("head", "worker"):  # a Ray part: the Ray step removed its node (a head's server first)
                part = {"host": host, "role": role, "gpus": item.get("gpus")}
                part["name"] = node_key(str(item.get("deployment")), int(item.get("replica") or 0), role)
                node = _ray_node_row(part, steps, ready, unreachable_set, removal=True)
                entry["ray_node"] = node
                if node["status"] == "failed":
                    entry.update(status="failed", failed=True, hint=entry["hint"] or node["hint"])
                    entry["failure_class"] = entry["failure_class"] or "unknown"
            removed.append(entry)

    unschedulable = []
    for err in plan_errors or []:
        name = str(err.get("deployment"))
        unschedulable.append(
            {
                "deployment": name,
                "message": err.get("message"),
                "missing_replicas": list(err.get("missing_replicas") or []),
            }
        )
        deployments.setdefault(name, {"replicas": []})

    for name, dep in deployments.items():
        statuses = [r["status"] for r in dep["replicas"]]
        if any(u["deployment"] == name for u in unschedulable):
            statuses.append("unschedulable")
        dep["status"] = _worst(statuses) if statuses else "ok"
        dep["replicas"].sort(key=lambda r: (r["replica"] if isinstance(r["replica"], int) else 0, str(r["host"])))

    counts = {k: 0 for k in ("ok", "changed", "failed", "not_run", "unreachable", "removed", "unschedulable")}
    for dep in deployments.values():
        for row in dep["replicas"]:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    for entry in removed:
        key = "failed" if entry["status"] == "failed" else entry["status"]
        counts[key] = counts.get(key, 0) + 1
    counts["unschedulable"] = len(unschedulable)
    ok = (
        counts["failed"] == 0 and counts["unschedulable"] == 0 and counts["unreachable"] == 0 and counts["not_run"] == 0
    )
    failed_hosts: dict[str, list[str]] = {}
    for dep in deployments.values():
        for row in dep["replicas"]:
            if row["status"] == "failed":
                failed_hosts.setdefault(str(row["host"]), []).append(str(row["name"]))
    for entry in removed:
        if entry["status"] == "failed":
            failed_hosts.setdefault(str(entry["host"]), []).append(f"removal of {entry['name']}")
    for host, message in sorted(apply_errors.items()):
        failed_hosts.setdefault(host, []).append(f"the apply ({message})")
    counts["failed"] += len(apply_errors)
    ok = ok and not apply_errors
    return {
        "version": SUMMARY_VERSION,
        "kind": "converge",
        "failed_hosts": failed_hosts,
        "generated_at": stamp(generated_at),
        "check_mode": bool(check_mode),
        "ok": ok,
        "counts": counts,
        "deployments": {k: deployments[k] for k in sorted(deployments)},
        "removed": removed,
        "unschedulable": unschedulable,
        "undeclared": [dict(u) for u in plan.get("undeclared") or []],
        "unreachable_hosts": sorted(unreachable_set),
    }


def converge_table(summary: Mapping[str, Any]) -> list[str]:
    """The human table of a converge summary, then one line per problem (failure hints, unschedulable)."""
    rows: list[list[Any]] = []
    for name, dep in (summary.get("deployments") or {}).items():
        for r in dep["replicas"]:
            rows.append(
                [
                    name,
                    r["replica"],
                    "+".join(r.get("hosts") or [r["host"]]),
                    gpus_text(r["gpus"]),
                    r["endpoint"] or (f":{r['port']}" if r.get("port") else None),
                    r["action"],
                    r["status"],
                    r["failure_class"],
                ]
            )
            for n in r.get("ray_nodes") or []:  # every container of a multi-host replica, one line each
                action = f"ray {n['role']}: {n['action']}" if n["action"] else f"ray {n['role']}"
                rows.append([name, r["replica"], n["host"], gpus_text(n["gpus"]), None, action, n["status"], None])
    for r in summary.get("removed") or []:
        node = r.get("ray_node")
        rows.append(
            [
                r["deployment"],
                r["replica"],
                r["host"],
                gpus_text(r["gpus"]),
                None,
                f"remove (ray {node['role']})" if node else "remove",
                r["status"],
                r["failure_class"],
            ]
        )
    for u in summary.get("unschedulable") or []:
        rows.append([u["deployment"], None, None, None, None, "place", "unschedulable", "unschedulable"])
    out = render_table(["DEPLOYMENT", "REPLICA", "HOST", "GPUS", "ENDPOINT", "ACTION", "STATUS", "FAILURE"], rows)
    counts = summary.get("counts") or {}
    mode = " (check mode: nothing was changed)" if summary.get("check_mode") else ""
    out.append(
        f"{'OK' if summary.get('ok') else 'FAILED'}{mode}: "
        + ", ".join(f"{k}={counts[k]}" for k in sorted(counts) if counts[k])
    )
    for name, dep in (summary.get("deployments") or {}).items():
        for r in dep["replicas"]:
            if r["status"] in ("failed", "unreachable") and r.get("hint"):
                extra = "; rolled back to the previous container" if r.get("rolled_back") else ""
                out.append(f"{name} replica {r['replica']} on {r['host']}: {r['hint']}{extra}")
    for u in summary.get("unschedulable") or []:
        out.append(str(u["message"]))
    if summary.get("unreachable_hosts"):
        out.append("unreachable hosts: " + ", ".join(summary["unreachable_hosts"]))
    return out
