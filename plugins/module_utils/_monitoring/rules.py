# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus alert rules of the fleet, as data: one group of alerts on the vLLM servers (and, with the node agent,
on the agent's exporter), every knob overridable per alert."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.names import (
    AGENT_JOB,
    AGENT_METRICS,
    KV_CACHE,
    PROBE_LABEL,
    duration_seconds,
)

# Alerts: the defaults of every knob. ``alerts`` overrides (per alert name) may set enabled, for, severity and the
# alert's own keys (threshold, window, quantile).
DEFAULT_ALERTS: dict[str, dict[str, Any]] = {
    "VllmServerDown": {"for": "2m", "severity": "critical"},
    "VllmHealthFailing": {"for": "2m", "severity": "critical"},
    "VllmRequestQueueGrowing": {"for": "5m", "severity": "warning", "threshold": 10, "window": "10m"},
    "VllmKvCacheHigh": {"for": "10m", "severity": "warning", "threshold": 0.9},
    "VllmTimeToFirstTokenHigh": {
        "for": "10m",
        "severity": "warning",
        "threshold": 2.0,
        "quantile": 0.95,
        "window": "5m",
    },
    "VllmServerRestarted": {"for": "0s", "severity": "warning", "window": "15m"},
    "GpufleetAgentDown": {"for": "5m", "severity": "warning"},
    "GpufleetDeploymentRestarts": {"for": "0s", "severity": "warning", "window": "15m"},
    "GpufleetServeForExpiring": {"for": "0s", "severity": "info", "threshold": "1h"},
    "GpufleetDeploymentFailed": {"for": "0s", "severity": "critical"},
}
AGENT_ALERTS = (
    "GpufleetAgentDown",
    "GpufleetDeploymentRestarts",
    "GpufleetServeForExpiring",
    "GpufleetDeploymentFailed",
)


