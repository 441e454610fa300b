#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gateway_info
short_description: The vllm-router gateways of a host - address, ports, up, each worker's health
description:
  - Lists the routers the role C(gpufleet.vllm.gateway) configured on this host (C(<install_dir>/routers/*/router.args))
    and asks each one for its workers (C(GET /workers)) - the URL, whether the router's last health check passed and the
    router's load count. A router that does not answer is reported with RV(routers[].up=false) and the error.
  - Used by C(playbooks/status.yml) and the C(gpufleet.vllm.monitoring) role (C(docs/gateway.md)).
version_added: 0.2.0
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.vllm.attributes
  - gpufleet.vllm.attributes.INFO_MODULE
options:
  install_dir:
    description: The gateway's directory (the role's C(gateway_install_dir)).
    type: path
    default: /opt/gpufleet/gateway
  timeout:
    description: Seconds for each router's answer.
    type: float
    default: 5
"""

EXAMPLES = r"""
- name: The gateways of this host
  gpufleet.vllm.gateway_info:
  register: gw
"""

RETURN = r"""
routers:
  description: One entry per configured router, sorted by deployment.
  returned: always
  type: list
  elements: dict
  contains:
    deployment: {description: The deployment., type: str}
    address: {description: The address clients reach it at (HAProxy's behind the admin guard; the router then listens on loopback)., type: str}
    port: {description: Its port (clients use C(http://address:port/v1)., type: int}
    metrics_port: {description: Its Prometheus port (C(/metrics))., type: int}
    url: {description: Its base URL., type: str}
    up: {description: Whether it answered., type: bool}
    workers:
      description: >-
        Each worker's C(url), C(healthy) (the router's last health check) and C(load) (the router's load count,
        kept by load-aware policies only; 0 with V(round_robin)).
      type: list
      elements: dict
    error: {description: Why it did not answer (null when up)., type: str}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.status import gateway_status

ARGUMENT_SPEC = {
    "install_dir": {"type": "path", "default": "/opt/gpufleet/gateway"},
    "timeout": {"type": "float", "default": 5},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        routers = gateway_status(module.params["install_dir"], module.params["timeout"])
    except GpufleetError as e:
        module.fail_json(msg=str(e), **e.details)
    module.exit_json(changed=False, routers=routers)


if __name__ == "__main__":
    main()
