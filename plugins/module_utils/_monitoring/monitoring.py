# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Monitoring of a gpufleet: Prometheus scrape targets, scrape configs, alert rules and a Grafana dashboard.

Everything here is plain data built from what ``vllm_deployment_info`` returns per host; the ``monitoring_config``
module renders it to files (YAML / JSON) and writes them. Secrets never enter the rendered data: a server that needs
a bearer token is scraped by a job whose ``authorization.credentials_file`` names a file, never the token itself.

Layout (docs/monitoring.md):

- file_sd target files, one per scrape job: adding or removing a deployment changes only these files (Prometheus
  re-reads them by itself, no reload);
- per job of vLLM servers, two scrape configs reading the same target file: ``<job>`` scrapes ``/metrics``,
  ``<job>-health`` scrapes ``/health`` (an empty 200 body parses as an empty exposition, so ``up`` of that job is
  the health check; a 5xx makes it 0). The jobs set the ``gpufleet_probe`` label (``metrics`` / ``health``);
- an optional node-agent exporter target per host (job ``gpufleet-agent``);
- alert rules as data (``alert_rules``) and one dashboard (``dashboard``).
"""

from __future__ import annotations

import copy
import glob
import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import urllib.error
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.module_utils.urls import open_url
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_atomic

PROBE_LABEL = "gpufleet_probe"
TARGET_LABELS = ("deployment", "replica", "host", "model", "gpus")
DEFAULT_JOB = "vllm"
AGENT_JOB = "gpufleet-agent"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
WILDCARD = ("0.0.0.0", "::", "[::]", "")

# Metrics of the node agent's exporter (plugins/module_utils/_agent/agent.py, role gpufleet.vllm.node_agent, port
# gpufleet_agent_port) the rules use; overridable per option. Label ``deployment`` (the replica key, e.g. chat-1).
AGENT_METRICS = {
    # counter: restarts of a deployment's container done by the agent
    "restarts": "gpufleet_agent_restarts_total",
    # gauge: seconds until the gpufleet.serve-until label (negative once past; absent without expiry)
    "serve_until": "gpufleet_agent_serve_until_seconds",
}

# vLLM metrics used by the rules and the dashboard (V1 engine names; checked against vLLM 0.10.2's
# vllm/v1/metrics/loggers.py and the stand-in). KV cache usage is vllm:kv_cache_usage_perc from 0.10, and
# vllm:gpu_cache_usage_perc before (0.10.x exports both; 0.11 dropped the old name): expressions take either.
KV_CACHE = "(vllm:kv_cache_usage_perc{sel} or vllm:gpu_cache_usage_perc{sel})"

_DURATION = re.compile(r"^(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?$")
_DURATION_UNITS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
_JOB = re.compile(r"^[A-Za-z0-9_.-]+$")

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
}
AGENT_ALERTS = ("GpufleetAgentDown", "GpufleetDeploymentRestarts", "GpufleetServeForExpiring")


# --- small helpers -------------------------------------------------------------------------------------------------


def duration_seconds(value: Any, field: str) -> float:
    """Seconds of a Prometheus duration (``30s``, ``5m``, ``1h30m``, ``0s``); GpufleetError when malformed."""
    text = str(value).strip() if value is not None else ""
    if not text or not _DURATION.match(text):
        raise GpufleetError(
            f"{field}: {value!r} is not a Prometheus duration; use a number with a unit, e.g. 30s, 5m, 1h30m, 0s",
            field=field,
        )
    total = 0.0
    for num, unit in re.findall(r"(\d+)(ms|[ywdhms])", text):
        total += int(num) * _DURATION_UNITS[unit]
    return total


def split_name(name: str) -> tuple[str, str]:
    """(deployment, replica) of a vllm_container name: ``chat-1`` -> (chat, 1); ``llama`` -> (llama, 0)."""
    m = re.match(r"^(.*)-(\d+)$", name)
    if m and m.group(1):
        return m.group(1), m.group(2)
    return name, "0"


def _host_port(endpoint: str) -> tuple[str, int] | None:
    m = re.match(r"^https?://(\[[^\]]*\]|[^/:]*):(\d+)/?$", str(endpoint or "").strip())
    if not m:
        return None
    return m.group(1), int(m.group(2))


def scrape_address(endpoint: Any, address: str | None, port: Any = None) -> tuple[str | None, str | None]:
    """``(host:port, None)`` Prometheus scrapes for a server at ``endpoint`` on a host reached at ``address``, or
    ``(None, reason)`` when it cannot be scraped from elsewhere.

    A server bound to all interfaces is scraped at the host's address; one bound to loopback only is scraped at
    loopback when the host itself is the local machine (address loopback or unset), else it is skipped.
    """
    hp = _host_port(endpoint) if endpoint else None
    if hp is None:
        if port is None:
            return None, "no endpoint (not started, or not a managed server)"
        hp = ("0.0.0.0", int(port))
    bind, p = hp
    addr = (address or "").strip()
    if bind in WILDCARD:
        host = addr or "127.0.0.1"
    elif bind in LOOPBACK:
        if addr and addr not in LOOPBACK:
            return None, f"binds {bind} only: reachable from its own host only (set host: 0.0.0.0 and an api_key)"
        host = bind
    else:
        host = bind
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{p}", None


def _entries(info: Any) -> list[Mapping[str, Any]]:
    entries = info.get("deployments") if isinstance(info, Mapping) else info
    if info is not None and not isinstance(entries, list):
        raise GpufleetError(
            "infos: each host's value must be the registered result of gpufleet.vllm.vllm_deployment_info (or its "
            "deployments list)"
        )
    return [d for d in entries or [] if isinstance(d, Mapping)]


def _entry_key(entry: Mapping[str, Any]) -> tuple[str, ...]:
    labels = entry.get("labels") or {}
    return tuple(str(labels.get(k, "")) for k in ("deployment", "replica", "host")) + tuple(entry.get("targets") or [])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


# --- targets -------------------------------------------------------------------------------------------------------


def vllm_targets(
    infos: Mapping[str, Any],
    addresses: Mapping[str, Any] | None = None,
    *,
    job_name: str = DEFAULT_JOB,
    credentials_file: str | None = None,
    credentials_files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Scrape targets of every managed vLLM server in ``infos`` (per host, vllm_deployment_info's result).

    Returns ``{"jobs": {job: {"credentials_file": path | None, "targets": [file_sd entry, ...]}}, "skipped": [...]}``:
    servers without an API key go to ``job_name``; servers with one (the info's ``api_key`` flag, or a name in
    ``credentials_files``) to ``<job_name>-auth`` (``credentials_file``) or ``<job_name>-auth-<deployment>`` (their
    own file in ``credentials_files``, keyed by deployment or replica name). Each entry has one target and the
    labels deployment, replica, host, model, gpus.
    """
    if not _JOB.match(job_name or ""):
        raise GpufleetError(f"job_name: {job_name!r} must be letters, digits, '_', '.' or '-'")
    per_name = dict(credentials_files or {})
    jobs: dict[str, dict[str, Any]] = {job_name: {"credentials_file": None, "targets": []}}
    skipped: list[dict[str, Any]] = []
    for host in sorted(infos or {}):
        address = (addresses or {}).get(host)
        for d in _entries(infos[host]):
            name = str(d.get("name") or "")
            if not name:
                continue
            deployment, replica = split_name(name)
            target, reason = scrape_address(d.get("endpoint"), str(address) if address else None, d.get("port"))
            if target is None:
                skipped.append({"host": host, "name": name, "reason": reason})
                continue
            cred_file = per_name.get(name) or per_name.get(deployment)
            if cred_file:
                job = f"{job_name}-auth-{_slug(deployment)}"
            elif d.get("api_key"):
                if not credentials_file:
                    raise GpufleetError(
                        f"{host}/{name} requires an API key: set credentials_file (a file on the monitoring host "
                        "holding the bearer token) or credentials_files for it",
                        host=host,
                        deployment=name,
                    )
                job, cred_file = f"{job_name}-auth", credentials_file
            else:
                job = job_name
            slot = jobs.setdefault(job, {"credentials_file": cred_file, "targets": []})
            if slot["credentials_file"] != cred_file:
                raise GpufleetError(
                    f"{deployment}: its replicas name different credentials files; give one per deployment",
                    deployment=deployment,
                )
            gpus = d.get("gpus") or []
            labels = {
                "deployment": deployment,
                "replica": replica,
                "host": str(host),
                "model": str(d.get("model") or ""),
                "gpus": ",".join(str(g) for g in gpus) if isinstance(gpus, list) else str(gpus),
            }
            slot["targets"].append({"targets": [target], "labels": labels})
    for slot in jobs.values():
        slot["targets"].sort(key=_entry_key)
    return {"jobs": jobs, "skipped": skipped}


