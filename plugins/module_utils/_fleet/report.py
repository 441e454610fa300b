# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reports of the ``deployments`` role: the converge summary (JSON for CI + a human table), the status table (with
numbers from vLLM's ``/metrics``), the per-replica records of a host's run (also used by ``fleet_apply``) and
manifest → vllm_container parameters for ``playbooks/redeploy.yml``.

Plain functions over plain data (the registered results of the role's tasks); the module
``gpufleet.vllm.fleet_report`` calls them on the controller. Never sees a secret value: the role passes results of
``no_log``-aware modules and the plan, which holds none.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_atomic

SUMMARY_VERSION = 1
STATUS_VERSION = 1

# Worst first: a deployment's status is the worst of its replicas'.
STATUS_ORDER = ("failed", "unschedulable", "unreachable", "not_run", "changed", "removed", "ok")


def _worst(statuses: Iterable[str]) -> str:
    found = set(statuses)
    for status in STATUS_ORDER:
        if status in found:
            return status
    return "ok"


def _gpus_text(gpus: Any) -> str:
    if not gpus:
        return "-"
    return ",".join(str(g) for g in gpus)


def _loop_results(registered: Any) -> list[Mapping[str, Any]]:
    if not isinstance(registered, Mapping):
        return []
    return [r for r in registered.get("results") or [] if isinstance(r, Mapping)]


def _replica_row(spec: Mapping[str, Any], result: Mapping[str, Any] | None, unreachable: bool) -> dict[str, Any]:
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
        if result.get(key) is not None:
            row[key] = result[key]
    row["changed"] = bool(result.get("changed"))
    row["failed"] = bool(result.get("failed"))
    if row["failed"]:
        row["status"] = "failed"
        row["failure_class"] = row["failure_class"] or "unknown"
    elif result.get("skipped"):
        row["status"] = "not_run"
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
) -> dict[str, Any]:
    """The machine-readable converge summary.

    ``plan``: fleet_plan's ``plan`` (``hosts``, ``remove``, ``undeclared``). ``host_results``: per host, the
    registered ``fleet_apply`` result or its records (``{kind: replica|remove, name,
    changed, failed, failure_class, hint, endpoint, ...}``); a host with None did not run (unreachable, or a batch
    stopped the run before it). Returns ``{version, generated_at, check_mode, ok, counts, deployments: {name:
    {status, replicas: [...]}}, removed: [...], unschedulable: [...], undeclared: [...], unreachable_hosts}``.
    """
    unreachable_set = {str(h) for h in unreachable}
    by_host: dict[str, dict[tuple[str, str], Mapping[str, Any]]] = {}
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
        records = raw
        entries: dict[tuple[str, str], Mapping[str, Any]] = {}
        for rec in records or []:
            if isinstance(rec, Mapping) and rec.get("name") is not None:
                entries[(str(rec.get("kind") or "replica"), str(rec["name"]))] = rec
        by_host[str(host)] = entries

    deployments: dict[str, dict[str, Any]] = {}
    for host, specs in sorted((plan.get("hosts") or {}).items()):
        for spec in specs or []:
            result = by_host.get(host, {}).get(("replica", str(spec.get("name"))))
            row = _replica_row(spec, result, host in unreachable_set)
            deployments.setdefault(str(spec.get("deployment")), {"replicas": []})["replicas"].append(row)

    removed: list[dict[str, Any]] = []
    for host, items in sorted((plan.get("remove") or {}).items()):
        for item in items or []:
            result = by_host.get(host, {}).get(("remove", str(item.get("name"))))
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
                entry["changed"] = bool(result.get("changed"))
                entry["failed"] = bool(result.get("failed"))
                entry["hint"] = result.get("hint")
                entry["status"] = "failed" if entry["failed"] else "removed"
                if entry["failed"]:
                    entry["failure_class"] = result.get("failure_class") or "unknown"
            elif host in unreachable_set:
                entry["status"] = "unreachable"
                entry["failure_class"] = "unreachable"
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
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(generated_at)),
        "check_mode": bool(check_mode),
        "ok": ok,
        "counts": counts,
        "deployments": {k: deployments[k] for k in sorted(deployments)},
        "removed": removed,
        "unschedulable": unschedulable,
        "undeclared": [dict(u) for u in plan.get("undeclared") or []],
        "unreachable_hosts": sorted(unreachable_set),
    }


