# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every file the ``monitoring_config`` module manages, from its validated parameters: target files (JSON), the
credentials file, the rules and the Prometheus configuration (YAML documents, rendered on the controller) and the
dashboard (JSON). No secret value enters anything but the credentials file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.config import (
    prometheus_config,
    scrape_configs,
    targets_file,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.dashboard import DASHBOARD_UID, dashboard
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.files import OutFile, read_target_files
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.names import (
    AGENT_JOB,
    DEFAULT_JOB,
    RAY_JOB,
    duration_seconds,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.rules import alert_rules
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.targets import (
    Job,
    Kept,
    agent_targets,
    keep_targets,
    ray_targets,
    vllm_targets,
)

# The first line of every YAML file the module writes.
HEADER = "# Managed by gpufleet.vllm.monitoring_config; edits are overwritten.\n"


@dataclass
class Plan:
    """What ``render`` computed: the files, and what the module returns about them (no secret values)."""

    files: list[OutFile]
    targets: dict[str, list[dict[str, Any]]]
    skipped: list[dict[str, Any]]
    kept: list[Kept]
    scrape_configs: list[dict[str, Any]]
    rules: dict[str, Any] | None = None
    dashboard: dict[str, Any] | None = None
    documents: dict[str, Any] = field(default_factory=dict)  # path -> data, of the YAML files

    def alerts(self) -> list[str]:
        """Names of the alert rules written."""
        groups = (self.rules or {"groups": []})["groups"]
        return [r["alert"] for g in groups for r in g["rules"]]


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


PATH_PARAMS = ("targets_dir", "rules_path", "config_path", "dashboards_dir", "credentials_file")
DURATION_PARAMS = ("scrape_interval", "evaluation_interval", "job_scrape_interval", "scrape_timeout", "rules_interval")


def check_params(params: Mapping[str, Any]) -> None:
    """Values the argument spec's types let through, all checked before any file is planned or written: one error
    listing every problem (issue #16)."""
    problems = []
    for name in PATH_PARAMS:
        value = params.get(name)
        if value and not str(value).startswith("/"):
            problems.append(f"{name}: {value!r} is not an absolute path; give a path starting with /")
    for name, value in (params.get("credentials_files") or {}).items():
        if not str(value).startswith("/"):
            problems.append(f"credentials_files.{name}: {value!r} is not an absolute path; give a path starting with /")
    for name in DURATION_PARAMS:
        if params.get(name):
            try:
                duration_seconds(params[name], name)
            except GpufleetError as err:
                problems.append(str(err))
    port = params.get("node_agent_port")
    if port is not None and not 1 <= port <= 65535:
        problems.append(f"node_agent_port: {port!r} must be in [1, 65535]; the node agent's exporter port, e.g. 9840")
    timeout = params.get("reload_timeout")
    if timeout is not None and timeout < 1:
        problems.append(f"reload_timeout: {timeout!r} must be >= 1; seconds Prometheus' /-/reload may take")
    if problems:
        raise GpufleetError("monitoring_config: " + "; ".join(problems), problems=problems)


def render(params: Mapping[str, Any]) -> Plan:
    """Everything the ``monitoring_config`` module writes, from its validated ``params`` (on the monitoring host:
    the entries of hosts without an answer are read from the current target files)."""
    check_params(params)
    targets_dir = str(params["targets_dir"])
    job_name = params.get("job_name") or DEFAULT_JOB
    infos = params.get("infos") or {}
    result = vllm_targets(
        infos,
        params.get("addresses") or {},
        job_name=job_name,
        credentials_file=params.get("credentials_file"),
        credentials_files=params.get("credentials_files") or {},
    )
    missing = sorted(set(params.get("from_hosts") or []) - set(infos))
    kept: list[Kept] = []
    if missing and params.get("keep_unreachable", True):
        kept = keep_targets(
            result.jobs,
            read_target_files(targets_dir, job_name),
            job_name,
            missing,
            credentials_file=params.get("credentials_file"),
            credentials_files=params.get("credentials_files") or {},
        )
    # The Ray nodes of multi-host replicas (docs/ray.md), with ray_metrics (their images need ray[default]: a minimal
    # Ray, as in the vLLM images, serves no metrics): a job of their own, there while any is (or was: an unreachable
    # host keeps its entries as above).
    ray_wanted = bool(params.get("ray_metrics"))
    ray = {RAY_JOB: Job(targets=ray_targets(infos, params.get("addresses") or {}) if ray_wanted else [])}
    if ray_wanted and missing and params.get("keep_unreachable", True):
        kept += keep_targets(ray, read_target_files(targets_dir, RAY_JOB), RAY_JOB, missing)
    ray_entries = ray[RAY_JOB].targets
    agent_port = params.get("node_agent_port")
    agent = agent_port is not None
    files: list[OutFile] = []
    if params.get("api_key"):
        if not params.get("credentials_file"):
            raise GpufleetError("api_key is written to credentials_file: set credentials_file as well")
        # First, so that the full promtool check of the config finds it.
        files.append(OutFile(str(params["credentials_file"]), "credentials", "0640", content=params["api_key"]))
    targets = {job: result.jobs[job].targets for job in sorted(result.jobs)}
    for job, entries in targets.items():
        files.append(OutFile(targets_file(targets_dir, job), "targets", "0644", content=to_json(entries)))
    if ray_entries:
        files.append(OutFile(targets_file(targets_dir, RAY_JOB), "targets", "0644", content=to_json(ray_entries)))
        targets[RAY_JOB] = ray_entries
    if agent:
        hosts = list(params.get("agent_hosts") or []) or sorted(set(infos) | set(params.get("from_hosts") or []))
        entries = agent_targets(hosts, params.get("addresses") or {}, int(agent_port))
        files.append(OutFile(targets_file(targets_dir, AGENT_JOB), "targets", "0644", content=to_json(entries)))
        targets[AGENT_JOB] = entries
    configs = scrape_configs(
        result.jobs,
        targets_dir,
        agent=agent,
        scrape_interval=params.get("job_scrape_interval"),
        scrape_timeout=params.get("scrape_timeout"),
        health=params.get("health_probe", True),
        ray=bool(ray_entries),
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
        files.append(OutFile(str(rules_path), "rules", "0644", document=rules))
    config_path, mode = params.get("config_path"), params.get("config_mode") or "full"
    if config_path:
        if mode == "full":
            data: dict[str, Any] = prometheus_config(
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
        files.append(OutFile(str(config_path), f"config_{mode}", "0644", document=data))
    board = None
    if params.get("dashboards_dir"):
        board = dashboard()
        path = f"{str(params['dashboards_dir']).rstrip('/')}/{DASHBOARD_UID}.json"
        files.append(OutFile(path, "dashboard", "0644", content=to_json(board)))
    return Plan(
        files=files,
        targets=targets,
        skipped=result.skipped,
        kept=kept,
        scrape_configs=configs,
        rules=rules,
        dashboard=board,
        documents={f.path: f.document for f in files if f.document is not None},
    )
