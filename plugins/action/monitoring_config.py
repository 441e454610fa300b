# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin gpufleet.vllm.monitoring_config: fills ``infos`` and ``addresses`` from the host vars of
``from_hosts`` (what a play would otherwise gather in Jinja), then runs the module on the task's host (the monitoring
host), and renders the YAML files there (rules, Prometheus configuration) here on the controller, where PyYAML is:
the module answers a render request with their documents, and runs again with their text
(plugins/module_utils/_monitoring/run.py). Documentation: plugins/modules/monitoring_config.py."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import yaml
from ansible.plugins.action import ActionBase
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.run import RENDER_REQUEST


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


def _plain(data: Any) -> Any:
    """``data`` as plain built-in types (Ansible may hand over str / dict / list subclasses, which PyYAML's safe
    dumper refuses)."""
    if isinstance(data, Mapping):
        return {_plain(k): _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    if data is None:
        return None
    if isinstance(data, bool):
        return bool(data)
    if isinstance(data, int):
        return int(data)
    if isinstance(data, float):
        return float(data)
    if isinstance(data, str):
        return str(data)
    return data


def to_yaml(data: Any) -> str:
    """Block YAML of plain data: mappings keep their order, long lines are not folded."""
    return yaml.safe_dump(
        _plain(data), sort_keys=False, default_flow_style=False, allow_unicode=True, width=float("inf")
    )


def render_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The ``rendered`` argument answering the module's render request: the digest back, and the YAML texts."""
    documents = request.get("documents") or {}
    return {"digest": request.get("digest"), "texts": {path: to_yaml(doc) for path, doc in documents.items()}}


def run_in_two_steps(execute: Callable[[dict[str, Any]], dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
    """``execute(args)`` (a run of the module), and once more with the YAML rendered when it asks for it."""
    result = execute(args)
    request = result.pop(RENDER_REQUEST, None)
    if request is None or result.get("failed"):
        return result
    result = execute({**args, "rendered": render_request(request)})
    result.pop(RENDER_REQUEST, None)
    return result


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        if "rendered" in self._task.args:
            result.update(failed=True, msg="rendered is set by the action plugin of monitoring_config, not a task")
            return result
        args = from_host_vars(dict(self._task.args), (task_vars or {}).get("hostvars"))

        def execute(module_args: dict[str, Any]) -> dict[str, Any]:
            return self._execute_module(
                module_name="gpufleet.vllm.monitoring_config", module_args=module_args, task_vars=task_vars
            )

        result.update(run_in_two_steps(execute, args))
        return result
