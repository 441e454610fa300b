#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vllm_deployment_info
short_description: List the gpufleet-managed vLLM deployments on a host, from container labels alone
description:
  - Reads every container labelled C(gpufleet.managed=true) (see C(gpufleet.vllm.vllm_container)) and reports its
    deployment name, state, phase, health, endpoint, model, GPUs, image, uptime, restart count, last failure class
    and manifest. Nothing is kept on the controller, so the answer survives daemon and controller restarts.
version_added: 0.1.0
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.vllm.attributes
  - gpufleet.vllm.attributes.INFO_MODULE
options:
  name:
    description:
      - Only this deployment (the exact vllm_container O(gpufleet.vllm.vllm_container#module:name)).
      - Mutually exclusive with O(names).
    type: str
  names:
    description:
      - Only these. Each entry is a replica name (V(chat-1), that one) or a deployment name (V(chat), the
        container named so and every replica C(chat-N)). Names are matched exactly, never as patterns.
      - Empty (the default) lists every managed deployment. Mutually exclusive with O(name).
    type: list
    elements: str
    default: []
  runtime:
    description:
      - Container engine to ask.
    type: str
    choices: [docker, podman]
    default: docker
  docker_host:
    description:
      - Docker daemon URL. Defaults to E(DOCKER_HOST), else C(unix:///var/run/docker.sock).
    type: str
  probe:
    description:
      - Ask each running server's C(/health) (and C(/is_sleeping) with sleep mode) for RV(deployments[].health).
    type: bool
    default: true
  classify_failures:
    description:
      - For stopped deployments with a non-zero exit code, classify the failure from the log tail.
    type: bool
    default: true
  state_dir:
    description:
      - The host's gpufleet state directory (O(gpufleet.vllm.vllm_container#module:manifest_dir)'s parent), whose
        C(lifecycle/NAME.json) records give RV(deployments[].serve_until), RV(deployments[].lifecycle) and
        RV(deployments[].failed).
    type: path
    default: /var/lib/gpufleet
  gpus:
    description:
      - Also return RV(gpus), the host's GPUs as C(gpufleet.vllm.gpu_facts) gathers them (NVML, else C(nvidia-smi),
        else none; default health limits), so that one call tells what a host runs and on what. The
        C(gpufleet.vllm.deployments) role plans from this single call per host.
    type: bool
    default: false
  agent_state_dir:
    description:
      - With O(gpus=true), the node agent's state directory (C(gpufleet_agent_state_dir)), where it records the GPUs'
        Xid errors (a critical one makes a GPU unhealthy). Default the agent's, C(/var/lib/gpufleet/agent).
    type: path
  max_xid_age_s:
    description:
      - With O(gpus=true), how many seconds a critical Xid makes its GPU unhealthy (C(gpufleet_max_xid_age_s)).
        Unset, it counts until the host reboots, as C(gpufleet.vllm.gpu_facts)'
        O(gpufleet.vllm.gpu_facts#module:max_xid_age_s).
    type: int
requirements:
  - docker (Python SDK) on the target for O(runtime=docker); the podman CLI for O(runtime=podman).
"""

EXAMPLES = r"""
- name: What runs here
  gpufleet.vllm.vllm_deployment_info:
  register: info

- name: One deployment on podman
  gpufleet.vllm.vllm_deployment_info:
    name: llama
    runtime: podman

- name: Every replica of chat (chat-0, chat-1, ...) and the replica tp-model-1
  gpufleet.vllm.vllm_deployment_info:
    names: [chat, tp-model-1]
"""

RETURN = r"""
pulls:
  description:
    - "The image pulls running on the host now (C(gpufleet.vllm.vllm_image) and C(gpufleet.vllm.vllm_container) keep a
      progress file under O(state_dir)C(/pulls) while they pull), with C(image), C(phase) (C(pulling) or
      C(extracting)), C(bytes_done), C(bytes_total), C(bytes_known) (false when the engine gives no byte counts, as
      podman 4.3), C(layers_done), C(layers_total), C(age) (seconds since the last update) and C(text)
      (C(pulling image · 3.5/21.6 GB))."
  returned: when O(state_dir) is set
  type: list
  elements: dict
ray_nodes:
  description:
    - The Ray head and worker containers of multi-host replicas on the host (C(docs/ray.md); they carry no
      C(gpufleet.managed) label and are not in RV(deployments)), chosen by O(name)/O(names) as the deployments are,
      each with C(name) (its replica), C(deployment), C(replica), C(role) and C(ray_role) (C(head) or C(worker)),
      C(port) and C(ray_port) (the replica's Ray port block), C(gpus), C(host), C(container_name) and C(state).
  returned: always
  type: list
  elements: dict
  sample: [{name: big-0, deployment: big, replica: 0, role: head, ray_role: head, port: 6379, ray_port: 6379,
            gpus: ["0", "1"], host: gpu-a, container_name: gpufleet-big-0-ray-head, state: running}]
gpus:
  description:
    - With O(gpus=true), the host's GPUs, the same list as C(gpufleet.vllm.gpu_facts)' C(ansible_facts.gpus) (index,
      uuid, name, memory_total_mib, memory_free_mib, memory_used_mib, processes, healthy, ...).
  returned: when O(gpus=true)
  type: list
  elements: dict
gpu_source:
  description: With O(gpus=true), where the GPU list came from (C(nvml), C(nvidia-smi) or C(none)).
  returned: when O(gpus=true)
  type: str
deployments:
  description: One entry per deployment, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Deployment name.
      type: str
    container_name:
      description: Container name.
      type: str
    container_id:
      description: Container id.
      type: str
    state:
      description: V(running), V(paused) (sleeping or frozen), V(stopped), V(restarting), V(created).
      type: str
    phase:
      description: V(ready), V(starting), V(sleeping), V(stopped), V(failed).
      type: str
    health:
      description: V(ok), V(unhealthy), V(sleeping) or V(unknown) (not probed or not running).
      type: str
    endpoint:
      description: Base URL of the server as seen from the host.
      type: str
    port:
      description: Port.
      type: int
    api_key:
      description: Whether the server requires an API key (label C(gpufleet.api-key)); the key itself is never returned.
      type: bool
    model:
      description: Model path or hub id.
      type: str
    gpus:
      description: GPU ids.
      type: list
      elements: str
    image:
      description: Image reference.
      type: str
    image_id:
      description: Image id.
      type: str
    vllm_version:
      description: vLLM version.
      type: str
    config_hash:
      description: Config hash label.
      type: str
    started_at:
      description: Start time from the engine.
      type: str
    uptime_s:
      description: Seconds since start (running only).
      type: float
    restart_count:
      description: Engine restart count.
      type: int
    exit_code:
      description: Last exit code.
      type: int
    last_failure_class:
      description: Failure class of the last exit (non-zero exits only).
      type: str
    serve_until:
      description: The serve_for deadline (UTC) from the lifecycle record (older containers - the serve-until label).
      type: str
    lifecycle:
      description:
        - V(failed) - the node agent stopped it for good (crash loop, hung start, a class a restart cannot fix; see
          RV(deployments[].failed)); V(expired) - past its serve_for deadline; V(paused) - asleep on purpose (idle
          pause, warm cache, C(playbooks/pause.yml)), a request wakes it; null otherwise.
      type: str
    paused_for_s:
      description: How long a paused replica has slept (seconds; serve_for counts on meanwhile); null when not paused.
      type: float
    paused_reason:
      description: Why it sleeps - V(idle), V(warm_cache) (made room for another replica) or V(manual).
      type: str
    pinned:
      description: Never put to sleep by the node agent (the deployment's C(pin), or C(playbooks/pin.yml)).
      type: bool
    failed:
      description: The node agent's record of why it stopped the replica for good (reason, failure_class, hint, at).
      type: dict
    owner:
      description: The C(gpufleet.owner) label (the inventory's C(owner)).
      type: str
    hosts:
      description:
        - The hosts of a multi-host replica (C(distributed=ray), label C(gpufleet.ray-hosts)), its head first; null for
          a replica on one host.
      type: list
      elements: str
    manifest:
      description: The reproducibility manifest from the label.
      type: dict
    previous:
      description: Whether a C(-previous) container (a replacement in progress or interrupted) exists.
      type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.vllm.plugins.module_utils._container.info import (
    ARGUMENT_SPEC,
    MUTUALLY_EXCLUSIVE,
    gather,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, mutually_exclusive=MUTUALLY_EXCLUSIVE)
    try:
        result = gather(module.params)
    except GpufleetError as e:
        module.fail_json(msg=str(e), **e.details)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
