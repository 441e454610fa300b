#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gateway_workers
short_description: Make a vllm-router gateway's worker set what it must be (add, remove, or the exact list)
description:
  - Reads the router's workers (C(GET /list_workers)) and adds or removes workers through its API
    (C(POST /add_worker), C(POST /remove_worker)) until the set is what the options say. The router keeps routing
    while this happens; nothing restarts.
  - Rollouts take a replica out of the gateway before its container stops (O(remove)) and put it back only after
    it passed the readiness gate (O(add)); the router itself adds a worker only once it answers C(/health). A
    removed worker gets no new request; the requests it is serving finish.
  - Idempotent from the listed set, not from status codes (vllm-router answers 200 to removing an unknown worker).
  - The gateway is described in C(docs/gateway.md); the role C(gpufleet.vllm.gateway) runs the routers.
version_added: 0.2.0
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.vllm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads the router's set and reports what would be added and removed; calls nothing that changes it.
  diff_mode:
    support: full
    details:
      - C(before) and C(after) are the sorted worker URL lists.
  idempotent:
    support: full
options:
  router_url:
    description:
      - The router's base URL, for example V(http://10.0.0.5:30000) (the gateway host's bind address and the
        deployment's gateway port; the role registers them as C(gateway_routers)).
    type: str
    required: true
  workers:
    description:
      - The whole worker set (C(http://host:port) of each replica). Workers not in the list are removed.
      - Omit it to keep the current set and only apply O(add) and O(remove).
    type: list
    elements: str
  add:
    description:
      - Workers that must be in the set (added to O(workers) or to the current set).
    type: list
    elements: str
    default: []
  remove:
    description:
      - Workers that must not be in the set. A URL in both O(add) and O(remove) is an error.
    type: list
    elements: str
    default: []
  workers_file:
    description:
      - Path of the router's workers file (on the host the module runs on, the gateway host); written with the
        resulting set, so a restarted router comes back with it (the launcher adds its URLs after start).
      - Empty - not written. The role sets it to C(<gateway_install_dir>/<deployment>/workers).
    type: path
    default: ""
  timeout:
    description:
      - Seconds for each read and remove call.
    type: float
    default: 10
  add_timeout:
    description:
      - Seconds an add may take. The router answers an add once the worker passed its health check, within its
        C(--worker-startup-timeout-secs) (role default 120); the call fails when the worker did not become healthy.
    type: float
    default: 150
"""

EXAMPLES = r"""
- name: Take chat-1 out of the gateway before its container is replaced
  gpufleet.vllm.gateway_workers:
    router_url: http://10.0.0.5:30000
    remove: [http://10.0.0.12:8000]
    workers_file: /opt/gpufleet/gateway/chat/workers
  delegate_to: gw-1

- name: Put it back after it passed the readiness gate
  gpufleet.vllm.gateway_workers:
    router_url: http://10.0.0.5:30000
    add: [http://10.0.0.12:8000]
    workers_file: /opt/gpufleet/gateway/chat/workers
  delegate_to: gw-1

- name: Exactly the plan's replicas
  gpufleet.vllm.gateway_workers:
    router_url: http://10.0.0.5:30000
    workers: [http://10.0.0.11:8000, http://10.0.0.12:8000]
"""

RETURN = r"""
added:
  description: Workers added (or that would be added in check mode), sorted.
  returned: always
  type: list
  elements: str
removed:
  description: Workers removed (or that would be removed), sorted.
  returned: always
  type: list
  elements: str
workers:
  description: The set after the run (in check mode, the set it would have), sorted.
  returned: always
  type: list
  elements: str
health:
  description: >-
    Each worker's URL, C(healthy) as the router last checked it and C(load) (the router's load count of it, kept
    by the load-aware policies - V(power_of_two), V(cache_aware); always 0 with V(round_robin)).
  returned: always
  type: list
  elements: dict
workers_file_changed:
  description: Whether O(workers_file) was (or would be) rewritten.
  returned: always
  type: bool
diff:
  description: C(before) and C(after) worker lists (with C(--diff)).
  returned: when diff mode is on
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.workers import RouterClient, ensure_workers

ARGUMENT_SPEC = {
    "router_url": {"type": "str", "required": True},
    "workers": {"type": "list", "elements": "str"},
    "add": {"type": "list", "elements": "str", "default": []},
    "remove": {"type": "list", "elements": "str", "default": []},
    "workers_file": {"type": "path", "default": ""},
    "timeout": {"type": "float", "default": 10},
    "add_timeout": {"type": "float", "default": 150},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    try:
        client = RouterClient(p["router_url"], timeout=p["timeout"], add_timeout=p["add_timeout"])
        res = ensure_workers(client, p["workers"], p["add"], p["remove"], module.check_mode, p["workers_file"] or "")
        health = client.workers()
    except GpufleetError as e:
        module.fail_json(msg=str(e), **e.details)
    out = {
        "changed": res["changed"],
        "added": res["added"],
        "removed": res["removed"],
        "workers": res["after"],
        "health": health,
        "workers_file_changed": res["workers_file_changed"],
    }
    if module._diff:
        out["diff"] = {"before": {"workers": res["before"]}, "after": {"workers": res["after"]}}
    module.exit_json(**out)


if __name__ == "__main__":
    main()
