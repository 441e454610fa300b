# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin gpufleet.vllm.fleet_report: builds the report on the controller itself (no module round trip:
the summary runs after every rollout batch). Documentation and the same code as a module: plugins/modules/fleet_report.py.
The plugin also fills in, from the host vars of ``from_hosts``, what a play would otherwise gather in Jinja."""

from __future__ import annotations

from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.report import run_report
from ansible_collections.gpufleet.vllm.plugins.modules.fleet_report import ARGUMENT_SPEC
from ansible_collections.gpufleet.vllm.plugins.plugin_utils.controller_action import ControllerAction

# kind -> (option, host vars) read for each host of from_hosts: the first of the host vars that is set. The role
# gpufleet.vllm.deployments registers the deployments_* names; the gpufleet_* names are what playbooks written
# before the role's variables took its prefix register (still read).
HOST_VARS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "converge": (
        ("results", ("deployments_host_results", "gpufleet_host_results")),
        ("ray_nodes", ("deployments_ray_nodes",)),  # the Ray step (tasks/ray.yml), multi-host replicas only
        ("ray_ready", ("deployments_ray_ready",)),
    ),
    "status": (
        ("infos", ("deployments_status_info", "gpufleet_status_info")),
        ("metrics", ("deployments_status_scraped", "gpufleet_status_scraped")),
        ("addresses", ("ansible_host",)),
    ),
    "usage": (("usage", ("deployments_usage_samples",)),),
}


def from_host_vars(params: dict[str, Any], hostvars: Any) -> dict[str, Any]:
    """``params`` with the per-host options of its kind completed from ``hostvars`` of ``from_hosts``."""
    out = dict(params)
    for option, names in HOST_VARS.get(params["kind"], ()):
        values = dict(out.get(option) or {})
        for host in params.get("from_hosts") or []:
            if host not in values:
                hv = (hostvars.get(host) or {}) if hostvars is not None else {}
                values[host] = next((hv.get(n) for n in names if hv.get(n) is not None), None)
        out[option] = values
    return out


class ActionModule(ControllerAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def act(self, params: dict[str, Any], task_vars: dict[str, Any], result: dict[str, Any]) -> None:
        params = from_host_vars(params, task_vars.get("hostvars"))
        result.update(run_report(params, bool(self._task.check_mode)))
