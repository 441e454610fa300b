#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_plan
short_description: Place every replica of the declared vLLM deployments on the GPU hosts of the inventory
version_added: 0.1.0
description:
  - "Runs on the controller (it is an action plugin; run it once, with C(run_once: true)). It validates
    O(deployments) (C(gpufleet_deployments)) and the C(gpufleet_*) host vars, then picks a host, GPU indices and a
    port for each replica from every host's GPU facts (C(gpufleet.vllm.gpu_facts)) and the managed containers that
    already run (C(gpufleet.vllm.vllm_deployment_info))."
  - Placement is stable; existing placements stay where they are while they still fit, so a re-run moves nothing.
    C(spread) spreads replicas over hosts, C(binpack) fills hosts. A GPU serves one deployment unless both allow
    C(gpu_sharing). VRAM need is estimated as weights x 1.2 + 2 GiB (+ LoRA), split over the replica's GPUs, and
    checked against the deployment's C(gpu_memory_utilization) x total and against free memory.
  - "Unschedulable deployments fail the task with one line each that says why for every host, for example
    C(chat-70b: 0/3 hosts fit — gpu-a: 2 GPUs free, needs 4; gpu-b: selector zone=eu1 not matched; gpu-c: unreachable)."
  - The result is consumed by the C(deployments) role. RV(plan.hosts[<host>]) lists the container specs the host
    must run (C(container) holds the C(gpufleet.vllm.vllm_container) arguments) and RV(plan.remove[<host>]) the
    managed containers to remove there. Secret values are never part of the result; look them up in
    C(gpufleet_deployments) by C(deployment).
  - The inventory schema is documented in C(docs/inventory.md) of the collection.
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.vllm.attributes
attributes:
  check_mode:
    support: full
    details:
      - The module changes nothing; check mode returns the same plan. O(state_path) is not written in check mode.
      - It reports C(changed) when the plan changes the fleet (a replica is created, updated, moved or removed), so
        C(--check --diff) shows the fleet-wide change and a converged fleet reports no change.
  diff_mode:
    support: full
    details:
      - "Returns the placements before and after, one line per replica (C(<deployment>-<replica>: <host> gpus=<ids> port=<port>))."
  idempotent:
    support: full
