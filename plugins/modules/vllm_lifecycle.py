#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vllm_lifecycle
short_description: Extend, pause, resume, pin or unpin a deployment's replicas on a host
description:
  - Moves the deadline in each replica's lifecycle record (C(<state_dir>/lifecycle/NAME.json), written by
    C(gpufleet.vllm.vllm_container) and read by the node agent) by O(hours), from the current deadline (from now when
    it has passed). The container is not restarted; a replica the node agent stopped for expiry is started again
    (the same container) when its new deadline lies ahead.
  - The extension holds until C(serve_for) changes in the inventory (the converge then computes the deadline from
    the replica's start again). Used by C(playbooks/extend.yml).
  - O(action=pause) puts each replica to sleep (vLLM sleep level 1 - weights to CPU RAM, GPU memory freed; needs
    C(sleep_mode)); its lifecycle record says C(paused). The container, its port and its place in the gateway stay,
    a converge leaves it asleep, and the first request wakes it (the node agent). O(action=resume) wakes it, putting
    the least recently used unpinned replicas on its GPUs to sleep first when it would not fit (the warm cache).
    Used by C(playbooks/pause.yml) and C(playbooks/resume.yml).
  - O(action=pin) / O(action=unpin) set the host-side flag over the deployment's C(pin) - a pinned replica is never
    put to sleep by the node agent's idle pause nor by the warm cache. Used by C(playbooks/pin.yml).
version_added: 0.2.0
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.vllm.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: partial
    details: O(action=extend) adds O(hours) again on each run; the other actions change nothing the second time.
options:
  deployment:
    description: A deployment name (every replica C(NAME-N) on the host) or one replica name.
    type: str
    required: true
  action:
    description: What to do with the replicas.
    type: str
    choices: [extend, pause, resume, pin, unpin]
    default: extend
  hours:
    description:
      - How much longer - the serve_for format (V(4) hours, V(90m), V(1d)) - or V(infinite) (no deadline until
        C(serve_for) changes in the inventory). Required with O(action=extend).
    type: raw
  runtime:
    description: Container engine.
    type: str
    choices: [docker, podman]
    default: docker
  docker_host:
    description: Docker engine address (default the socket or DOCKER_HOST).
    type: str
  state_dir:
    description: The host's gpufleet state directory (C(manifest_dir)'s parent).
    type: path
    default: /var/lib/gpufleet
"""

EXAMPLES = r"""
- name: Four more hours for chat
  gpufleet.vllm.vllm_lifecycle:
    deployment: chat
    hours: 4

- name: Put chat to sleep until a request (or resume) wakes it
  gpufleet.vllm.vllm_lifecycle:
    deployment: chat
    action: pause
"""

RETURN = r"""
replicas:
  description:
    - Per replica on the host - name, changed; with O(action=extend) serve_until_before, serve_until (UTC, null = none),
      started; with pause/resume paused and paused_for_room (the replicas the warm cache put to sleep for it); with
      pin/unpin pinned.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.extend import ARGUMENT_SPEC, extend_host
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.pausing import act_host
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.factory import get_runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC, supports_check_mode=True, required_if=[("action", "extend", ["hours"])]
    )
    try:
        rt = get_runtime(module.params["runtime"], module.params.get("docker_host"))
        extend = module.params["action"] == "extend"
        result = (extend_host if extend else act_host)(module.params, rt, module.check_mode)
    except GpufleetError as e:
        module.fail_json(msg=str(e), **e.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