def _alert_settings(overrides: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    settings = copy.deepcopy(DEFAULT_ALERTS)
    for name, over in (overrides or {}).items():
        if name not in settings:
            raise GpufleetError(f"alerts: unknown alert {name!r}; known: {', '.join(sorted(settings))}", alert=name)
        if not isinstance(over, Mapping):
            raise GpufleetError(f"alerts.{name}: must be a dict (enabled, for, severity, threshold, ...)")
        unknown = set(over) - set(settings[name]) - {"enabled"}
        if unknown:
            raise GpufleetError(
                f"alerts.{name}: unknown keys {sorted(unknown)}; it takes enabled and "
                f"{', '.join(sorted(settings[name]))}"
            )
        settings[name].update(over)
    for name, s in settings.items():
        duration_seconds(s["for"], f"alerts.{name}.for")
        if "window" in s:
            duration_seconds(s["window"], f"alerts.{name}.window")
        if name == "GpufleetServeForExpiring":
            duration_seconds(s["threshold"], f"alerts.{name}.threshold")
        elif "threshold" in s and (isinstance(s["threshold"], bool) or not isinstance(s["threshold"], (int, float))):
            raise GpufleetError(f"alerts.{name}.threshold: {s['threshold']!r} must be a number")
        if "quantile" in s and not (isinstance(s["quantile"], (int, float)) and 0 < s["quantile"] < 1):
            raise GpufleetError(f"alerts.{name}.quantile: {s['quantile']!r} must be between 0 and 1")
    return settings


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def alert_rules(
    overrides: Mapping[str, Any] | None = None,
    *,
    agent: bool = False,
    agent_metrics: Mapping[str, str] | None = None,
    group_name: str = "gpufleet-vllm",
    interval: str | None = None,
) -> dict[str, Any]:
    """The rules file (as data): one group of alerts on the vLLM servers (and, with ``agent``, on the node agent).

    ``overrides``: per alert name, any of enabled / for / severity / threshold / window / quantile.
    """
    s = _alert_settings(overrides)
    metrics = {**AGENT_METRICS, **dict(agent_metrics or {})}
    by = "deployment, replica, host, instance"
    up_m, up_h = f'up{{{PROBE_LABEL}="metrics"}}', f'up{{{PROBE_LABEL}="health"}}'
    kv = KV_CACHE.format(sel="")
    rules: list[tuple[str, str, str, str]] = [
        (
            "VllmServerDown",
            f"{up_m} == 0",
            "vLLM server {{ $labels.deployment }}/{{ $labels.replica }} on {{ $labels.host }} is down",
            "Prometheus cannot scrape {{ $labels.instance }}/metrics: the server is stopped, crashed or unreachable.",
        ),
        (
            "VllmHealthFailing",
            f"({up_h} == 0) unless on (instance) ({up_m} == 0)",
            "vLLM server {{ $labels.deployment }}/{{ $labels.replica }} on {{ $labels.host }} fails /health",
            "{{ $labels.instance }} answers /metrics but not /health with 200: its engine is unhealthy.",
        ),
        (
            "VllmRequestQueueGrowing",
            f"max by ({by}) (vllm:num_requests_waiting) > {_num(s['VllmRequestQueueGrowing']['threshold'])} "
            f"and max by ({by}) (deriv(vllm:num_requests_waiting[{s['VllmRequestQueueGrowing']['window']}])) > 0",
            "Request queue of {{ $labels.deployment }}/{{ $labels.replica }} keeps growing",
            "{{ $value }} requests wait on {{ $labels.instance }} and the queue grows: add replicas or capacity.",
        ),
        (
            "VllmKvCacheHigh",
            f"max by ({by}) ({kv}) > {_num(s['VllmKvCacheHigh']['threshold'])}",
            "KV cache of {{ $labels.deployment }}/{{ $labels.replica }} is nearly full",
            "KV cache usage on {{ $labels.instance }} is {{ $value | humanizePercentage }}: requests will queue "
            "or be preempted.",
        ),
        (
            "VllmTimeToFirstTokenHigh",
            f"histogram_quantile({_num(s['VllmTimeToFirstTokenHigh']['quantile'])}, sum by (le, deployment) "
            f"(rate(vllm:time_to_first_token_seconds_bucket[{s['VllmTimeToFirstTokenHigh']['window']}]))) "
            f"> {_num(s['VllmTimeToFirstTokenHigh']['threshold'])}",
            "Time to first token of {{ $labels.deployment }} is high",
            "The p" + _num(s["VllmTimeToFirstTokenHigh"]["quantile"] * 100) + " time to first token of "
            "{{ $labels.deployment }} is {{ $value | humanizeDuration }}.",
        ),
        (
            "VllmServerRestarted",
            f'changes(process_start_time_seconds{{{PROBE_LABEL}="metrics"}}[{s["VllmServerRestarted"]["window"]}]) > 0',
            "vLLM server {{ $labels.deployment }}/{{ $labels.replica }} on {{ $labels.host }} restarted",
            "The server process on {{ $labels.instance }} started {{ $value }} time(s) anew in the last "
            + str(s["VllmServerRestarted"]["window"])
            + ".",
        ),
    ]
    if agent:
        rules += [
            (
                "GpufleetAgentDown",
                f'up{{job="{AGENT_JOB}"}} == 0',
                "gpufleet node agent on {{ $labels.host }} is down",
                "Prometheus cannot scrape the node agent's exporter at {{ $labels.instance }}.",
            ),
            (
                "GpufleetDeploymentRestarts",
                f"increase({metrics['restarts']}[{s['GpufleetDeploymentRestarts']['window']}]) > 0",
                "gpufleet agent restarted {{ $labels.deployment }} on {{ $labels.host }}",
                "The node agent counted {{ $value }} restart(s) of {{ $labels.deployment }} in the last "
                + str(s["GpufleetDeploymentRestarts"]["window"])
                + ".",
            ),
            (
                "GpufleetServeForExpiring",
                f"({metrics['serve_until']} > 0) < "
                f"{_num(duration_seconds(s['GpufleetServeForExpiring']['threshold'], 'threshold'))}",
                "{{ $labels.deployment }} on {{ $labels.host }} stops serving soon (serve_for)",
                "{{ $labels.deployment }} reaches its serve-until time in {{ $value | humanizeDuration }}; extend "
                "serve_for and converge to keep it.",
            ),
            (
                "GpufleetDeploymentFailed",
                f"{metrics['failed']} == 1",
                "{{ $labels.deployment }} on {{ $labels.host }} was stopped for good ({{ $labels.reason }})",
                "The node agent stopped {{ $labels.deployment }} after its failures ({{ $labels.reason }}, "
                "{{ $labels.failure_class }}); the converge reports it failed until its configuration changes or "
                "gpufleet_reset_failed=true.",
            ),
        ]
    out_rules = []
    for name, expr, summary, description in rules:
        cfg = s[name]
        if cfg.get("enabled") is False:
            continue
        rule: dict[str, Any] = {"alert": name, "expr": expr}
        if duration_seconds(cfg["for"], name) > 0:
            rule["for"] = str(cfg["for"])
        rule["labels"] = {"severity": str(cfg["severity"])}
        rule["annotations"] = {"summary": summary, "description": description}
        out_rules.append(rule)
    group: dict[str, Any] = {"name": group_name}
    if interval:
        duration_seconds(interval, "rules interval")
        group["interval"] = interval
    group["rules"] = out_rules
    return {"groups": [group]}