def agent_targets(hosts: Iterable[str], addresses: Mapping[str, Any] | None, port: int) -> list[dict[str, Any]]:
    """One file_sd entry per host for the node agent's exporter on ``port`` (label ``host``)."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise GpufleetError(f"node_agent_port: {port!r} is not a TCP port (1-65535)")
    out = []
    for host in sorted(set(hosts)):
        addr = str((addresses or {}).get(host) or host)
        if ":" in addr and not addr.startswith("["):
            addr = f"[{addr}]"
        out.append({"targets": [f"{addr}:{port}"], "labels": {"host": str(host)}})
    return out


# --- prometheus.yml ------------------------------------------------------------------------------------------------


def targets_file(targets_dir: str, job: str) -> str:
    return f"{targets_dir.rstrip('/')}/{job}.json"


def scrape_configs(
    jobs: Mapping[str, Mapping[str, Any]],
    targets_dir: str,
    *,
    agent: bool = False,
    scrape_interval: str | None = None,
    scrape_timeout: str | None = None,
    health: bool = True,
) -> list[dict[str, Any]]:
    """The scrape configs of the vLLM jobs (``/metrics`` and ``/health``) and, with ``agent``, the node agent's."""
    out: list[dict[str, Any]] = []

    def job(name: str, path: str, probe: str | None, file: str, cred: str | None) -> dict[str, Any]:
        cfg: dict[str, Any] = {"job_name": name}
        if scrape_interval:
            cfg["scrape_interval"] = scrape_interval
        if scrape_timeout:
            cfg["scrape_timeout"] = scrape_timeout
        cfg["metrics_path"] = path
        if cred:
            cfg["authorization"] = {"type": "Bearer", "credentials_file": cred}
        cfg["file_sd_configs"] = [{"files": [file]}]
        if probe:
            cfg["relabel_configs"] = [{"target_label": PROBE_LABEL, "replacement": probe}]
        return cfg

    for name in sorted(jobs):
        slot = jobs[name]
        file = targets_file(targets_dir, name)
        out.append(job(name, "/metrics", "metrics", file, slot.get("credentials_file")))
        if health:
            out.append(job(f"{name}-health", "/health", "health", file, slot.get("credentials_file")))
    if agent:
        out.append(job(AGENT_JOB, "/metrics", None, targets_file(targets_dir, AGENT_JOB), None))
    if scrape_interval:
        duration_seconds(scrape_interval, "job_scrape_interval")
    if scrape_timeout:
        duration_seconds(scrape_timeout, "scrape_timeout")
    return out


