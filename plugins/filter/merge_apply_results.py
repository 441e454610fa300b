# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter gpufleet.vllm.merge_apply_results (code: plugins/module_utils/_fleet/rollout.py)."""

from __future__ import annotations

from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.rollout import merge_results

DOCUMENTATION = r"""
name: merge_apply_results
short_description: Two registered fleet_apply results of one host as one
version_added: 0.1.0
author:
  - gpufleet maintainers (@gpufleet)
description:
  - "The host's C(gpufleet.vllm.fleet_apply) result so far and the result of a later run (a rollout wave) as one
    result: the records in order, C(changed) and C(failed) of either, C(failed_count) and the messages. A skipped
    run adds nothing. C(gpufleet.vllm.fleet_report) C(kind=converge) reads the merged result."
options:
  _input:
    description: The result so far.
    type: dict
    required: true
  later:
    description: The later run's registered result.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Add the wave's records to the host's results
  ansible.builtin.set_fact:
    deployments_host_results: "{{ deployments_host_results | gpufleet.vllm.merge_apply_results(wave_result) }}"
"""

RETURN = r"""
_value:
  description: The merged result (C(changed), C(failed), C(records), C(failed_count), C(msg) when one failed).
  type: dict
"""


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"merge_apply_results": merge_results}
