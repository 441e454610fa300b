# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Grafana dashboard of the fleet's vLLM servers (JSON model, as data), and the PromQL it uses."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.names import KV_CACHE, PROBE_LABEL

DASHBOARD_UID = "gpufleet-vllm"
_SEL = '{deployment=~"$deployment"}'


def _panel(pid: int, title: str, exprs: list[tuple[str, str]], unit: str, x: int, y: int, **extra: Any) -> dict:
    panel = {
        "id": pid,
        "type": extra.pop("type", "timeseries"),
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(exprs)
        ],
    }
    panel.update(extra)
    return panel


def _quantiles(metric: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le, deployment) (rate({metric}_bucket{_SEL}[$__rate_interval])))",
            "{{deployment}} p" + str(int(q * 100)),
        )
        for q in (0.5, 0.95)
    ]


def dashboard(title: str = "gpufleet / vLLM", uid: str = DASHBOARD_UID) -> dict[str, Any]:
    """A Grafana dashboard (JSON model) of the fleet's vLLM servers, per deployment (template variable)."""
    kv = KV_CACHE.format(sel=_SEL)
    panels = [
        _panel(
            1,
            "Servers up (/metrics) and healthy (/health)",
            [
                (f'sum by (deployment) (up{{{PROBE_LABEL}="metrics",deployment=~"$deployment"}})', "{{deployment}} up"),
                (
                    f'sum by (deployment) (up{{{PROBE_LABEL}="health",deployment=~"$deployment"}})',
                    "{{deployment}} healthy",
                ),
            ],
            "short",
            0,
            0,
        ),
        _panel(
            2,
            "Throughput (tokens/s)",
            [
                (
                    f"sum by (deployment) (rate(vllm:generation_tokens_total{_SEL}[$__rate_interval]))",
                    "{{deployment}} generation",
                ),
                (
                    f"sum by (deployment) (rate(vllm:prompt_tokens_total{_SEL}[$__rate_interval]))",
                    "{{deployment}} prompt",
                ),
            ],
            "tokens/s",
            12,
            0,
        ),
        _panel(
            3,
            "Finished requests (req/s)",
            [
                (
                    f"sum by (deployment, finished_reason) (rate(vllm:request_success_total{_SEL}[$__rate_interval]))",
                    "{{deployment}} {{finished_reason}}",
                )
            ],
            "reqps",
            0,
            8,
        ),
        _panel(4, "Time to first token", _quantiles("vllm:time_to_first_token_seconds"), "s", 12, 8),
        _panel(5, "End-to-end request latency", _quantiles("vllm:e2e_request_latency_seconds"), "s", 0, 16),
        _panel(
            6,
            "Running and waiting requests",
            [
                (f"sum by (deployment) (vllm:num_requests_running{_SEL})", "{{deployment}} running"),
                (f"sum by (deployment) (vllm:num_requests_waiting{_SEL})", "{{deployment}} waiting"),
            ],
            "short",
            12,
            16,
        ),
        _panel(
            7,
            "KV cache usage",
            [(f"max by (deployment, replica) ({kv})", "{{deployment}}/{{replica}}")],
            "percentunit",
            0,
            24,
        ),
    ]
    return {
        "uid": uid,
        "title": title,
        "tags": ["gpufleet", "vllm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "deployment",
                    "label": "Deployment",
                    "type": "query",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {"query": f'label_values(up{{{PROBE_LABEL}="metrics"}}, deployment)', "refId": "vars"},
                    "definition": f'label_values(up{{{PROBE_LABEL}="metrics"}}, deployment)',
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "sort": 1,
                },
            ]
        },
        "panels": panels,
    }


def dashboard_exprs(board: Mapping[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard's panels."""
    return [t["expr"] for p in board.get("panels", []) for t in p.get("targets", []) if t.get("expr")]


_METRIC = re.compile(r"(?<![\w:$\"'])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=[{\[])")
_SUFFIXES = ("_bucket", "_total", "_count", "_sum")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (``name{...}`` or ``name[...]``), histogram/counter suffixes kept."""
    return {m for m in _METRIC.findall(expr) if m not in ("by", "on", "without", "ignoring")}


def base_metric(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
