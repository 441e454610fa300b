# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter gpufleet.vllm.merge_ray_results (code: plugins/module_utils/_fleet/ray_wave.py)."""

from __future__ import annotations

from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.ray_wave import merge_results

DOCUMENTATION = r"""
name: merge_ray_results
short_description: A host's registered Ray step results as one
version_added: 0.1.0
author:
  - gpufleet maintainers (@gpufleet)
description:
  - "The host's Ray step result so far (C(gpufleet.vllm.fleet_apply) C(state=ray_nodes) or C(state=ray_ready)) and
    the results of a rollout wave's Ray steps (C(state=ray_swap), C(state=ray_settle), C(state=ray_ready)) as one:
    the per-node entries (C(ray_nodes)) by container name, a later entry replacing an earlier one; C(changed) and
    C(failed) of any; the messages. A skipped run adds nothing. C(gpufleet.vllm.fleet_report) C(kind=converge) reads
    the merged result for the converge summary's Ray nodes."
options:
  _input:
    description: The result so far.
    type: dict
    required: true
  later:
    description: The later runs' registered results (one or more arguments).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Add the wave's Ray steps to the host's Ray results
  ansible.builtin.set_fact:
    deployments_ray_nodes: "{{ deployments_ray_nodes | default({}) | gpufleet.vllm.merge_ray_results(swap, settle) }}"
"""

RETURN = r"""
_value:
  description: The merged result (C(changed), C(failed), C(ray_nodes), C(msg) when one failed).
  type: dict
"""


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"merge_ray_results": merge_results}
