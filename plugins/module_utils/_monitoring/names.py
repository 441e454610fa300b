# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The names the monitoring pieces share: scrape jobs, target labels, the metrics the rules and the dashboard read,
and Prometheus durations.

The package's layout (docs/monitoring.md): ``targets`` (file_sd entries per scrape job), ``config`` (scrape configs,
prometheus.yml as data), ``rules`` (alert rules as data), ``dashboard`` (the Grafana dashboard), ``plan`` (every file
the ``monitoring_config`` module manages, from its parameters), ``files`` (reading and writing them on the monitoring
host, promtool) and ``run`` (the module's run, with the reload). Configurations and rules are data here; their YAML
text is rendered on the controller, by the module's action plugin (PyYAML is a controller dependency only).
"""

from __future__ import annotations

import re
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

PROBE_LABEL = "gpufleet_probe"
TARGET_LABELS = ("deployment", "replica", "host", "model", "gpus")
DEFAULT_JOB = "vllm"
AGENT_JOB = "gpufleet-agent"
# The Ray nodes of multi-host replicas (docs/ray.md): Ray's own metrics, on each node's metrics export port.
RAY_JOB = "gpufleet-ray"
RAY_TARGET_LABELS = ("deployment", "replica", "host", "ray_role", "gpus")

# Metrics of the node agent's exporter (plugins/module_utils/_agent/agent.py, role gpufleet.vllm.node_agent, port
# gpufleet_agent_port) the rules use; overridable per option. Label ``deployment`` (the replica key, e.g. chat-1).
AGENT_METRICS = {
    # counter: restarts of a deployment's container done by the agent
    "restarts": "gpufleet_agent_restarts_total",
    # gauge: seconds until the gpufleet.serve-until label (negative once past; absent without expiry)
    "serve_until": "gpufleet_agent_serve_until_seconds",
    # gauge: 1 once the agent stopped a deployment for good (labels reason, failure_class; issue #17)
    "failed": "gpufleet_agent_deployment_failed",
}

# vLLM metrics used by the rules and the dashboard (V1 engine names; checked against vLLM 0.10.2's
# vllm/v1/metrics/loggers.py and the stand-in). KV cache usage is vllm:kv_cache_usage_perc from 0.10, and
# vllm:gpu_cache_usage_perc before (0.10.x exports both; 0.11 dropped the old name): expressions take either.
KV_CACHE = "(vllm:kv_cache_usage_perc{sel} or vllm:gpu_cache_usage_perc{sel})"

_DURATION = re.compile(r"^(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?$")
_DURATION_UNITS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}


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
