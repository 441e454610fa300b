# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter gpufleet.vllm.replica_guard_config (code: plugins/module_utils/_gateway/replica_guard.py)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.replica_guard import guarded, haproxy_config

DOCUMENTATION = r"""
name: replica_guard_config
short_description: HAProxy's configuration that puts a GPU host's sleep-mode replicas on its address
version_added: 0.2.0
author:
  - gpufleet maintainers (@gpufleet)
description:
  - From one host's replicas of the fleet plan, the text of HAProxy's configuration - per replica with
    C(engine_options.sleep_mode) (vLLM then listens on C(127.0.0.1:<port>) only) a frontend on O(bind):port (and on
    its rollout's surge port) that passes the OpenAI API (C(/v1/...)), C(/health), C(/metrics), C(/version), C(/ping),
    C(/tokenize) and C(/detokenize) to C(127.0.0.1:<port>); vLLM's dev endpoints (C(/sleep), C(/wake_up), ...) and
    every other path get HTTP 403. With no such replica the result is the empty string. See C(docs/node_agent.md),
    "A request to a paused replica".
options:
  _input:
    description: The host's replicas (fleet_plan's C(plan.hosts[host]) - C(name), C(port), C(container), C(rollout)).
    type: list
    elements: dict
    required: true
  bind:
    description: The host's own address (where the gateway reaches its replicas); not a wildcard, not loopback.
    type: str
    required: true
  timeout:
    description: HAProxy's client and server timeout in seconds (a held first request plus a long generation).
    type: int
    default: 1860
"""

EXAMPLES = r"""
- name: The replica guard's configuration
  ansible.builtin.copy:
    content: "{{ deployments_plan.plan.hosts[inventory_hostname] | gpufleet.vllm.replica_guard_config(bind='10.0.0.11') }}"
    dest: /opt/gpufleet/replica-guard/haproxy.cfg
    mode: "0644"
    validate: haproxy -c -f %s
"""

RETURN = r"""
_value:
  description: The configuration file's text; empty when the host has no sleep-mode replica.
  type: str
"""


def replica_guard_config(specs: list[dict[str, Any]], bind: str, timeout: int | None = None) -> str:
    try:
        replicas = guarded(specs or [])
        return haproxy_config(replicas, bind, timeout) if replicas else ""
    except (GpufleetError, KeyError, ValueError, TypeError) as e:
        raise AnsibleFilterError(f"replica_guard_config: {e}") from e


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"replica_guard_config": replica_guard_config}
