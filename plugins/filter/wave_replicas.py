# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter gpufleet.vllm.wave_replicas (code: plugins/module_utils/_fleet/rollout.py)."""

from __future__ import annotations

from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.rollout import failed_deployments, wave_replicas

DOCUMENTATION = r"""
name: wave_replicas
short_description: The replicas of one rollout wave a host converges
version_added: 0.1.0
author:
  - gpufleet maintainers (@gpufleet)
description:
  - "From one wave of C(plan.rollout.waves) (C(gpufleet.vllm.fleet_plan)), the names of the replicas placed on
    O(host), leaving out every deployment that has a failed replica in O(results) so far: a failure stops that
    deployment's rollout (docs/rollouts.md). The result is C(gpufleet.vllm.fleet_apply)'s O(gpufleet.vllm.fleet_apply#module:only)."
options:
  _input:
    description: One wave (C({index, replicas}))).
    type: dict
    required: true
  host:
    description: The inventory host.
    type: str
    required: true
  results:
    description: The registered C(gpufleet.vllm.fleet_apply) results of the play's hosts so far (any may be empty).
    type: list
    elements: dict
    default: []
"""

EXAMPLES = r"""
- name: Apply one wave on this host
  gpufleet.vllm.fleet_apply:
    replicas: "{{ plan.hosts[inventory_hostname] }}"
    only: >-
      {{ wave | gpufleet.vllm.wave_replicas(inventory_hostname,
         ansible_play_hosts_all | map('extract', hostvars) | map(attribute='deployments_host_results', default={})) }}
"""

RETURN = r"""
_value:
  description: Replica names (C(<deployment>-<replica>)).
  type: list
  elements: str
"""


def _wave_replicas(wave: Any, host: str, results: Any = ()) -> list[str]:
    return wave_replicas(wave or {}, str(host), failed_deployments(list(results or [])))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"wave_replicas": _wave_replicas}
