# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin gpufleet.vllm.monitoring_config: fills ``infos`` and ``addresses`` from the host vars of
``from_hosts`` (what a play would otherwise gather in Jinja), then runs the module on the task's host (the monitoring
host). Documentation: plugins/modules/monitoring_config.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.plugins.action import ActionBase


def from_host_vars(args: dict[str, Any], hostvars: Any) -> dict[str, Any]:
    """``args`` with ``infos`` / ``addresses`` completed for every host of ``from_hosts`` not given explicitly."""
    out = dict(args)
    hosts = list(out.get("from_hosts") or [])
    if not hosts or hostvars is None:
        return out
    var = out.get("info_var") or "gpufleet_monitoring_info"
    infos, addresses = dict(out.get("infos") or {}), dict(out.get("addresses") or {})
    for host in hosts:
        hv = hostvars.get(host) or {}
        if host not in infos:
            info = hv.get(var)
            # an unreachable, failed or skipped host registers a result without deployments: no answer this run
            if isinstance(info, Mapping) and isinstance(info.get("deployments"), list) and not info.get("failed"):
                infos[host] = info
            elif isinstance(info, list):
                infos[host] = info
        if host not in addresses:
            addresses[host] = hv.get("ansible_host") or host
    out["infos"], out["addresses"] = infos, addresses
    return out


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        args = from_host_vars(dict(self._task.args), (task_vars or {}).get("hostvars"))
        result.update(
            self._execute_module(module_name="gpufleet.vllm.monitoring_config", module_args=args, task_vars=task_vars)
        )
        return result