def prometheus_config(
    configs: list[dict[str, Any]],
    *,
    rule_files: list[str],
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    extra_scrape_configs: list[dict[str, Any]] | None = None,
    external_labels: Mapping[str, str] | None = None,
    alertmanagers: list[str] | None = None,
) -> dict[str, Any]:
    """A whole prometheus.yml (as data)."""
    duration_seconds(scrape_interval, "scrape_interval")
    duration_seconds(evaluation_interval, "evaluation_interval")
    glob: dict[str, Any] = {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval}
    if external_labels:
        glob["external_labels"] = {str(k): str(v) for k, v in sorted(external_labels.items())}
    cfg: dict[str, Any] = {"global": glob}
    if alertmanagers:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    cfg["rule_files"] = list(rule_files)
    names = [c["job_name"] for c in configs]
    extra = [dict(c) for c in extra_scrape_configs or []]
    for c in extra:
        if not isinstance(c.get("job_name"), str) or c["job_name"] in names:
            raise GpufleetError(
                f"extra_scrape_configs: job_name {c.get('job_name')!r} is missing or used twice; give each a unique "
                "job_name other than the generated ones"
            )
        names.append(c["job_name"])
    cfg["scrape_configs"] = list(configs) + extra
    return cfg


# --- alert rules ---------------------------------------------------------------------------------------------------


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


# --- Grafana dashboard ---------------------------------------------------------------------------------------------

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


# --- rendering -----------------------------------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text, ensure_ascii=False)


