#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: monitoring_config
short_description: Prometheus scrape targets, scrape config, alert rules and a Grafana dashboard for a gpufleet
version_added: 0.1.0
description:
  - Renders, from each GPU host's C(gpufleet.vllm.vllm_deployment_info) result, the Prometheus C(file_sd) target
    files of every managed vLLM server (labels C(deployment), C(replica), C(host), C(model), C(gpus)) and, with
    O(node_agent_port), of the node agent's exporter on each host; the scrape configs (a whole C(prometheus.yml) or
    a fragment); the alert rules; and a Grafana dashboard. Writes them on the host the task runs on (the monitoring
    host), only where they differ.
  - Each vLLM job is scraped twice from the same target file, C(/metrics) (job O(job_name)) and C(/health) (job
    C(<job_name>-health)); the label C(gpufleet_probe) tells them apart, and C(up) of the health job is the health
    check. Adding or removing a deployment changes only the target files, which Prometheus re-reads without a
    reload.
  - Servers with an API key are scraped by a job that reads the bearer token from O(credentials_file); the token is
    never written into the configuration.
  - With O(ray_metrics), the Ray nodes of multi-host replicas (C(ray_nodes) of O(infos), C(docs/ray.md)) are
    scraped by a job of their own, C(gpufleet-ray) (Ray's metrics on each node's metrics export port, labels
    C(deployment), C(replica), C(host), C(ray_role), C(gpus)); the job is there only while some GPU host runs a Ray
    node.
  - The Prometheus configuration and rules are checked with C(promtool) (when it is found) before they replace the
    live files. The rules and dashboard are described in C(docs/monitoring.md).
  - "An action plugin fills O(infos) and O(addresses) from the host vars of O(from_hosts), then runs the module on
    the task's host (the controller with C(delegate_to: localhost), or a C(monitoring) host). The YAML files (rules,
    configuration) are rendered by the action plugin on the controller, so the monitoring host needs no PyYAML."
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.vllm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Renders and validates everything and reports which files would change; writes nothing and does not reload.
  diff_mode:
    support: full
    details:
      - One diff per changed file; the content of the credentials file is never shown.
  idempotent:
    support: full