def render_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A plain fixed-width table (one string per line); ``None`` shows as ``-``."""
    cells = [[("-" if c is None or c == "" else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in header]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(widths[i]) for i, v in enumerate(values)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *[line(r) for r in cells]]


def converge_table(summary: Mapping[str, Any]) -> list[str]:
    """The human table of a converge summary, then one line per problem (failure hints, unschedulable)."""
    rows: list[list[Any]] = []
    for name, dep in (summary.get("deployments") or {}).items():
        for r in dep["replicas"]:
            rows.append(
                [
                    name,
                    r["replica"],
                    r["host"],
                    _gpus_text(r["gpus"]),
                    r["endpoint"] or (f":{r['port']}" if r.get("port") else None),
                    r["action"],
                    r["status"],
                    r["failure_class"],
                ]
            )
    for r in summary.get("removed") or []:
        rows.append(
            [
                r["deployment"],
                r["replica"],
                r["host"],
                _gpus_text(r["gpus"]),
                None,
                "remove",
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


def _metrics_parser() -> Callable[[str], Iterable[Any]]:
    """prometheus_client's text parser (a controller requirement), or an error that says what to install."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as e:
        raise GpufleetError(
            f"fleet_report kind=status needs prometheus-client on the controller (pip install prometheus-client): {e}"
        ) from e
    return text_string_to_metric_families


def parse_metrics(text: str | None) -> dict[str, float]:
    """Sums of the vLLM counters the status table shows, from Prometheus text: ``requests`` (finished requests),
    ``generation_tokens``, ``prompt_tokens``, ``running``, ``waiting``. Missing metrics are left out.

    Each sample line is read by prometheus_client's own parser (label values may hold ``}``, ``,`` and escaped
    quotes); a line it rejects (a scrape cut off mid-line) is skipped and the others still count."""
    wanted = {
        "vllm:request_success_total": "requests",
        "vllm:generation_tokens_total": "generation_tokens",
        "vllm:prompt_tokens_total": "prompt_tokens",
        "vllm:num_requests_running": "running",
        "vllm:num_requests_waiting": "waiting",
    }
    out: dict[str, float] = {}
    if not text:
        return out
    parse = _metrics_parser()
    for raw in text.splitlines():
        line = raw.strip()
        # Comments (HELP/TYPE) never change a sample's name in the text format: sample lines parse on their own.
        if not line or line.startswith("#") or not line.startswith(tuple(wanted)):
            continue
        try:
            samples = [s for family in parse(line + "\n") for s in family.samples]
        except ValueError:
            continue
        for sample in samples:
            key = wanted.get(sample.name)
            if key is not None and math.isfinite(sample.value):
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _uptime_text(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return None
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def metrics_texts(value: Any) -> dict[str, str | None]:
    """One host's ``/metrics`` texts by replica name: ``{name: text}`` as is, or the role's registered
    ``ansible.builtin.uri`` loop over vllm_deployment_info entries (``item.name`` -> ``content``; None when it was
    not scraped)."""
    if not isinstance(value, Mapping):
        return {}
    if "results" not in value:
        return dict(value)
    out: dict[str, str | None] = {}
    for r in _loop_results(value):
        item = r.get("item")
        if isinstance(item, Mapping) and item.get("name") is not None:
            out[str(item["name"])] = r.get("content")
    return out


def status_report(
    infos: Mapping[str, Any],
    metrics: Mapping[str, Mapping[str, str | None]] | None = None,
    *,
    unreachable: Iterable[str] = (),
    addresses: Mapping[str, str] | None = None,
    generated_at: float | None = None,
) -> dict[str, Any]:
    """Status of every managed deployment: ``infos`` = per host, vllm_deployment_info's ``deployments`` list (or its
    registered result); ``metrics`` = per host, per deployment name, the ``/metrics`` text (None when not scraped), or
    per host the registered scrape loop (``metrics_texts``).

    Rows carry host, name (replica key), deployment, model, GPUs, state, phase, health, uptime, endpoint,
    requests, generation tokens, tokens/s (generation tokens over the uptime: the average since start) and the last
    failure class; ``deployments`` groups them by deployment.
    """
    rows: list[dict[str, Any]] = []
    for host in sorted(infos or {}):
        info = infos[host]
        entries = info.get("deployments") if isinstance(info, Mapping) else info
        for d in entries or []:
            if not isinstance(d, Mapping):
                continue
            name = str(d.get("name"))
            m = parse_metrics(metrics_texts((metrics or {}).get(host)).get(name))
            uptime = d.get("uptime_s")
            tokens = m.get("generation_tokens")
            tps = None
            if tokens is not None and isinstance(uptime, (int, float)) and uptime > 0:
                tps = round(tokens / uptime, 2)
            deployment = re.sub(r"-\d+$", "", name)
            endpoint = d.get("endpoint")
            address = (addresses or {}).get(host)
            if endpoint and address:
                endpoint = re.sub(r"^(https?://)(0\.0\.0\.0|127\.0\.0\.1|localhost)(?=:)", rf"\g<1>{address}", endpoint)
                if endpoint != d.get("endpoint") and str(d.get("host") or "") in ("127.0.0.1", "localhost", "::1"):
                    endpoint = d.get("endpoint")
            rows.append(
                {
                    "host": host,
                    "name": name,
                    "deployment": deployment,
                    "container": d.get("container_name") or f"gpufleet-{name}",
                    "model": d.get("model"),
                    "gpus": list(d.get("gpus") or []),
                    "state": d.get("state"),
                    "phase": d.get("phase"),
                    "health": d.get("health"),
                    "uptime_s": uptime,
                    "uptime": _uptime_text(uptime),
                    "endpoint": endpoint,
                    "vllm_version": d.get("vllm_version"),
                    "restart_count": d.get("restart_count"),
                    "requests": int(m["requests"]) if "requests" in m else None,
                    "generation_tokens": int(tokens) if tokens is not None else None,
                    "tokens_per_s": tps,
                    "running": int(m["running"]) if "running" in m else None,
                    "last_failure": d.get("last_failure_class"),
                    "serve_until": d.get("serve_until"),
                }
            )
    rows.sort(key=lambda r: (r["deployment"], r["name"], r["host"]))
    deployments: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        deployments.setdefault(r["deployment"], []).append(r)
    return {
        "version": STATUS_VERSION,
        "kind": "status",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(generated_at)),
        "deployments": deployments,
        "rows": rows,
        "unreachable_hosts": sorted(str(h) for h in unreachable),
    }