def to_yaml(data: Any, indent: int = 0) -> str:
    """Deterministic block YAML of plain data (dicts keep their order; strings quoted as JSON when needed)."""
    pad = " " * indent
    if isinstance(data, Mapping):
        if not data:
            return "{}\n" if indent == 0 else f"{pad}{{}}\n"
        lines = []
        for k, v in data.items():
            key = _scalar(str(k))
            if isinstance(v, (Mapping, list)) and v:
                lines.append(f"{pad}{key}:\n{to_yaml(v, indent + 2)}")
            else:
                empty = "{}" if isinstance(v, Mapping) else "[]" if isinstance(v, list) else _scalar(v)
                lines.append(f"{pad}{key}: {empty}\n")
        return "".join(lines)
    if isinstance(data, list):
        lines = []
        for item in data:
            if isinstance(item, (Mapping, list)) and item:
                inner = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {inner[indent + 2 :]}")
            else:
                empty = "{}" if isinstance(item, Mapping) else "[]" if isinstance(item, list) else _scalar(item)
                lines.append(f"{pad}- {empty}\n")
        return "".join(lines)
    return f"{pad}{_scalar(data)}\n"


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


HEADER = "# Managed by gpufleet.vllm.monitoring_config; edits are overwritten.\n"


def keep_targets(
    jobs: dict[str, dict[str, Any]], targets_dir: str, job_name: str, hosts: list[str], params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Carry the current target entries of ``hosts`` (hosts without an answer this run: unreachable) over into
    ``jobs``, so that their servers stay scraped (and alert) instead of vanishing. Returns what was kept."""
    kept: list[dict[str, Any]] = []
    wanted = set(hosts)
    for path in sorted(glob.glob(os.path.join(glob.escape(targets_dir), f"{glob.escape(job_name)}*.json"))):
        job = os.path.basename(path)[: -len(".json")]
        if job != job_name and not job.startswith(f"{job_name}-auth"):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                entries = json.load(fh)
        except (OSError, ValueError):
            continue
        for entry in entries if isinstance(entries, list) else []:
            labels = entry.get("labels") if isinstance(entry, dict) else None
            if not isinstance(labels, dict) or labels.get("host") not in wanted:
                continue
            if job not in jobs:
                deployment = str(labels.get("deployment"))
                cred = (params.get("credentials_files") or {}).get(deployment) or params.get("credentials_file")
                if job != job_name and not cred:
                    continue
                jobs[job] = {"credentials_file": cred if job != job_name else None, "targets": []}
            jobs[job]["targets"].append({"targets": list(entry.get("targets") or []), "labels": dict(labels)})
            kept.append({"host": labels["host"], "deployment": labels.get("deployment"), "job": job})
    for slot in jobs.values():
        slot["targets"].sort(key=_entry_key)
    return kept


def render(params: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the ``monitoring_config`` module writes, from its validated ``params``.

    Returns ``{"files": [{"path", "kind", "content", "mode"}], "targets": {...}, "skipped": [...],
    "rules": {...}, "dashboard": {...} | None}`` (no secret values).
    """
    targets_dir = str(params["targets_dir"])
    job_name = params.get("job_name") or DEFAULT_JOB
    result = vllm_targets(
        params.get("infos") or {},
        params.get("addresses") or {},
        job_name=job_name,
        credentials_file=params.get("credentials_file"),
        credentials_files=params.get("credentials_files") or {},
    )
    infos = params.get("infos") or {}
    missing = sorted(set(params.get("from_hosts") or []) - set(infos))
    kept: list[dict[str, Any]] = []
    if missing and params.get("keep_unreachable", True):
        kept = keep_targets(result["jobs"], targets_dir, job_name, missing, params)
    agent_port = params.get("node_agent_port")
    agent = agent_port is not None
    files: list[dict[str, Any]] = []
    if params.get("api_key"):
        if not params.get("credentials_file"):
            raise GpufleetError("api_key is written to credentials_file: set credentials_file as well")
        # First, so that the full promtool check of the config finds it.
        files.append(
            {"path": params["credentials_file"], "kind": "credentials", "content": params["api_key"], "mode": "0640"}
        )
    for job in sorted(result["jobs"]):
        files.append(
            {
                "path": targets_file(targets_dir, job),
                "kind": "targets",
                "content": to_json(result["jobs"][job]["targets"]),
                "mode": "0644",
            }
        )
    targets = {job: result["jobs"][job]["targets"] for job in sorted(result["jobs"])}
    if agent:
        hosts = list(params.get("agent_hosts") or []) or sorted(set(infos) | set(params.get("from_hosts") or []))
        entries = agent_targets(hosts, params.get("addresses") or {}, int(agent_port))
        files.append(
            {
                "path": targets_file(targets_dir, AGENT_JOB),
                "kind": "targets",
                "content": to_json(entries),
                "mode": "0644",
            }
        )
        targets[AGENT_JOB] = entries
    configs = scrape_configs(
        result["jobs"],
        targets_dir,
        agent=agent,
        scrape_interval=params.get("job_scrape_interval"),
        scrape_timeout=params.get("scrape_timeout"),
        health=params.get("health_probe", True),
    )
    rules = None
    rules_path = params.get("rules_path")
    if rules_path:
        rules = alert_rules(
            params.get("alerts") or {},
            agent=agent,
            agent_metrics=params.get("agent_metrics") or {},
            interval=params.get("rules_interval"),
        )
        files.append({"path": rules_path, "kind": "rules", "content": HEADER + to_yaml(rules), "mode": "0644"})
    config_path, mode = params.get("config_path"), params.get("config_mode") or "full"
    if config_path:
        if mode == "full":
            data: Any = prometheus_config(
                configs,
                rule_files=[rules_path] if rules_path else [],
                scrape_interval=params.get("scrape_interval") or "15s",
                evaluation_interval=params.get("evaluation_interval") or "15s",
                extra_scrape_configs=params.get("extra_scrape_configs") or [],
                external_labels=params.get("external_labels") or {},
                alertmanagers=params.get("alertmanagers") or [],
            )
        else:
            data = {"scrape_configs": configs}
        files.append({"path": config_path, "kind": f"config_{mode}", "content": HEADER + to_yaml(data), "mode": "0644"})
    board = None
    if params.get("dashboards_dir"):
        board = dashboard()
        path = f"{str(params['dashboards_dir']).rstrip('/')}/{DASHBOARD_UID}.json"
        files.append({"path": path, "kind": "dashboard", "content": to_json(board), "mode": "0644"})
    return {
        "files": files,
        "targets": targets,
        "skipped": result["skipped"],
        "kept": kept,
        "scrape_configs": configs,
        "rules": rules,
        "dashboard": board,
    }


# --- writing -------------------------------------------------------------------------------------------------------

SECRET_DIFF = "<credentials file: content not shown>\n"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise GpufleetError(f"{path}: cannot read it ({err})") from err


def _ids(owner: str | None, group: str | None) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(owner).pw_uid if owner else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError as err:
        raise GpufleetError(f"owner/group: {err.args[0]} does not exist on the monitoring host") from err
    return uid, gid


def _meta_changed(path: str, mode: int, uid: int, gid: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    return (st.st_mode & 0o7777) != mode or (uid >= 0 and st.st_uid != uid) or (gid >= 0 and st.st_gid != gid)


def _fix_meta(path: str, mode: int, uid: int, gid: int) -> None:
    os.chmod(path, mode)
    if uid >= 0 or gid >= 0:
        os.chown(path, uid, gid)


def promtool_check(promtool: str, what: str, kind: str, content: str, syntax_only: bool = False) -> None:
    """Run ``promtool check <what>`` on ``content`` (in a temporary file); GpufleetError with its output if bad."""
    suffix = ".yml"
    fd, tmp = tempfile.mkstemp(prefix=".gpufleet-check-", suffix=suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
        cmd = [promtool, "check", what] + (["--syntax-only"] if syntax_only else []) + [tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    finally:
        os.unlink(tmp)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).replace(tmp, f"<{kind}>").strip()
        raise GpufleetError(f"promtool check {what} refused the generated {kind}: {out}", promtool_output=out)


def find_promtool(path: str | None) -> str | None:
    if path:
        found = shutil.which(path)
        if not found:
            raise GpufleetError(f"promtool: {path} not found on the monitoring host")
        return found
    return shutil.which("promtool")


def apply_files(
    files: list[dict[str, Any]],
    *,
    check_mode: bool,
    validate: bool = True,
    promtool: str | None = None,
    owner: str | None = None,
    group: str | None = None,
    secret_files: Iterable[str] = (),
) -> dict[str, Any]:
    """Write ``files`` (render()'s list) where their content, mode or owner differ; validate the Prometheus config
    and rules with promtool (when found and ``validate``) before anything is replaced.

    Returns ``{"changed", "files": [{"path", "kind", "changed"}], "diff": [...], "reload_needed", "validated"}``.
    ``secret_files`` are paths whose content never shows in the diff.
    """
    uid, gid = _ids(owner, group)
    secret = set(secret_files)
    tool = find_promtool(promtool) if validate else None
    pending: list[tuple[dict[str, Any], bool, bool]] = []
    before: dict[str, str] = {}
    for f in files:
        current = _read(f["path"])
        before[f["path"]] = current or ""
        content_changed = current != f["content"]
        meta = _meta_changed(f["path"], int(f["mode"], 8), uid, gid) if not content_changed else False
        pending.append((f, content_changed, meta))
    validated: list[str] = []
    if tool:
        for f, content_changed, _meta in pending:
            if not content_changed:
                continue
            if f["kind"] == "rules":
                promtool_check(tool, "rules", "rules file", f["content"])
                validated.append(f["path"])
            elif f["kind"].startswith("config"):
                promtool_check(tool, "config", "prometheus config", f["content"], syntax_only=True)
                validated.append(f["path"])
    out_files, diff = [], []
    reload_needed = False
    for f, content_changed, meta in pending:
        changed = content_changed or meta
        if changed and not check_mode:
            if content_changed:
                write_atomic(f["path"], f["content"], int(f["mode"], 8), uid=uid, gid=gid)
            else:
                _fix_meta(f["path"], int(f["mode"], 8), uid, gid)
        if content_changed:
            hidden = f["path"] in secret
            diff.append(
                {
                    "before_header": f["path"],
                    "after_header": f["path"],
                    "before": SECRET_DIFF if hidden else before[f["path"]],
                    "after": SECRET_DIFF if hidden else f["content"],
                }
            )
        if content_changed and (f["kind"] == "rules" or f["kind"].startswith("config")):
            reload_needed = True
        out_files.append({"path": f["path"], "kind": f["kind"], "changed": changed})
    config = next((f for f, _c, _m in pending if f["kind"] == "config_full"), None)
    if tool and not check_mode and config is not None and reload_needed:
        proc = subprocess.run(
            [tool, "check", "config", config["path"]], capture_output=True, text=True, check=False, timeout=120
        )
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip()
            raise GpufleetError(
                f"promtool check config {config['path']} failed after writing (a referenced file is missing or "
                f"unreadable?): {out}",
                promtool_output=out,
            )
    return {
        "changed": any(f["changed"] for f in out_files),
        "files": out_files,
        "diff": diff,
        "reload_needed": reload_needed,
        "validated": validated,
        "promtool": tool,
    }


def reload_prometheus(url: str, timeout: float = 10.0) -> None:
    """POST ``url`` (Prometheus' ``/-/reload``); GpufleetError unless it answers 2xx."""
    try:
        with open_url(url, data=b"", method="POST", timeout=timeout) as resp:
            code = resp.status
            body = resp.read(2000).decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        code, body = err.code, err.read(2000).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as err:
        raise GpufleetError(f"reload_url {url}: Prometheus did not answer ({err}); is it running?") from err
    if not 200 <= code < 300:
        hint = " (start Prometheus with --web.enable-lifecycle)" if code in (403, 404, 405) else ""
        raise GpufleetError(f"reload_url {url}: HTTP {code}{hint}: {body.strip()[:300]}", status=code)


def run_config(params: Mapping[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """What the ``monitoring_config`` module returns for validated ``params`` (files written unless check mode)."""
    rendered = render(params)
    applied = apply_files(
        rendered["files"],
        check_mode=check_mode,
        validate=bool(params.get("validate", True)),
        promtool=params.get("promtool"),
        owner=params.get("owner"),
        group=params.get("group"),
        secret_files=[params["credentials_file"]] if params.get("api_key") else [],
    )
    reloaded = False
    if applied["reload_needed"] and params.get("reload_url") and not check_mode:
        reload_prometheus(str(params["reload_url"]), float(params.get("reload_timeout") or 10))
        reloaded = True
    rules = rendered["rules"] or {"groups": []}
    return {
        "kept": rendered["kept"],
        "changed": applied["changed"],
        "files": applied["files"],
        "diff": applied["diff"],
        "targets": rendered["targets"],
        "skipped": rendered["skipped"],
        "scrape_configs": rendered["scrape_configs"],
        "alerts": [r["alert"] for g in rules["groups"] for r in g["rules"]],
        "reload_needed": applied["reload_needed"],
        "reloaded": reloaded,
        "validated": applied["validated"],
        "promtool": applied["promtool"],
    }
