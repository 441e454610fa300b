# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter gpufleet.vllm.gateway_routers (code: plugins/module_utils/_gateway/config.py)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible.utils.display import Display
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.config import (
    admin_url,
    router_argv,
    routers,
    unused_ports,
)

DOCUMENTATION = r"""
name: gateway_routers
short_description: One vllm-router per deployment (port, metrics port, workers, arguments) from the fleet plan
version_added: 0.2.0
author:
  - gpufleet maintainers (@gpufleet)
description:
  - From the plan's assignments (C(gpufleet.vllm.fleet_plan) RV(gpufleet.vllm.fleet_plan#module:plan.assignments)),
    returns one router per declared deployment - C(deployment), C(port), C(metrics_port), C(workers) (the
    replicas' C(http://address:port), sorted), C(argv) (the router's arguments; never a secret) and C(admin_url)
    (where the gateway host itself reaches the router's worker API - C(http://127.0.0.1:<port + internal_offset>)
    with O(settings.admin_guard), the router's own address otherwise).
  - Ports - O(ports) when it names the deployment, else O(base_port) + the position of its name among O(names)
    sorted. The metrics port is the port + O(metrics_offset). See C(docs/gateway.md).
  - An entry of O(ports) for a deployment not in O(names) gets no router and is no error (a pinned port outlives its
    deployment); when O(known) is given, entries whose name is not in O(known) either give a warning (a typo, or a
    deployment removed from the inventory whose port entry can go).
options:
  _input:
    description: The plan's assignments.
    type: list
    elements: dict
    required: true
  names:
    description: The declared deployment names (those with C(state=absent) left out).
    type: list
    elements: str
    required: true
  known:
    description:
      - Every deployment name of the inventory, those with C(state=absent) included. O(ports) entries for other names
        give a warning.
      - Not given - no warning.
    type: list
    elements: str
  addresses:
    description: Inventory host to the address the gateway reaches its replicas at.
    type: dict
    required: true
  bind:
    description: The address the routers listen on.
    type: str
    required: true
  ports:
    description: Deployment name to its gateway port.
    type: dict
    default: {}
  base_port:
    description: First port of the automatic ports.
    type: int
    default: 30000
  metrics_offset:
    description: Prometheus port = router port + this.
    type: int
    default: 1000
  settings:
    description: Router settings (policy, health check, retries, timeouts; see the role's defaults).
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: The routers of this gateway
  ansible.builtin.set_fact:
    routers: >-
      {{ plan.assignments | gpufleet.vllm.gateway_routers(names=['chat'], addresses={'gpu-a': '10.0.0.11'},
         bind='10.0.0.5') }}
"""

RETURN = r"""
_value:
  description: One dict per deployment - deployment, port, metrics_port, workers, argv, admin_url.
  type: list
  elements: dict
"""


def gateway_routers(
    assignments: list[dict[str, Any]],
    names: list[str],
    addresses: dict[str, str],
    bind: str,
    ports: dict[str, int] | None = None,
    base_port: int = 30000,
    metrics_offset: int = 1000,
    settings: dict[str, Any] | None = None,
    known: list[str] | None = None,
) -> list[dict[str, Any]]:
    if known is not None:
        stray = unused_ports(ports, [*names, *known])
        if stray:
            Display().warning(
                f"gateway ports name deployment(s) not in the inventory's deployments: {', '.join(stray)}; they get "
                "no router (a typo? a deployment removed from the inventory: remove its entry from "
                "gpufleet_gateway_ports)"
            )
    try:
        out = []
        for r in routers(names, assignments or [], addresses, ports, int(base_port), int(metrics_offset)):
            argv = router_argv(r, bind, settings or {})
            out.append({**r.as_dict(), "argv": argv, "admin_url": admin_url(r, bind, settings or {})})
        return out
    except GpufleetError as e:
        raise AnsibleFilterError(str(e)) from e


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"gateway_routers": gateway_routers}