def _short_model(model: Any) -> str | None:
    """A model path shows as its last component in the table (the JSON keeps the whole path)."""
    if not model:
        return None
    text = str(model)
    return text.rstrip("/").rsplit("/", 1)[-1] if text.startswith("/") else text


def status_table(report: Mapping[str, Any]) -> list[str]:
    rows = [
        [
            r["deployment"],
            r["host"],
            r["name"],
            _short_model(r["model"]),
            _gpus_text(r["gpus"]),
            r["state"],
            r["phase"],
            r["uptime"],
            r["endpoint"],
            r["requests"],
            r["tokens_per_s"],
            r["last_failure"],
        ]
        for r in report.get("rows") or []
    ]
    out = render_table(
        [
            "DEPLOYMENT",
            "HOST",
            "NAME",
            "MODEL",
            "GPUS",
            "STATE",
            "PHASE",
            "UPTIME",
            "ENDPOINT",
            "REQUESTS",
            "TOK/S",
            "LAST FAILURE",
        ],
        rows,
    )
    if not rows:
        out.append("(no managed deployments)")
    if report.get("unreachable_hosts"):
        out.append("unreachable hosts (not shown): " + ", ".join(report["unreachable_hosts"]))
    return out


def manifest_params(manifest: Any) -> dict[str, Any]:
    """vllm_container parameters that redeploy a manifest (``name``, ``model``, ``image``, engine options, GPUs,
    port, LoRA, ...), after the manifest's own check. Env values and secrets are not in a manifest: give them again."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container.manifest import check, params_from_manifest

    check(manifest)
    return params_from_manifest(dict(manifest))


def deployment_of(replica_name: str) -> str:
    """The declared deployment of a replica container's name (``chat-0`` → ``chat``; the role names replicas
    ``<deployment>-<index>``); a name without an index is its own deployment."""
    return re.sub(r"-[0-9]+$", "", replica_name)


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON atomically (the directory is created)."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def run_report(params: Mapping[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """What the ``fleet_report`` module (and its action plugin) returns for validated ``params``."""
    out: dict[str, Any] = {"changed": False}
    data: Any = None
    if params["kind"] == "converge":
        summary = converge_summary(
            params.get("plan") or {},
            params.get("results") or {},
            unreachable=params.get("unreachable") or [],
            plan_errors=params.get("plan_errors") or [],
            check_mode=bool(params.get("run_check_mode")),
        )
        counts = summary["counts"]
        out.update(
            summary=summary,
            table=converge_table(summary),
            ok=summary["ok"],
            failed_count=counts["failed"] + counts["unschedulable"],
            failed_hosts=summary["failed_hosts"],
        )
        data = summary
    elif params["kind"] == "status":
        report = status_report(
            params.get("infos") or {},
            params.get("metrics") or {},
            unreachable=params.get("unreachable") or [],
            addresses=params.get("addresses") or {},
        )
        out.update(report=report, table=status_table(report))
        data = report
    else:
        manifest, path = params.get("manifest"), params.get("manifest_path")
        if (manifest is None) == (path is None):
            raise GpufleetError("kind=manifest needs exactly one of manifest and manifest_path")
        if manifest is None:
            try:
                with open(os.path.expanduser(str(path)), encoding="utf-8") as fh:
                    manifest = json.load(fh)
            except (OSError, ValueError) as err:
                raise GpufleetError(f"manifest_path {path}: cannot read it as JSON ({err})") from err
        out["params"] = manifest_params(manifest)
        out["manifest"] = manifest
        out["deployment"] = deployment_of(str(manifest["name"]))
    if params.get("dest") and data is not None and not check_mode:
        write_json(os.path.expanduser(str(params["dest"])), data)
        out["dest"] = params["dest"]
    return out
