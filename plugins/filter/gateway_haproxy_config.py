# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter gpufleet.vllm.gateway_haproxy_config (code: plugins/module_utils/_gateway/config.py)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.config import Router, haproxy_config

DOCUMENTATION = r"""
name: gateway_haproxy_config
short_description: HAProxy's configuration that guards the routers' admin API on a gateway host
version_added: 0.2.0
author:
  - gpufleet maintainers (@gpufleet)
description:
  - From the routers of one gateway host (C(gpufleet.vllm.gateway_routers)), the text of HAProxy's configuration - per
    router a frontend on O(bind):port, the router on C(127.0.0.1:<port + internal_offset>). The OpenAI API (C(/v1/...))
    and C(/health) pass from anywhere; every other path (vllm-router's worker API C(/add_worker), C(/remove_worker),
    ...) only from O(admin_sources), loopback and O(bind), else HTTP 403. See C(docs/gateway.md), "The admin API".
options:
  _input:
    description: The routers (C(deployment), C(port), C(metrics_port)).
    type: list
    elements: dict
    required: true
  bind:
    description: The address the clients reach the gateway at.
    type: str
    required: true
  admin_sources:
    description: Addresses (or networks) allowed to reach the admin API - the GPU hosts' addresses.
    type: list
    elements: str
    default: []
  settings:
    description: The role's router settings (C(internal_offset), C(request_timeout_secs), C(allow_any_address)).
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: HAProxy in front of the routers
  ansible.builtin.copy:
    content: "{{ routers | gpufleet.vllm.gateway_haproxy_config(bind='10.0.0.5', admin_sources=['10.0.0.11']) }}"
    dest: /opt/gpufleet/gateway/haproxy.cfg
    mode: "0644"
    validate: haproxy -c -f %s
"""

RETURN = r"""
_value:
  description: The configuration file's text.
  type: str
"""


def gateway_haproxy_config(
    routers: list[dict[str, Any]],
    bind: str,
    admin_sources: list[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> str:
    try:
        objs = [Router(str(r["deployment"]), int(r["port"]), int(r["metrics_port"])) for r in routers or []]
        return haproxy_config(objs, bind, admin_sources or [], settings or {})
    except (GpufleetError, KeyError, ValueError) as e:
        raise AnsibleFilterError(f"gateway_haproxy_config: {e}") from e


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"gateway_haproxy_config": gateway_haproxy_config}
