# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus scrape configs and prometheus.yml, as data.

Per job of vLLM servers, two scrape configs read the same target file: ``<job>`` scrapes ``/metrics``,
``<job>-health`` scrapes ``/health`` (an empty 200 body parses as an empty exposition, so ``up`` of that job is the
health check; a 5xx makes it 0). The jobs set the ``gpufleet_probe`` label (``metrics`` / ``health``). The node
agent's exporter has a job of its own (``gpufleet-agent``), and so do the Ray nodes of multi-host replicas
(``gpufleet-ray``: Ray's metrics, without the probe label, so no vLLM alert selects them).

No scrape config carries vLLM's API key: vLLM's ``--api-key`` guards ``/v1`` only, so ``/metrics`` and ``/health``
answer without it, and a bearer token sent there over plain http would only expose the inference key (issue #16).
The ``<job>-auth`` jobs keep their names (dashboards and alert rules select by job) but send no authorization.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.names import (
    AGENT_JOB,
    PROBE_LABEL,
    RAY_JOB,
    duration_seconds,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.targets import Job


def targets_file(targets_dir: str, job: str) -> str:
    """The file_sd target file of ``job``."""
    return f"{targets_dir.rstrip('/')}/{job}.json"


def _job_config(
    name: str,
    path: str,
    probe: str | None,
    file: str,
    cred: str | None,
    scrape_interval: str | None,
    scrape_timeout: str | None,
) -> dict[str, Any]:
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


def scrape_configs(
    jobs: Mapping[str, Job],
    targets_dir: str,
    *,
    agent: bool = False,
    scrape_interval: str | None = None,
    scrape_timeout: str | None = None,
    health: bool = True,
    ray: bool = False,
) -> list[dict[str, Any]]:
    """The scrape configs of the vLLM jobs (``/metrics`` and ``/health``), with ``agent`` the node agent's, with
    ``ray`` the Ray nodes'."""
    out: list[dict[str, Any]] = []
    timing = (scrape_interval, scrape_timeout)
    for name in sorted(jobs):
        file = targets_file(targets_dir, name)
        out.append(_job_config(name, "/metrics", "metrics", file, None, *timing))
        if health:
            out.append(_job_config(f"{name}-health", "/health", "health", file, None, *timing))
    if agent:
        out.append(_job_config(AGENT_JOB, "/metrics", None, targets_file(targets_dir, AGENT_JOB), None, *timing))
    if ray:
        out.append(_job_config(RAY_JOB, "/metrics", None, targets_file(targets_dir, RAY_JOB), None, *timing))
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
