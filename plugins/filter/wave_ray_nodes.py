# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter gpufleet.vllm.wave_ray_nodes (code: plugins/module_utils/_fleet/ray_wave.py)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.ray_wave import wave_nodes

DOCUMENTATION = r"""
name: wave_ray_nodes
short_description: The Ray nodes of a host that one rollout wave replaces
version_added: 0.1.0
author:
  - gpufleet maintainers (@gpufleet)
description:
  - "From a host's Ray nodes (C(plan.ray[<host>]) of C(gpufleet.vllm.fleet_plan)), those of the multi-host replicas
    that O(wave) replaces (the nodes' C(wave)), for C(gpufleet.vllm.fleet_apply)'s wave steps (docs/ray.md, Rolling
    updates)."
  - "O(step=swap): leaves out every deployment with a failed replica in O(results) so far (its rollout stopped).
    O(step=settle): every node, each with C(failed) (its replica failed in O(results)) and, on a head, its failed
    record (C(failed_record))."
options:
  _input:
    description: The host's Ray nodes from the plan.
    type: list
    elements: dict
    required: true
  wave:
    description: One wave (C({index, replicas})) of C(plan.rollout.waves).
    type: dict
    required: true
  step:
    description: Which wave step the nodes are for.
    type: str
    choices: [swap, settle]
    required: true
  results:
    description: The registered C(gpufleet.vllm.fleet_apply) results of the play's hosts so far (any may be empty).
    type: list
    elements: dict
    default: []
"""

EXAMPLES = r"""
- name: Swap this host's Ray nodes of the wave
  gpufleet.vllm.fleet_apply:
    state: ray_swap
    ray_nodes: >-
      {{ plan.ray[inventory_hostname] | default([]) | gpufleet.vllm.wave_ray_nodes(wave, 'swap',
         ansible_play_hosts_all | map('extract', hostvars) | map(attribute='deployments_host_results', default={})) }}
"""

RETURN = r"""
_value:
  description: The nodes (plan entries; with O(step=settle) also C(failed) and C(failed_record)).
  type: list
  elements: dict
"""


def _wave_ray_nodes(nodes: Any, wave: Any, step: str, results: Any = ()) -> list[dict[str, Any]]:
    try:
        return wave_nodes(list(nodes or []), wave or {}, str(step), list(results or []))
    except GpufleetError as err:
        raise AnsibleFilterError(str(err)) from err


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"wave_ray_nodes": _wave_ray_nodes}