options:
  deployments:
    description:
      - The declared deployments, normally C({{ gpufleet_deployments }}). See C(docs/inventory.md) for every field.
      - Wrong fields fail the task with one message that lists each problem, before any host is touched.
    type: list
    elements: dict
    required: true
  hosts:
    description:
      - The GPU hosts to place on. Defaults to C(ansible_play_hosts_all).
      - A host that is not in C(ansible_play_hosts) (it failed or was unreachable earlier in the play) is unreachable
        for the plan; its placements are kept and reported unless O(move_from_unreachable).
    type: list
    elements: str
  unreachable:
    description:
      - Hosts to treat as unreachable in addition to those missing from C(ansible_play_hosts).
    type: list
    elements: str
    default: []
  existing:
    description:
      - The managed placements that exist now, as a list of C({host, name, gpus, port}) (C(name) is
        C(<deployment>-<replica>)) or C({host, deployment, replica, gpus, port}).
      - When not set, they are read from each host's O(existing_var).
    type: list
    elements: dict
  existing_var:
    description:
      - Name of the host variable holding the registered result of C(gpufleet.vllm.vllm_deployment_info); its
        C(deployments) list (entries with C(name), C(gpus), C(port), or their C(gpufleet.*) labels) is the existing
        placement on that host.
    type: str
    default: gpufleet_deployment_info
  gpu_facts_var:
    description:
      - Name of the fact (under C(ansible_facts)) or host variable holding the host's GPU list from
        C(gpufleet.vllm.gpu_facts) (entries with C(index), C(uuid), C(name), C(memory_total_mib),
        C(memory_free_mib), C(memory_used_mib)). A dict with a C(gpus) key is accepted too.
    type: str
    default: gpus
  model_sizes:
    description:
      - Size on disk in bytes of each deployment's model, by deployment name, for the VRAM estimate (for example
        from C(gpufleet.vllm.model_sync) results). A C(model_size_bytes) set on the deployment wins.
      - A deployment without a size (neither here nor C(model_size_bytes), C(num_parameters), C(vram_mib)) gets the
        weight size C(gpufleet.vllm.model_sync) recorded for the same model on a host (the C(model_sizes) of
        O(existing_var), from C(gpufleet.vllm.fleet_apply) C(state=gathered)), else, for a hub model, the one its
        hub model info gives (O(hub_model_info)). RV(plan.estimates) says which (C(source)).
    type: dict
    default: {}
  hub_model_info:
    description:
      - Ask the hub for the model info of hub models whose size is not known otherwise (one request per such
        deployment, on the controller, with the deployment's C(hf_token), never logged) - the safetensors parameter
        count per dtype, else the weight files' sizes. Not when C(HF_HUB_OFFLINE) is set. A hub that does not answer
        leaves the estimate unknown, with a warning.
    type: bool
    default: true
  hf_endpoint:
    description:
      - The hub (or mirror) URL for O(hub_model_info); default C(HF_ENDPOINT), else https://huggingface.co.
    type: str
  prune:
    description:
      - Remove managed containers of deployments that are no longer declared (listed in RV(plan.remove)).
        Without it they are kept, their GPUs stay taken, and they are reported in RV(plan.undeclared).
    type: bool
    default: false
  move_from_unreachable:
    description:
      - Re-place replicas whose host is unreachable on other hosts (a deployment's own C(move_from_unreachable)
        wins). Without it they are kept where they are and reported.
    type: bool
    default: false
  fail_on_unschedulable:
    description:
      - Fail the task when a deployment cannot be placed. With V(false) the errors are returned and the plan holds
        what could be placed.
    type: bool
    default: true
  state_path:
    description:
      - A JSON file on the controller where the plan's placements are saved after each run (not in check mode).
        Placements of hosts that are unreachable now are read back from it when no reachable host keeps a copy
        (RV(fleet_state)), so they are kept instead of being silently placed again elsewhere.
      - Optional; the role keeps the placements on the hosts instead (nothing lives only on the controller).
    type: path
  publish:
    description:
      - Also return RV(plan_id) and RV(published), the text of each reachable host's plan file
        (C(<state dir>/fleet/plan.json)) - its part of the plan and the fleet's placements after it - for an apply
        job sliced by host (C(playbooks/plan.yml) writes them, C(playbooks/apply_planned.yml) applies them;
        C(docs/awx.md), section Large fleets).
    type: bool
    default: false
  planned_var:
    description:
      - "Do not plan; assemble the plan of the play's hosts from the plan files they keep, read into this host
        variable (the registered result of C(ansible.builtin.slurp) of the file). This is the one mode allowed in
        one slice of a sliced job (C(awx_job_slice_count) > 1): each host runs the part the global plan gave it."
      - "Fails before anything changes, naming the hosts, when a host has no plan file, when the hosts hold
        different plans, when it is not the plan O(plan_id), when O(deployments) changed since the plan, or when a
        host keeps newer fleet placements (C(<existing_var>.fleet_state)) than the plan's: another converge ran
        since. Then run the plan job again."
    type: str
  plan_id:
    description:
      - With O(planned_var), the plan the hosts must hold (RV(plan_id) of the plan job, which an AWX workflow
        passes on through C(set_stats) as C(gpufleet_plan_id)). Empty - the hosts must agree among themselves.
    type: str
    default: ''
seealso:
  - module: gpufleet.vllm.gpu_facts
  - module: gpufleet.vllm.vllm_deployment_info
  - module: gpufleet.vllm.vllm_container
"""

EXAMPLES = r"""
- name: Plan the fleet (once, on the controller)
  gpufleet.vllm.fleet_plan:
    deployments: "{{ gpufleet_deployments }}"
    prune: "{{ gpufleet_prune | default(false) }}"
    state_path: "{{ playbook_dir }}/.gpufleet/placements.json"
  run_once: true
  register: gpufleet_plan

- name: Run what this host must run
  gpufleet.vllm.vllm_container:
    name: "{{ item.container.name }}"
    runtime: "{{ item.container.runtime }}"
    model: "{{ item.container.model }}"
    port: "{{ item.container.port }}"
    gpus: "{{ item.container.gpus }}"
    tensor_parallel_size: "{{ item.container.tensor_parallel_size }}"
    gpu_memory_utilization: "{{ item.container.gpu_memory_utilization }}"
    secret_env: "{{ (gpufleet_deployments | selectattr('name', 'equalto', item.deployment) | first).secret_env | default({}) }}"
  loop: "{{ gpufleet_plan.plan.hosts[inventory_hostname] }}"
  loop_control:
    label: "{{ item.name }}"

- name: Placement with explicit inputs (no facts needed), e.g. to preview a change
  gpufleet.vllm.fleet_plan:
    hosts: [gpu-a, gpu-b]
    deployments:
      - name: chat
        model: Qwen/Qwen2.5-0.5B-Instruct
        replicas: 2
        placement: spread
    existing:
      - {host: gpu-a, name: chat-0, gpus: [0], port: 8000}
  check_mode: true
  run_once: true
"""

RETURN = r"""
plan:
  description: The placement.
  returned: always
  type: dict
  contains:
    hosts:
      description:
        - Per host (every host has a key), the replicas it must run, sorted by name. Each has C(name)
          (C(<deployment>-<replica>)), C(deployment), C(replica), C(action) (C(create), C(keep), C(update) = same
          host with other GPUs or port, C(move) = from another host), C(previous), C(host), C(gpus), C(gpu_uuids),
          C(port), C(vllm_version), C(image), C(model_source), C(model_sync) (the C(gpufleet.vllm.model_sync) arguments
          without the token), C(model_path) (what the container serves; for hub and URL models the path model_sync
          returns, C(<gpufleet_models_root>/<deployment>), for local models their path), C(serve_for),
          C(secret_env_keys), C(api_key_set), C(hf_token_set), C(vram_per_gpu_mib) and C(container), the
          C(gpufleet.vllm.vllm_container) arguments without secrets and without C(image) unless the deployment
          names one (C(gpufleet.vllm.vllm_image) resolves C(vllm_version) to an image; the container reads the
          version from the image's label).
      type: dict
      sample: {"gpu-a": [{"name": "chat-0", "deployment": "chat", "replica": 0, "action": "create", "gpus": [0],
               "port": 8000, "container": {"name": "chat-0", "gpus": [0], "port": 8000,
               "model": "/var/lib/gpufleet/models/chat"}}]}
    remove:
      description:
        - "Per host, managed containers to remove, with C(name), C(deployment), C(replica), C(gpus), C(port) and
          C(reason) (C(state: absent), C(scaled down to 1 replica), C(moved: host unreachable), C(no longer fits: ...))."
        - Remove these before starting new replicas on the same host; they may free the GPUs and ports those use.
      type: dict
      sample: {"gpu-b": [{"name": "chat-2", "deployment": "chat", "replica": 2, "reason": "scaled down to 2 replicas"}]}
    images:
      description:
        - Per host (every host has a key), the C([image, vllm_version]) pairs of its replicas in RV(plan.hosts), each
          once, in order - what C(gpufleet.vllm.vllm_image) resolves there (C(image) null - the version's image).
      type: dict
      sample: {"gpu-a": [[null, "0.10.2"], ["registry.example.com/vllm:custom", null]], "gpu-b": []}
    assignments:
      description: Every placed replica, sorted by deployment and replica (same entries as in RV(plan.hosts) minus C(container)).
      type: list
      elements: dict
    removals:
      description: Every removal, sorted (same entries as in RV(plan.remove)).
      type: list
      elements: dict
    undeclared:
      description: Managed containers of deployments no longer declared, kept because O(prune) is off.
      type: list
      elements: dict
    rollout:
      description:
        - "The rolling update of the replicas whose declaration changed (docs/rollouts.md): C(waves) (each
          C({index, replicas: [{name, deployment, host, mode, surge_port, surge_gpus, wave}]}), C(mode) C(surge) or
          C(in_place)), C(deferred) and C(held) (per host, the replicas the first apply only prepares: those the waves
          replace, and those a rollout error holds back) and C(strategy) (per deployment, the resolved
          C(max_unavailable), C(max_surge) and the C(rolling) replicas). A rolling spec in RV(plan.hosts) carries
          C(rollout) (its wave, mode, surge port and GPUs) and every spec its C(digest)."
      type: dict
      sample: {"waves": [{"index": 1, "replicas": [{"name": "chat-0", "deployment": "chat", "host": "gpu-a",
               "mode": "surge", "surge_port": 8002, "surge_gpus": [1], "wave": 1}]}],
               "deferred": {"gpu-a": ["chat-0"]}, "held": {"gpu-a": []},
               "strategy": {"chat": {"max_unavailable": 0, "max_surge": 1, "rolling": ["chat-0"]}}}
    estimates:
      description:
        - The VRAM estimate per deployment (C(known), C(source), C(weights_bytes), C(total_mib), C(per_gpu_mib)).
        - C(source) says where the size came from - C(model_size_bytes), C(num_parameters) or C(vram_mib) (the
          deployment), C(model_sizes), C(model_sync on <host>) (recorded there) or C(hub model info).
      type: dict
    summary:
      description: Counts of C(create), C(keep), C(update), C(move), C(remove), C(undeclared), C(unschedulable).
      type: dict
      sample: {"create": 2, "keep": 5, "update": 0, "move": 0, "remove": 1, "undeclared": 0, "unschedulable": 0}
errors:
  description: One entry per unschedulable deployment with C(deployment), C(message), C(missing_replicas) and C(hosts) (the reason per host).
  returned: always
  type: list
  elements: dict
  sample:
    - deployment: chat-70b
      message: "chat-70b: 0/3 hosts fit — gpu-a: 2 GPUs free, needs 4; gpu-b: selector zone=eu1 not matched; gpu-c: unreachable"
      missing_replicas: [0]
rollout_waves:
  description: The rollout order, one line per wave (also at the end of the diff).
  returned: always
  type: list
  elements: str
  sample: ["wave 1: chat-0 on gpu-a (surge :8002 gpus=1)", "wave 2: chat-1 on gpu-b (in place)"]
unreachable_hosts:
  description: The hosts the plan treated as unreachable.
  returned: always
  type: list
  elements: str
fleet_state:
  description:
    - The fleet's placements after this plan, for the hosts to keep (C(gpufleet.vllm.fleet_apply)
      O(gpufleet.vllm.fleet_apply#module:fleet_state)); its C(generation) is the newest one the hosts reported
      (in C(<existing_var>.fleet_state)), one more when the placements changed. Null when the plan has errors.
    - Placements of unreachable hosts are read from the newest copy the reachable hosts keep, so a run from another
      controller (or a fresh execution-environment container) keeps them as the last run did.
  returned: success
  type: dict
  sample: {version: 1, generation: 2, placements: [{deployment: chat, replica: 0, host: gpu-a, gpus: ["0"],
           gpu_uuids: ["GPU-0a"], port: 8000}]}
plan_id:
  description: A digest of the whole plan and the declaration (secret fields left out); the same plan, the same id.
  returned: with O(publish) or O(planned_var)
  type: str
  sample: 3f1c9a0e5b7d...
published:
  description: Per reachable host, the text of its plan file (JSON, no secret).
  returned: with O(publish)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = dict(
    deployments=dict(type="list", elements="dict", required=True),
    hosts=dict(type="list", elements="str"),
    unreachable=dict(type="list", elements="str", default=[]),
    existing=dict(type="list", elements="dict"),
    existing_var=dict(type="str", default="gpufleet_deployment_info"),
    gpu_facts_var=dict(type="str", default="gpus"),
    model_sizes=dict(type="dict", default={}),
    hub_model_info=dict(type="bool", default=True),
    hf_endpoint=dict(type="str"),
    prune=dict(type="bool", default=False),
    move_from_unreachable=dict(type="bool", default=False),
    fail_on_unschedulable=dict(type="bool", default=True),
    state_path=dict(type="path"),
    publish=dict(type="bool", default=False),
    planned_var=dict(type="str"),
    plan_id=dict(type="str", default=""),
)


def main() -> None:
    # The work happens in the action plugin of the same name on the controller; this only serves the docs and sanity.
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.fail_json(msg="gpufleet.vllm.fleet_plan runs as an action plugin on the controller; it cannot run on a host")


if __name__ == "__main__":
    main()