options:
  infos:
    description:
      - Per GPU host (inventory name), the registered result of C(gpufleet.vllm.vllm_deployment_info) (or its
        C(deployments) list). Hosts of O(from_hosts) missing here are read from their host var O(info_var).
      - A deployment counts as API-key protected when its entry has C(api_key=true) or its name is in
        O(credentials_files).
    type: dict
    default: {}
  addresses:
    description:
      - Per GPU host, the address Prometheus reaches it at; defaults to each O(from_hosts) host's C(ansible_host),
        else its inventory name. Servers bound to all interfaces are scraped there; servers bound to loopback only
        are scraped only when the address is loopback, else skipped (RV(skipped)).
    type: dict
    default: {}
  from_hosts:
    description:
      - Inventory hosts whose host vars fill in O(infos) (host var O(info_var)) and O(addresses) (C(ansible_host)),
        so that a play passes its host list instead of gathering host vars in Jinja. Read by the action plugin.
    type: list
    elements: str
    default: []
  keep_unreachable:
    description:
      - Hosts of O(from_hosts) without a result in O(infos) (unreachable in this run) keep the target entries they
        have in the current target files, so that their servers stay scraped and alert instead of vanishing.
    type: bool
    default: true
  info_var:
    description:
      - The host var of O(from_hosts) that holds the registered C(gpufleet.vllm.vllm_deployment_info) result.
    type: str
    default: gpufleet_monitoring_info
  agent_hosts:
    description:
      - Hosts that run the node agent's exporter; default the hosts of O(infos) and O(from_hosts). Used with
        O(node_agent_port).
    type: list
    elements: str
    default: []
  node_agent_port:
    description:
      - Port of the node agent's Prometheus exporter on every GPU host (the C(gpufleet.vllm.node_agent) role's
        C(gpufleet_agent_port), 9840 by default). Set, it adds the job C(gpufleet-agent) and the agent's alerts
        (agent down, restarts, serve_for expiring). Unset, no agent job.
    type: int
  agent_metrics:
    description:
      - Names of the node agent's metrics the rules use, C(restarts) (counter, default
        C(gpufleet_agent_restarts_total)) and C(serve_until) (gauge, seconds left until the serve-until time, default
        C(gpufleet_agent_serve_until_seconds)) and C(failed) (gauge, 1 once the agent stopped a deployment for good,
        default C(gpufleet_agent_deployment_failed)), all labelled C(deployment) (see C(gpufleet.vllm.node_agent)).
    type: dict
    default: {}
  targets_dir:
    description:
      - Directory of the C(file_sd) target files (C(<job>.json)); created when missing.
    type: path
    required: true
  rules_path:
    description:
      - The alert rules file. Unset, no rules are written (and none referenced by a full config).
    type: path
  config_path:
    description:
      - "The Prometheus configuration to write: with O(config_mode=full) the whole C(prometheus.yml), with
        O(config_mode=fragment) a file holding only C(scrape_configs) to merge into your own. Unset, none."
    type: path
  config_mode:
    description:
      - Whole configuration or scrape configs only (see O(config_path)).
    type: str
    choices: [full, fragment]
    default: full
  dashboards_dir:
    description:
      - Directory for the Grafana dashboard (C(gpufleet-vllm.json)), e.g. one a Grafana file provider reads.
        Unset, no dashboard.
    type: path
  job_name:
    description:
      - Name of the vLLM scrape job; protected servers go to C(<job_name>-auth) (or C(<job_name>-auth-<deployment>)),
        every job has a C(-health) twin.
    type: str
    default: vllm
  health_probe:
    description:
      - Add the C(/health) jobs (needed by the C(VllmHealthFailing) alert).
    type: bool
    default: true
  ray_metrics:
    description:
      - Scrape the Ray nodes of multi-host replicas (job C(gpufleet-ray)). Ray serves its metrics only when its
        dashboard dependencies are installed (C(ray[default]), e.g. a deployment's C(extra_pip_packages)); the vLLM
        images have a minimal Ray, whose nodes would only show down, so this is off by default.
    type: bool
    default: false
  credentials_file:
    description:
      - File on the monitoring host holding the bearer token of the API-key protected servers (Prometheus'
        C(authorization.credentials_file)). Must exist when the configuration is checked; O(api_key) writes it.
    type: path
  credentials_files:
    description:
      - Per deployment (or replica) name, its own credentials file; such a deployment is treated as protected.
    type: dict
    default: {}
  api_key:
    description:
      - The bearer token to write to O(credentials_file) (mode C(0640)). Never shown in output or diffs.
    type: str
  scrape_interval:
    description:
      - Global C(scrape_interval) of a full configuration.
    type: str
    default: 15s
  evaluation_interval:
    description:
      - Global C(evaluation_interval) of a full configuration.
    type: str
    default: 15s
  job_scrape_interval:
    description:
      - C(scrape_interval) of the generated jobs only (default the global one).
    type: str
  scrape_timeout:
    description:
      - C(scrape_timeout) of the generated jobs.
    type: str
  rules_interval:
    description:
      - Evaluation interval of the rule group (default the global one).
    type: str
  alerts:
    description:
      - Per alert name, overrides of C(enabled), C(for), C(severity) and the alert's own C(threshold), C(window),
        C(quantile) (see C(docs/monitoring.md) for the defaults).
    type: dict
    default: {}
  extra_scrape_configs:
    description:
      - More scrape configs appended to a full configuration (e.g. Prometheus itself).
    type: list
    elements: dict
    default: []
  external_labels:
    description:
      - C(global.external_labels) of a full configuration.
    type: dict
    default: {}
  alertmanagers:
    description:
      - Alertmanager addresses (C(host:port)) of a full configuration.
    type: list
    elements: str
    default: []
  validate:
    description:
      - Check the configuration and rules with C(promtool) before they replace the live files, when C(promtool) is
        found (see O(promtool)). A configuration that C(promtool) refuses fails the task and is not written.
    type: bool
    default: true
  promtool:
    description:
      - The C(promtool) executable; default C(promtool) on E(PATH) (skipped silently when absent).
    type: str
  owner:
    description:
      - Owner of the written files (default unchanged / the user running the module).
    type: str
  group:
    description:
      - Group of the written files (e.g. C(prometheus), so that Prometheus can read the credentials file).
    type: str
  reload_url:
    description:
      - When the configuration or rules changed, POST here to make Prometheus reload (e.g.
        C(http://127.0.0.1:9090/-/reload); Prometheus needs C(--web.enable-lifecycle)). Target files need no reload.
    type: str
  reload_timeout:
    description:
      - Seconds the reload request may take.
    type: int
    default: 10
  rendered:
    description:
      - Internal, set by the action plugin; a task must not set it. The YAML text of the rules and configuration,
        rendered on the controller from the documents the module computed, with their digest.
    type: dict
seealso:
  - module: gpufleet.vllm.vllm_deployment_info
  - name: Prometheus file-based service discovery
    description: The target file format.
    link: https://prometheus.io/docs/prometheus/latest/configuration/configuration/#file_sd_config
"""

EXAMPLES = r"""
- name: Managed deployments of every GPU host
  gpufleet.vllm.vllm_deployment_info:
  register: gpufleet_monitoring_info

- name: Prometheus files on the controller
  gpufleet.vllm.monitoring_config:
    from_hosts: "{{ ansible_play_hosts }}"   # their gpufleet_monitoring_info and ansible_host
    targets_dir: /etc/prometheus/gpufleet
    rules_path: /etc/prometheus/rules/gpufleet.yml
    config_path: /etc/prometheus/prometheus.yml
    dashboards_dir: /var/lib/grafana/dashboards
    node_agent_port: 9840
    reload_url: http://127.0.0.1:9090/-/reload
  delegate_to: localhost
  run_once: true

- name: Only the scrape configs, to merge into an existing prometheus.yml
  gpufleet.vllm.monitoring_config:
    infos: "{{ {'gpu-a': info_a, 'gpu-b': info_b} }}"
    targets_dir: /etc/prometheus/gpufleet
    config_path: /etc/prometheus/gpufleet-scrape.yml
    config_mode: fragment
    alerts:
      VllmKvCacheHigh: {threshold: 0.95}
      VllmServerRestarted: {enabled: false}
"""

RETURN = r"""
files:
  description: Every file the module manages, with C(path), C(kind) (V(targets), V(rules), V(config_full),
    V(config_fragment), V(dashboard), V(credentials)) and whether it C(changed) (would change in check mode).
  returned: always
  type: list
  elements: dict
targets:
  description: Per scrape job, its C(file_sd) entries (C(targets), C(labels)).
  returned: always
  type: dict
kept:
  description: Target entries of hosts without a result this run that were kept (C(host), C(deployment), C(job)).
  returned: always
  type: list
  elements: dict
skipped:
  description: Servers that cannot be scraped from elsewhere (C(host), C(name), C(reason)).
  returned: always
  type: list
  elements: dict
scrape_configs:
  description: The generated scrape configs.
  returned: always
  type: list
  elements: dict
alerts:
  description: Names of the alert rules written.
  returned: always
  type: list
  elements: str
reload_needed:
  description: Whether the configuration or rules changed (Prometheus must reload them).
  returned: always
  type: bool
reloaded:
  description: Whether the reload request was sent (and answered 2xx).
  returned: always
  type: bool
validated:
  description: Files checked with C(promtool) before writing.
  returned: always
  type: list
  elements: str
promtool:
  description: The C(promtool) used, null when none was found or O(validate=false).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.run import run_config

ARGUMENT_SPEC = dict(
    infos=dict(type="dict", default={}),
    addresses=dict(type="dict", default={}),
    from_hosts=dict(type="list", elements="str", default=[]),
    info_var=dict(type="str", default="gpufleet_monitoring_info"),
    keep_unreachable=dict(type="bool", default=True),
    agent_hosts=dict(type="list", elements="str", default=[]),
    node_agent_port=dict(type="int"),
    agent_metrics=dict(type="dict", default={}),
    targets_dir=dict(type="path", required=True),
    rules_path=dict(type="path"),
    config_path=dict(type="path"),
    config_mode=dict(type="str", choices=["full", "fragment"], default="full"),
    dashboards_dir=dict(type="path"),
    job_name=dict(type="str", default="vllm"),
    health_probe=dict(type="bool", default=True),
    ray_metrics=dict(type="bool", default=False),
    credentials_file=dict(type="path"),
    credentials_files=dict(type="dict", default={}),
    api_key=dict(type="str", no_log=True),
    scrape_interval=dict(type="str", default="15s"),
    evaluation_interval=dict(type="str", default="15s"),
    job_scrape_interval=dict(type="str"),
    scrape_timeout=dict(type="str"),
    rules_interval=dict(type="str"),
    alerts=dict(type="dict", default={}),
    extra_scrape_configs=dict(type="list", elements="dict", default=[]),
    external_labels=dict(type="dict", default={}),
    alertmanagers=dict(type="list", elements="str", default=[]),
    validate=dict(type="bool", default=True),
    promtool=dict(type="str"),
    owner=dict(type="str"),
    group=dict(type="str"),
    reload_url=dict(type="str"),
    reload_timeout=dict(type="int", default=10),
    rendered=dict(type="dict"),
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = run_config(module.params, module.check_mode)
    except GpufleetError as err:
        module.fail_json(msg=str(err), **err.details)
    diff = result.pop("diff", None)  # none in a render request
    if module._diff and diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
