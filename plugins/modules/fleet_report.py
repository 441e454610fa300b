#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_report
short_description: Reports of the deployments role (converge summary, status, usage) and manifest parameters
version_added: 0.1.0
description:
  - "A helper of the C(gpufleet.vllm.deployments) role and the collection's playbooks. It runs as an action plugin on
    the controller (O(dest) is written there, no host is contacted); run it once (C(run_once: true))."
  - "O(kind=converge): from the fleet plan (C(gpufleet.vllm.fleet_plan)) and the per-host records the role collected,
    builds the machine-readable converge summary (per deployment and replica: host, GPUs, endpoint, action,
    changed/ok/failed, failure class, hint, rollback) and a human table; writes the summary as JSON to O(dest)."
  - "O(kind=status): from each host's C(gpufleet.vllm.vllm_deployment_info) result and the C(/metrics) text of each
    running server, builds the status table per deployment (host, name, model, GPUs, state, phase, uptime, endpoint,
    finished requests, generation tokens per second since start, last failure) and the same as JSON in O(dest)."
  - "O(kind=usage): from each host's C(gpufleet.vllm.vllm_usage) result, sums the usage of every replica per
    deployment and per owner (requests, prompt tokens, completion tokens, current tokens per second) and writes the
    report as JSON to O(dest)."
  - "O(kind=manifest): turns a reproducibility manifest written by C(gpufleet.vllm.vllm_container) (O(manifest) or
    O(manifest_path)) into C(gpufleet.vllm.vllm_container) parameters and names its deployment, for
    C(playbooks/redeploy.yml)."
author:
  - gpufleet maintainers (@gpufleet)
requirements:
  - prometheus-client (on the controller, for O(kind=status))
extends_documentation_fragment:
  - gpufleet.vllm.attributes
