#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_apply
short_description: Apply one host's part of a fleet plan (removals, models, images, vLLM containers) in one run
version_added: 0.1.0
description:
  - "The step of the C(gpufleet.vllm.deployments) role that changes a host: it takes the host's part of the plan of
    C(gpufleet.vllm.fleet_plan) and converges it in one module run, with one engine connection, doing exactly what
    the single-purpose modules do - the same code, each step's parameters validated against that module's own
    argument spec."
  - "In order: O(removals) (C(gpufleet.vllm.vllm_container) C(state=absent); a failed removal stops the host there,
    it may hold the GPUs or port a new replica needs); C(gpufleet.vllm.model_sync) once per deployment of
    O(replicas); C(gpufleet.vllm.vllm_image) once per image; C(gpufleet.vllm.vllm_container) per replica, in order,
    health-gated (C(wait=true)). The first replica whose container fails stops this host's rollout;
    C(gpufleet.vllm.vllm_container) has already brought its previous container back. A replica whose model sync or
    image failed is reported failed at that step and not started; the other replicas still run."
  - "A no-op converge of a host costs one module run instead of one per replica and step (the fleet benchmark in
    C(bench/fleet_converge.py) compares it with a hand-written C(community.docker) playbook)."
  - "The module fails when anything failed, with one line per failure in C(msg); C(records) is returned either way
    (the role registers it with C(ignore_errors) and builds the converge summary from it)."
  - "O(state=gathered) changes nothing and returns what the plan needs from the host instead: its managed deployments
    and its GPUs, the same data as C(gpufleet.vllm.vllm_deployment_info) with O(gpufleet.vllm.vllm_deployment_info#module:gpus=true)
    (the C(gathered) state of Ansible's resource modules). The role uses it so that one module payload serves both
    of its calls per host."
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.vllm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Every step runs in check mode; a replica whose image would be pulled or built first is reported changed.
  diff_mode:
    support: full
    details:
      - One diff per changed model, image and container (secrets masked), each with its own header.
  idempotent:
    support: full
options:
  state:
    description:
      - V(applied) converges the host to O(replicas) and O(removals).
      - V(gathered) only reads the host (RV(deployments), RV(gpus), RV(gpu_source), RV(fleet_state),
        RV(model_sizes), RV(ray_nodes)); O(replicas) and O(removals) are ignored.
      - V(ray_nodes) converges the host's Ray nodes of multi-host replicas (C(distributed=ray), C(docs/ray.md)) - the
        Ray parts of O(removals) (a head's server first, then the node), then per node of O(ray_nodes) the model, the
        image and the Ray head or worker container (idempotent by a config hash label). A head whose declaration
        changed takes its server with it (the whole cluster is replaced). The role runs it on every host at once,
        before the rolling batches.
      - V(ray_ready) waits (at most O(wait_timeout)) until the cluster of every Ray head of O(ray_nodes) shows all its
        nodes and GPUs (C(ray status) in the head); the role runs it after V(ray_nodes) on every host, so a head's
        server starts on a complete cluster. Check mode waits for nothing.
      - V(ray_stopped) stops the Ray parts of O(removals) (the C(ray_nodes) of C(gpufleet.vllm.vllm_deployment_info),
        each with C(deployment), C(replica) and C(ray_role)) and keeps them - a head's server first when it still
        runs. C(playbooks/stop.yml) with C(state=stopped) uses it; the next converge's V(ray_nodes) starts them again.
      - V(ray_drain), V(ray_swap), V(ray_settle) and V(ray_restore) are a multi-host replica's rolling update in its
        rollout wave (C(docs/ray.md), "Rolling updates"; the role's C(wave.yml) runs each on every host of the wave
        at once). V(ray_drain), on the head's host, takes the server of each head whose cluster will be replaced out
        of its routers (drained) and stops it, kept. V(ray_swap) replaces the nodes of O(ray_nodes) whose declaration changed and keeps each old one stopped as
        C(<node>-previous).
        V(ray_settle) removes the old nodes when the replica passed its gate, or brings them back in place of the
        new ones when it failed (the nodes' C(failed)). V(ray_restore), on the head's host of a failed replica (its
        node's C(failed_record)), waits for the old cluster and starts the old server again (RV(records)).
    type: str
    choices: [applied, gathered, ray_nodes, ray_ready, ray_stopped, ray_drain, ray_swap, ray_settle, ray_restore]
    default: applied
  ray_nodes:
    description:
      - The host's Ray nodes from the plan (C(plan.ray[<host>]) of C(gpufleet.vllm.fleet_plan)), each with C(name),
        C(deployment), C(replica), C(role) (C(head) or C(worker)), C(host), C(port) (the replica's Ray port block),
        C(gpus), C(node_ip), C(head_ip), C(nodes), C(cluster_gpus), C(server), C(image), C(vllm_version),
        C(image_build), C(env), C(model_sync) and C(model_path); a node of a replica that rolls also with C(wave)
        (O(state=ray_nodes) then leaves its old cluster serving until that wave). Used by O(state=ray_nodes),
        O(state=ray_ready) and the wave's O(state=ray_swap), O(state=ray_settle) (each node with C(failed)) and
        O(state=ray_restore) (a head with C(failed_record)); the filter C(gpufleet.vllm.wave_ray_nodes) picks them.
    type: list
    elements: dict
    default: []
  replicas:
    description:
      - The host's replicas from the plan (C(plan.hosts[<host>]) of C(gpufleet.vllm.fleet_plan)), each with
        C(name), C(deployment), C(model_sync) (C(gpufleet.vllm.model_sync) arguments), C(model_path), C(image),
        C(vllm_version) and C(container) (C(gpufleet.vllm.vllm_container) arguments without the image), C(port).
      - A replica with C(rollout.mode=surge) (set by the plan's rollout waves) is replaced with a surge - a copy of its
        new configuration, C(<name>-surge) on C(rollout.surge_gpus) and C(rollout.surge_port), started and gated
        first, serving while the replica is replaced in place, removed afterwards; a surge that fails is removed and
        the replica is left serving as it was (C(rolled_back=true)).
      - None of them holds a secret; secrets come from O(secrets).
    type: list
    elements: dict
    default: []
  only:
    description:
      - Converge only the replicas of O(replicas) with these names (their model and image included); the others are
        left as they are. The role's rollout waves set it (docs/rollouts.md). Unset, every replica is converged.
      - With O(only), a failing replica stops only its own deployment's replicas in this run (the others of the wave
        still converge); without it, the first failing container stops the host's apply.
    type: list
    elements: str
  defer:
    description:
      - Replicas of O(replicas) whose model and image are made ready but which are not converged in this run (a
        later rollout wave converges them with O(only)).
    type: list
    elements: str
    default: []
  removals:
    description:
      - The host's removals from the plan (C(plan.remove[<host>])), each with C(name) (the deployment key of the
        container C(gpufleet-<name>)); a part of a multi-host replica also with C(deployment), C(replica) and
        C(ray_role). With O(state=ray_stopped), the Ray nodes to stop.
    type: list
    elements: dict
    default: []
  secrets:
    description:
      - Deployment name to its C(api_key), C(hf_token) and C(secret_env) (the filter
        C(gpufleet.vllm.deployment_secrets) builds it from C(gpufleet_deployments)). C(hf_token) is also the token
        of the deployment's model sync; C(s3_credentials) go only to the model sync (a model with s3 in its
        sources). Never logged, never in a label, argv or manifest.
    type: dict
    default: {}
  address:
    description:
      - The address clients use to reach this host (its C(ansible_host)); the records' C(endpoint) uses it unless
        the server binds loopback only.
    type: str
  runtime:
    description:
      - The container engine of the host.
    type: str
    choices: [docker, podman]
    default: docker
  docker_host:
    description:
      - Engine API URL, as in C(gpufleet.vllm.vllm_container) (default the local socket).
    type: str
  podman_socket:
    description:
      - Podman API socket for image operations, as in C(gpufleet.vllm.vllm_image).
    type: str
  manifest_dir:
    description:
      - Where C(gpufleet.vllm.vllm_container) writes the reproducibility manifests.
    type: path
    default: /var/lib/gpufleet/manifests
  wait_timeout:
    description:
      - Seconds each replica may take to become ready (C(gpufleet.vllm.vllm_container) O(gpufleet.vllm.vllm_container#module:wait_timeout)).
    type: int
    default: 1800
  reset_failed:
    description:
      - Start replicas the node agent stopped for good although their configuration is unchanged
        (O(gpufleet.vllm.vllm_container#module:reset_failed)). Otherwise such a replica is reported failed with its cause.
    type: bool
    default: false
  image_repository:
    description:
      - Repository of the vLLM images resolved from a C(vllm_version) (C(gpufleet.vllm.vllm_image) O(gpufleet.vllm.vllm_image#module:repository)).
    type: str
    default: vllm/vllm-openai
  image_pull:
    description:
      - C(gpufleet.vllm.vllm_image) O(gpufleet.vllm.vllm_image#module:pull).
    type: str
    choices: [missing, always, never]
    default: missing
  image_registry:
    description:
      - A registry the hosts share (V(registry.example.com:5000)) for the derived images of deployments with
        C(extra_pip_packages)/C(plugins) - C(<image_registry>/gpufleet/vllm-openai:<tag>-<content hash>). The first
        host that needs one builds and pushes it, the others pull it (C(gpufleet.vllm.vllm_image)'s
        O(gpufleet.vllm.vllm_image#module:push)). Unset, each host builds its own.
    type: str
  hf_endpoint:
    description:
      - Hugging Face hub endpoint for the model syncs (C(gpufleet.vllm.model_sync) O(gpufleet.vllm.model_sync#module:hf_endpoint)).
    type: str
  gateways:
    description:
      - The routers of the deployments' gateways (C(gpufleet.vllm.gateway_info) RV(gpufleet.vllm.gateway_info#module:routers)
        of each gateway host - C(deployment) and C(url) of each; one not C(up) is left out). During this run a replica
        whose running container is about to stop first leaves its deployment's routers (C(POST /remove_worker) from
        this host) and this run waits until it has no request running or waiting, at most O(drain_timeout); it joins
        them again once it passed the readiness gate (or once its previous container serves again after a rollback).
        A surge joins them after its gate and leaves them (drained) before it is removed. A replica of O(removals)
        (scale-down, C(state=absent), a move to another host) leaves them and is drained the same way before its
        container stops.
      - With O(state=ray_nodes), a Ray head's server that this run removes (a Ray removal) or takes down with its
        replaced cluster is drained the same way first; the server that O(state=applied) creates again for a Ray head
        joins them after its gate.
      - Empty - no router is touched. Check mode never touches a router. See C(docs/rollouts.md), "Gateway".
    type: list
    elements: dict
    default: []
  worker_address:
    description:
      - The address the routers reach this host's replicas at (the gateway role's worker URLs,
        C(gpufleet_advertise_address), else C(ansible_host)). Default O(address).
    type: str
  models_root:
    description:
      - Where C(gpufleet.vllm.model_sync) keeps the host's models (C(gpufleet_models_root)); O(state=gathered) reads
        the sizes it recorded there (RV(model_sizes)).
    type: path
    default: /var/lib/gpufleet/models
  agent_state_dir:
    description:
      - With O(state=gathered), the node agent's state directory on the host (C(gpufleet_agent_state_dir)), where it
        records the GPUs' Xid errors that make a GPU unhealthy for the plan. Default the agent's,
        C(/var/lib/gpufleet/agent).
    type: path
  max_xid_age_s:
    description:
      - With O(state=gathered), how many seconds a critical Xid makes its GPU unhealthy for the plan
        (C(gpufleet_max_xid_age_s); after a GPU reset without a reboot, for example). Unset, it counts until the host
        reboots, as C(gpufleet.vllm.gpu_facts)' O(gpufleet.vllm.gpu_facts#module:max_xid_age_s).
    type: int
  replica_guard_config:
    description:
      - With O(state=gathered), the path of the replica guard's HAProxy configuration (role C(deployments)); its
        existence is returned as RV(replica_guard_config_exists), so the role knows a guard of an earlier run is there
        to stop without a module run of its own.
    type: path
  drain_timeout:
    description:
      - Seconds a replica that left its routers may take to finish its requests in flight before its container stops
        anyway (a warning says so).
    type: int
    default: 60
  gateway_api_key:
    description:
      - Bearer token for the routers' worker API, when it asks for one. Never logged.
    type: str
  fleet_state:
    description:
      - The whole fleet's placements (RV(gpufleet.vllm.fleet_plan#module:fleet_state) of C(gpufleet.vllm.fleet_plan)),
        kept on this host in C(fleet/placements.json) of O(manifest_dir)'s parent (C(/var/lib/gpufleet) by default),
        so that a later run from any controller knows where the replicas of a host that is unreachable then are.
      - Written only when it differs from the host's copy (that counts as a change). Check mode only compares.
      - O(state=gathered) returns the host's copy as RV(fleet_state).
    type: dict
seealso:
  - module: gpufleet.vllm.fleet_plan
  - module: gpufleet.vllm.model_sync
  - module: gpufleet.vllm.vllm_image
  - module: gpufleet.vllm.vllm_container
  - module: gpufleet.vllm.fleet_report
"""

EXAMPLES = r"""
- name: What the plan needs from this host (managed deployments and GPUs)
  gpufleet.vllm.fleet_apply:
    state: gathered
    runtime: "{{ gpufleet_runtime | default('docker') }}"
  register: gpufleet_deployment_info

- name: Apply this host's part of the plan
  gpufleet.vllm.fleet_apply:
    replicas: "{{ gpufleet_plan.plan.hosts[inventory_hostname] | default([]) }}"
    removals: "{{ gpufleet_plan.plan.remove[inventory_hostname] | default([]) }}"
    secrets: "{{ gpufleet_deployments | gpufleet.vllm.deployment_secrets }}"
    address: "{{ ansible_host | default(inventory_hostname) }}"
    runtime: "{{ gpufleet_runtime | default('docker') }}"
    wait_timeout: 1800
  register: applied
  ignore_errors: true
"""

RETURN = r"""
records:
  description:
    - One record per removal (C(kind=remove)) and per replica that was reached (C(kind=replica)), in order; replicas
      after a failed container have none (not run).
    - "Each with C(name), C(changed), C(failed), C(failure_class) (for example C(gpu_oom), C(model_sync_failed),
      C(image_failed), C(port_conflict)), C(hint) (one line) and C(actions) (a removal's - its gateway drain, then
      its stop and removal); replicas also C(deployment), C(failed_step) (C(model_sync), C(vllm_image) or
      C(vllm_container)), C(rolled_back), C(phase), C(endpoint) and C(model_source) (for a model with C(sources):
      the one that served, null when none could)."
    - O(state=ray_restore) - the failed record of each multi-host replica whose old cluster it brought back, its
      C(hint) completed (whether the old server serves again).
  returned: O(state=applied), O(state=ray_restore)
  type: list
  elements: dict
  sample:
    - {kind: replica, name: chat-0, deployment: chat, changed: false, failed: false, failure_class: null,
       failed_step: null, hint: null, rolled_back: null, phase: ready, endpoint: "http://10.0.0.11:8000", actions: []}
failed_count:
  description: Records that failed.
  returned: O(state=applied)
  type: int
deployments:
  description:
    - The managed deployments of the host, as C(gpufleet.vllm.vllm_deployment_info) returns them (without the
      C(/health) probe and failure classification).
  returned: O(state=gathered)
  type: list
  elements: dict
gpus:
  description: The host's GPUs, the same list as C(gpufleet.vllm.gpu_facts)' C(ansible_facts.gpus).
  returned: O(state=gathered)
  type: list
  elements: dict
gpu_source:
  description: Where the GPU list came from (C(nvml), C(nvidia-smi) or C(none)).
  returned: O(state=gathered)
  type: str
model_sizes:
  description:
    - Per model that C(gpufleet.vllm.model_sync) installed under O(models_root), the weight bytes it recorded and the
      source (C(weight_bytes), C(source), C(repo_id), C(revision), C(commit), C(src), C(url)) - what
      C(gpufleet.vllm.fleet_plan) feeds into the VRAM estimate of a deployment that gives no size.
  returned: O(state=gathered)
  type: dict
  sample: {chat: {weight_bytes: 988097824, source: hf, repo_id: Qwen/Qwen2.5-0.5B-Instruct, revision: main,
           commit: 7ae557604adf67be50417f59c2c2f167def9a775, src: null, url: null}}
replica_guard_config_exists:
  description: Whether O(replica_guard_config) exists on the host (a replica guard of an earlier run).
  returned: O(state=gathered) with O(replica_guard_config)
  type: bool
fleet_state:
  description:
    - The fleet's placements this host keeps (O(fleet_state) of the last apply on it); null when it keeps none.
  returned: O(state=gathered)
  type: dict
  sample: {version: 1, generation: 3, placements: [{deployment: chat, replica: 0, host: gpu-a, gpus: ["0"],
           gpu_uuids: ["GPU-0a"], port: 8000}]}
ray_nodes:
  description:
    - O(state=gathered) - the Ray nodes on the host, as C(gpufleet.vllm.vllm_deployment_info) returns them.
    - O(state=ray_nodes) - one entry per node and Ray removal (C(name), C(role), C(action), C(changed), C(failed),
      C(hint)); O(state=ray_ready) - one per head (C(name), C(ready), C(status)); O(state=ray_stopped) - one per node
      (C(name), C(role), C(action) C(stop), C(stopped) or C(absent), C(changed)).
    - O(state=ray_nodes) says C(action=defer) for a node of a replica that rolls (replaced in its wave);
      O(state=ray_drain) - one per head (C(action) C(drain) or C(keep)); O(state=ray_swap) - one entry per node of
      the wave (C(action) C(replace) or C(keep)); O(state=ray_settle) - one
      per old node brought back (C(action=restore)).
  returned: O(state=gathered), O(state=ray_nodes), O(state=ray_ready), O(state=ray_stopped), O(state=ray_drain),
    O(state=ray_swap), O(state=ray_settle)
  type: list
  elements: dict
  sample: [{deployment: big, replica: 0, role: head, port: 6379, gpus: ["0", "1"], host: gpu-a,
            container_name: gpufleet-big-0-ray-head, state: running}]
removed:
  description: O(state=ray_settle) - the old Ray nodes (C(<node>-previous)) removed because their replica passed.
  returned: O(state=ray_settle)
  type: list
  elements: str
fleet_state_changed:
  description: Whether the host's copy of O(fleet_state) was written (would be, in check mode).
  returned: O(state=applied) and O(fleet_state) given
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.validate import secret_values
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import ray as fleet_ray
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import ray_wave
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.apply import apply_host, gather_host

ARGUMENT_SPEC = dict(
    state=dict(
        type="str",
        choices=[
            "applied",
            "gathered",
            "ray_nodes",
            "ray_ready",
            "ray_stopped",
            "ray_drain",
            "ray_swap",
            "ray_settle",
            "ray_restore",
        ],
        default="applied",
    ),
    ray_nodes=dict(type="list", elements="dict", default=[]),
    replicas=dict(type="list", elements="dict", default=[]),
    only=dict(type="list", elements="str"),
    defer=dict(type="list", elements="str", default=[]),
    removals=dict(type="list", elements="dict", default=[]),
    secrets=dict(type="dict", default={}, no_log=True),
    address=dict(type="str"),
    runtime=dict(type="str", choices=["docker", "podman"], default="docker"),
    docker_host=dict(type="str"),
    podman_socket=dict(type="str"),
    manifest_dir=dict(type="path", default="/var/lib/gpufleet/manifests"),
    wait_timeout=dict(type="int", default=1800),
    reset_failed=dict(type="bool", default=False),
    image_repository=dict(type="str", default="vllm/vllm-openai"),
    image_pull=dict(type="str", choices=["missing", "always", "never"], default="missing"),
    image_registry=dict(type="str"),
    hf_endpoint=dict(type="str"),
    fleet_state=dict(type="dict"),
    gateways=dict(type="list", elements="dict", default=[]),
    worker_address=dict(type="str"),
    drain_timeout=dict(type="int", default=60),
    models_root=dict(type="path", default="/var/lib/gpufleet/models"),
    agent_state_dir=dict(type="path"),
    max_xid_age_s=dict(type="int"),
    replica_guard_config=dict(type="path"),
    gateway_api_key=dict(type="str", no_log=True),
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    for replica in module.params["replicas"]:  # a secret in a replica's extra_args/env: refused, never echoed
        container = replica.get("container") if isinstance(replica, dict) else None
        if isinstance(container, dict):
            module.no_log_values.update(secret_values(container))
    if module.params["state"] == "gathered":
        try:
            module.exit_json(changed=False, **gather_host(module.params))
        except GpufleetError as err:
            module.fail_json(msg=str(err), **err.details)
    steps = {
        "applied": apply_host,
        "ray_nodes": fleet_ray.apply_nodes,
        "ray_stopped": fleet_ray.stop_nodes,
        "ray_drain": ray_wave.drain,
        "ray_swap": ray_wave.swap,
        "ray_settle": ray_wave.settle,
        "ray_restore": ray_wave.restore,
    }
    try:
        if module.params["state"] == "ray_ready":
            result, errors = fleet_ray.wait_ready(module.params, module.check_mode)
        else:
            result, errors = steps[module.params["state"]](module.params, module.check_mode, module.warn)
    except GpufleetError as err:
        module.fail_json(msg=str(err), **err.details)
    if not module._diff:
        result.pop("diff", None)
    if errors:
        module.fail_json(msg="; ".join(errors), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
