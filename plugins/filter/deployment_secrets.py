# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter gpufleet.vllm.deployment_secrets (code: plugins/module_utils/_fleet/schema.py)."""

from __future__ import annotations

from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import deployment_secrets

DOCUMENTATION = r"""
name: deployment_secrets
short_description: The secret fields of gpufleet_deployments, by deployment name
version_added: 0.1.0
author:
  - gpufleet maintainers (@gpufleet)
description:
  - "From a C(gpufleet_deployments) list, returns C({<name>: {api_key, hf_token, secret_env, s3_credentials}}) with only the fields a
    deployment sets: the O(gpufleet.vllm.fleet_apply#module:secrets) of a host's apply, next to a plan that never
    holds a secret."
  - Use it only where the result goes into a C(no_log) option; never print it.
options:
  _input:
    description: The declared deployments (C(gpufleet_deployments)).
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: Apply this host's part of the plan
  gpufleet.vllm.fleet_apply:
    replicas: "{{ gpufleet_plan.plan.hosts[inventory_hostname] | default([]) }}"
    secrets: "{{ gpufleet_deployments | gpufleet.vllm.deployment_secrets }}"
"""

RETURN = r"""
_value:
  description: Deployment name to its secret fields (C(api_key), C(hf_token), C(secret_env), C(s3_credentials)) that are set.
  type: dict
"""


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"deployment_secrets": deployment_secrets}
