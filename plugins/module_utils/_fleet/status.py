# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The status report of the fleet: every managed deployment with its state, phase, uptime and endpoint (from
``vllm_deployment_info``) and the numbers of vLLM's ``/metrics`` (read with prometheus_client's parser); the JSON and
the human table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.table import gpus_text, render_table
from ansible_collections.gpufleet.vllm.plugins.module_utils._utc import stamp
from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import metrics

STATUS_VERSION = 1
PULL_KEYS = ("image", "phase", "bytes_done", "bytes_total", "bytes_known", "layers_done", "layers_total", "age", "text")


def _loop_results(registered: Any) -> list[Mapping[str, Any]]:
    if not isinstance(registered, Mapping):
        return []
    return [r for r in registered.get("results") or [] if isinstance(r, Mapping)]


def parse_metrics(text: str | None) -> dict[str, float]:
    """Sums of the vLLM counters the status table shows, from Prometheus text: ``requests`` (finished requests),
    ``generation_tokens``, ``prompt_tokens``, ``running``, ``waiting``. Missing metrics are left out.

    Each sample line is read by prometheus_client's own parser (label values may hold ``}``, ``,`` and escaped
    quotes); a line it rejects (a scrape cut off mid-line) is skipped and the others still count: the one reader,
    ``_vllm/metrics.sums``."""
    keys = {
        metrics.REQUEST_SUCCESS: "requests",
        metrics.GENERATION_TOKENS: "generation_tokens",
        metrics.PROMPT_TOKENS: "prompt_tokens",
        metrics.RUNNING: "running",
        metrics.WAITING: "waiting",
    }
    return {keys[name]: value for name, value in metrics.sums(text, keys).items()}


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
    requests, generation tokens, tokens/s (generation tokens over the uptime: the average since start), the last
    failure class and ``gpu_issues`` (its GPUs that gpu_facts calls unhealthy, with why); ``deployments`` groups them
    by deployment; ``unhealthy_gpus`` lists every unhealthy GPU of the hosts whose info has ``gpus``.
    """
    rows: list[dict[str, Any]] = []
    unhealthy: list[dict[str, Any]] = []
    pulls: list[dict[str, Any]] = []
    for host in sorted(infos or {}):
        info = infos[host]
        entries = info.get("deployments") if isinstance(info, Mapping) else info
        for p in (info.get("pulls") if isinstance(info, Mapping) else None) or []:  # image pulls running there now
            if isinstance(p, Mapping):
                pulls.append({"host": host, **{k: p.get(k) for k in PULL_KEYS}})
        # gpu_facts' verdict per GPU (vllm_deployment_info gpus=true): unhealthy ones are listed, and on their rows.
        sick: dict[str, str] = {}
        for g in (info.get("gpus") if isinstance(info, Mapping) else None) or []:
            if isinstance(g, Mapping) and g.get("healthy") is False:
                issues = [str(i) for i in g.get("health_issues") or []] or ["unhealthy"]
                unhealthy.append({"host": host, "index": g.get("index"), "uuid": g.get("uuid"), "issues": issues})
                text = f"GPU {g.get('index')}: {', '.join(issues)}"
                sick[str(g.get("index"))] = sick[str(g.get("uuid"))] = text
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
                    "hosts": list(d.get("hosts") or [host]),  # a multi-host replica: every host, head first
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
                    "lifecycle": d.get("lifecycle"),
                    "paused_for_s": d.get("paused_for_s"),
                    "paused_reason": d.get("paused_reason"),
                    "pinned": d.get("pinned"),
                    "owner": d.get("owner"),
                    "gpu_issues": list(dict.fromkeys(sick[str(g)] for g in d.get("gpus") or [] if str(g) in sick)),
                }
            )
    rows.sort(key=lambda r: (r["deployment"], r["name"], r["host"]))
    deployments: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        deployments.setdefault(r["deployment"], []).append(r)
    return {
        "version": STATUS_VERSION,
        "kind": "status",
        "generated_at": stamp(generated_at),
        "deployments": deployments,
        "rows": rows,
        "unreachable_hosts": sorted(str(h) for h in unreachable),
        "unhealthy_gpus": unhealthy,
        "pulls": pulls,
    }


def _short_model(model: Any) -> str | None:
    """A model path shows as its last component in the table (the JSON keeps the whole path)."""
    if not model:
        return None
    text = str(model)
    return text.rstrip("/").rsplit("/", 1)[-1] if text.startswith("/") else text


def _phase_text(row: Mapping[str, Any]) -> Any:
    """The PHASE column: a paused replica says for how long and why (``paused 12m (idle)``)."""
    if row.get("state") == "paused" and row.get("paused_for_s") is not None:
        return f"paused {_uptime_text(row['paused_for_s'])} ({row.get('paused_reason') or 'manual'})"
    return row["phase"]


def status_table(report: Mapping[str, Any]) -> list[str]:
    rows = [
        [
            r["deployment"],
            r.get("owner"),
            "+".join(r.get("hosts") or [r["host"]]),
            r["name"],
            _short_model(r["model"]),
            gpus_text(r["gpus"]),
            r["state"],
            _phase_text(r),
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
            "OWNER",
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
    for p in report.get("pulls") or []:
        out.append(f"{p['host']}: {p.get('text')} ({p.get('image')}, updated {p.get('age')}s ago)")
    for g in report.get("unhealthy_gpus") or []:
        out.append(f"unhealthy GPU: {g['host']} GPU {g['index']} ({g.get('uuid')}): {', '.join(g['issues'])}")
    if report.get("unreachable_hosts"):
        out.append("unreachable hosts (not shown): " + ", ".join(report["unreachable_hosts"]))
    return out
