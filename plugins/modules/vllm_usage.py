#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vllm_usage
short_description: Usage counters and current tokens per second of the managed vLLM servers on a host
description:
  - Reads C(/metrics) of every running managed vLLM server on the host (selected by O(names)) with
    prometheus_client's parser - C(vllm:request_success_total), C(vllm:prompt_tokens_total),
    C(vllm:generation_tokens_total) - twice, O(interval) seconds apart, and returns each replica's totals and its
    rates between its two samples (timed on the host's monotonic clock).
  - The totals are vLLM's counters, which start at zero with each server process (usage since the replica's start).
  - Read-only. C(gpufleet.vllm.fleet_report) O(gpufleet.vllm.fleet_report#module:kind=usage) sums the hosts' results
    per deployment and per owner (C(playbooks/usage.yml)).
version_added: 0.2.0
author:
  - gpufleet maintainers (@gpufleet)
requirements:
  - prometheus-client (on the host)
extends_documentation_fragment:
  - gpufleet.vllm.attributes
attributes:
  check_mode:
    support: full
    details: Reads only; runs the same in check mode.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  names:
    description:
      - Deployment names (every replica C(NAME-N)) or replica names; empty - every managed replica on the host.
    type: list
    elements: str
    default: []
  interval:
    description:
      - Seconds between the two samples (one wait for all the host's replicas), between V(0) and V(300). V(0) takes
        one sample and returns no rates.
    type: float
    default: 5.0
  timeout:
    description: Seconds to wait for each C(/metrics) answer (above 0, at most 60).
    type: float
    default: 5.0
  runtime:
    description: Container engine.
    type: str
    choices: [docker, podman]
    default: docker
  docker_host:
    description: Docker engine address (default the socket or DOCKER_HOST).
    type: str
seealso:
  - module: gpufleet.vllm.fleet_report
  - module: gpufleet.vllm.vllm_deployment_info
"""

EXAMPLES = r"""
- name: Usage of chat's replicas on this host, tokens/s over 10 seconds
  gpufleet.vllm.vllm_usage:
    names: [chat]
    interval: 10
  register: usage
"""

RETURN = r"""
replicas:
  description:
    - Per managed replica on the host (sorted by name) - C(name), C(deployment), C(owner) (the C(gpufleet.owner)
      label), C(endpoint), C(scraped) (its C(/metrics) was read), C(error) (why not; V(not running) for a stopped
      one), the totals C(requests) (finished requests), C(prompt_tokens), C(completion_tokens) (vLLM's generation
      tokens), and C(tokens_per_s) and C(prompt_tokens_per_s) between the two samples (null with O(interval=0) or
      when a sample failed).
  returned: always
  type: list
  elements: dict
interval_s:
  description: The seconds asked between the two samples (O(interval)).
  returned: always
  type: float
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.factory import get_runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.usage import ARGUMENT_SPEC, check_params, sample_host


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        check_params(module.params)  # before the engine is asked anything
        result = sample_host(module.params, get_runtime(module.params["runtime"], module.params.get("docker_host")))
    except GpufleetError as e:
        module.fail_json(msg=str(e), **e.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