attributes:
  check_mode:
    support: full
    details:
      - "Builds the report in check mode too; O(dest) is written only outside check mode (the role runs this task
        with C(check_mode: false) so that C(--check) runs leave a summary for CI as well)."
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - Reports C(changed=false) always; writing the artifact is not a change of the fleet.
options:
  kind:
    description:
      - Which report to build.
    type: str
    choices: [converge, status, usage, manifest]
    required: true
  plan:
    description:
      - For O(kind=converge), the C(plan) returned by C(gpufleet.vllm.fleet_plan).
    type: dict
    default: {}
  plan_errors:
    description:
      - For O(kind=converge), the C(errors) returned by C(gpufleet.vllm.fleet_plan) (unschedulable deployments).
    type: list
    elements: dict
    default: []
  results:
    description:
      - For O(kind=converge), per host, its registered C(gpufleet.vllm.fleet_apply) result (an apply that failed
        before any record counts as a failure of the host) or just its C(records) (C(kind=replica) or
        C(kind=remove), C(name), C(changed), C(failed), C(failure_class), C(hint), C(endpoint), C(rolled_back),
        C(failed_step)). A host whose value is null did not run.
      - Hosts of O(from_hosts) missing here are read from their host vars.
    type: dict
    default: {}
  ray_nodes:
    description:
      - For O(kind=converge), per host, its registered C(gpufleet.vllm.fleet_apply) result of
        O(gpufleet.vllm.fleet_apply#module:state=ray_nodes) (the Ray step of multi-host replicas, C(docs/ray.md)).
        A multi-host replica's row lists its Ray nodes with what this step did to each; a failed node is the
        replica's failure.
      - Hosts of O(from_hosts) missing here are read from their host vars (C(deployments_ray_nodes)).
    type: dict
    default: {}
  ray_ready:
    description:
      - For O(kind=converge), per host, its registered C(gpufleet.vllm.fleet_apply) result of
        O(gpufleet.vllm.fleet_apply#module:state=ray_ready) (whether each Ray head's cluster showed every node and GPU).
      - Hosts of O(from_hosts) missing here are read from their host vars (C(deployments_ray_ready)).
    type: dict
    default: {}
  from_hosts:
    description:
      - Inventory hosts whose host vars fill in what is not given explicitly (only where the action plugin runs, that
        is in a play), so that a play passes its host list instead of gathering host vars in Jinja.
      - For O(kind=converge), each host's C(deployments_host_results), else C(gpufleet_host_results) (its registered
        C(gpufleet.vllm.fleet_apply) result; undefined = did not run), and its C(deployments_ray_nodes) and
        C(deployments_ray_ready) (O(ray_nodes), O(ray_ready)).
      - For O(kind=status), each host's C(deployments_status_info) or C(gpufleet_status_info) (O(infos)),
        C(deployments_status_scraped) or C(gpufleet_status_scraped) (O(metrics)) and C(ansible_host) (O(addresses)).
      - For O(kind=usage), each host's C(deployments_usage_samples) (O(usage)).
      - The C(deployments_*) names are what role C(gpufleet.vllm.deployments) registers; the C(gpufleet_*) names are
        still read for playbooks that register those.
    type: list
    elements: str
    default: []
  addresses:
    description:
      - For O(kind=status), per host, the address clients use (C(ansible_host)); endpoints that bind all
        interfaces are shown with it instead of C(127.0.0.1).
    type: dict
    default: {}
  unreachable:
    description:
      - Hosts that were unreachable in this run.
    type: list
    elements: str
    default: []
  run_check_mode:
    description:
      - Whether the converge ran in check mode (recorded in the summary).
    type: bool
    default: false
  infos:
    description:
      - For O(kind=status), per host, the registered result of C(gpufleet.vllm.vllm_deployment_info) (or its
        C(deployments) list).
    type: dict
    default: {}
  metrics:
    description:
      - For O(kind=status), per host, per deployment name (C(<deployment>-<replica>)), the text of the server's
        C(/metrics) (null when it was not scraped); or per host the registered result of an C(ansible.builtin.uri)
        loop (C(return_content=true)) over the host's C(gpufleet.vllm.vllm_deployment_info) C(deployments).
    type: dict
    default: {}
  usage:
    description:
      - For O(kind=usage), per host, the registered result of C(gpufleet.vllm.vllm_usage) (or its C(replicas) list).
        A host whose value is null did not run.
    type: dict
    default: {}
  manifest:
    description:
      - For O(kind=manifest), the manifest itself.
    type: dict
  manifest_path:
    description:
      - For O(kind=manifest), a JSON manifest file on the controller (not together with O(manifest)).
    type: path
  dest:
    description:
      - Write the report as JSON to this file (its directory is created). Not written in check mode.
    type: path
seealso:
  - module: gpufleet.vllm.fleet_plan
  - module: gpufleet.vllm.vllm_deployment_info
  - module: gpufleet.vllm.vllm_container
  - module: gpufleet.vllm.vllm_usage
"""

EXAMPLES = r"""
- name: Converge summary (JSON for CI, table for people)
  gpufleet.vllm.fleet_report:
    kind: converge
    plan: "{{ gpufleet_plan.plan }}"
    plan_errors: "{{ gpufleet_plan.errors }}"
    from_hosts: "{{ ansible_play_hosts_all }}"  # their gpufleet_host_results
    dest: "{{ gpufleet_artifacts_dir }}/converge-summary.json"
  run_once: true
  check_mode: false
  register: summary

- name: Show the table
  ansible.builtin.debug:
    msg: "{{ summary.table }}"

- name: Redeploy parameters from a manifest file
  gpufleet.vllm.fleet_report:
    kind: manifest
    manifest_path: ./chat-0.json
  register: redeploy
"""

RETURN = r"""
summary:
  description:
    - For O(kind=converge), the summary (C(version), C(kind), C(generated_at), C(check_mode), C(ok), C(counts),
      C(deployments) (per deployment C(status) and C(replicas), each with C(host), C(gpus), C(gpu_uuids), C(port),
      C(endpoint), C(action), C(status) (V(ok), V(changed), V(failed), V(unreachable), V(not_run)), C(changed),
      C(failed), C(failure_class), C(failed_step), C(hint), C(rolled_back), and C(model_source) when the model has
      C(sources), the one that served; a multi-host replica also C(hosts), head first, and C(ray_nodes), each
      with C(host), C(role) (V(head) or V(worker)), C(container), C(gpus), C(action) (what the Ray step did, e.g.
      V(created), V(unchanged), V(replaced), V(started), ...), C(status), C(ready), C(failed_step), C(hint)),
      C(removed) (a Ray part with its C(ray_node)), C(unschedulable),
      C(undeclared), C(unreachable_hosts)).
  returned: kind is converge
  type: dict
report:
  description:
    - For O(kind=status), C(rows) (one per managed container) and C(deployments) (the rows by deployment), each
      row with C(host), C(name), C(deployment), C(owner), C(model), C(gpus), C(state), C(phase), C(health),
      C(uptime_s), C(uptime), C(endpoint), C(requests), C(generation_tokens), C(tokens_per_s), C(last_failure).
    - For O(kind=usage), C(replicas) (per replica - C(host), C(name), C(deployment), C(owner), C(scraped),
      C(error) - its counters), C(deployments) (per deployment, with its C(owner)), C(owners) (per owner, with its
      C(deployments)) and C(total); each with the counts C(replicas) and C(scraped) and the sums C(requests),
      C(prompt_tokens), C(completion_tokens), C(tokens_per_s) (completion tokens per second between the two
      samples), C(prompt_tokens_per_s) (null where nothing was read); C(interval_s), C(unreachable_hosts).
  returned: kind is status or usage
  type: dict
params:
  description: For O(kind=manifest), the C(gpufleet.vllm.vllm_container) parameters the manifest gives.
  returned: kind is manifest
  type: dict
manifest:
  description:
    - For O(kind=manifest), the manifest, checked (version, name, image, model); pass it to
      C(gpufleet.vllm.vllm_container) O(gpufleet.vllm.vllm_container#module:from_manifest).
  returned: kind is manifest
  type: dict
deployment:
  description: For O(kind=manifest), the declared deployment the manifest's server is a replica of (C(chat-0) → C(chat)).
  returned: kind is manifest
  type: str
table:
  description: The human table, one line per element, then one line per problem.
  returned: kind is converge, status or usage
  type: list
  elements: str
ok:
  description: For O(kind=converge), whether everything was converged (nothing failed, unreachable, unschedulable or left out).
  returned: kind is converge
  type: bool
failed_hosts:
  description: For O(kind=converge), per host, the replicas (and removals) that failed there.
  returned: kind is converge
  type: dict
failed_count:
  description: For O(kind=converge), replicas and removals that failed, plus unschedulable deployments.
  returned: kind is converge
  type: int
dest:
  description: Where the JSON was written.
  returned: when O(dest) is set and not in check mode
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.report import run_report

ARGUMENT_SPEC = dict(
    kind=dict(type="str", choices=["converge", "status", "usage", "manifest"], required=True),
    plan=dict(type="dict", default={}),
    plan_errors=dict(type="list", elements="dict", default=[]),
    results=dict(type="dict", default={}),
    ray_nodes=dict(type="dict", default={}),
    ray_ready=dict(type="dict", default={}),
    from_hosts=dict(type="list", elements="str", default=[]),
    addresses=dict(type="dict", default={}),
    unreachable=dict(type="list", elements="str", default=[]),
    run_check_mode=dict(type="bool", default=False),
    infos=dict(type="dict", default={}),
    metrics=dict(type="dict", default={}),
    usage=dict(type="dict", default={}),
    manifest=dict(type="dict"),
    manifest_path=dict(type="path"),
    dest=dict(type="path"),
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        module.exit_json(**run_report(module.params, module.check_mode))
    except GpufleetError as err:
        module.fail_json(msg=str(err), **err.details)


if __name__ == "__main__":
    main()
