#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_facts
short_description: GPU inventory, health and container-runtime GPU readiness as Ansible facts
description:
  - Lists the host's NVIDIA GPUs with memory, temperature, utilization, power, compute capability, MIG mode and
    compute processes, marks each healthy or not against thresholds, and says whether docker or podman can give a
    container a GPU on this host.
  - Sources, in order with O(source=auto) - NVML through the C(nvidia-ml-py) package (C(pynvml)); if the package or
    C(libnvidia-ml.so.1) is missing or NVML fails to initialise (driver not loaded, driver/library version
    mismatch, ...), C(nvidia-smi --query-gpu=... --format=csv,noheader,nounits), bounded by O(timeout); else no
    GPU. RV(ansible_facts.gpu_source) says which source answered and RV(ansible_facts.gpu_source_reason) why the
    ones before it did not, in plain words.
  - A host without GPUs is a normal answer (RV(ansible_facts.gpu_count=0)), not an error, unless O(min_gpus) asks
    for more. A value the device does not support is V(null).
  - Docker readiness - dockerd does not list its device drivers, so the module reads the PATH of the dockerd
    process in its mount namespace (root only) and looks for C(nvidia-container-runtime-hook) there, which is what
    makes dockerd register its C(nvidia) device driver for C(--gpus) and device requests. Without access to that
    process it looks on its own PATH and says the answer is a guess. Podman readiness - CDI spec files in
    O(cdi_spec_dirs) declaring C(nvidia.com/gpu) devices.
  - Never changes anything on the host.
version_added: 0.1.0
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.vllm.attributes
  - gpufleet.vllm.attributes.FACTS
  - gpufleet.vllm.attributes.INFO_MODULE
options:
  source:
    description:
      - Where GPU information comes from. V(auto) tries NVML, then nvidia-smi. V(none) queries no GPU (only the
        container-runtime readiness is gathered).
    type: str
    choices: [auto, nvml, nvidia_smi, none]
    default: auto
  gpus:
    description:
      - Restrict the facts (and the health verdict) to these GPUs, by index (V(0)) or UUID (V(GPU-...)).
        A GPU named here that the host does not have fails the task. Empty means all GPUs.
    type: list
    elements: str
    default: []
  max_temperature_c:
    description:
      - A GPU hotter than this (degrees Celsius) is unhealthy.
    type: int
    default: 85
  min_free_memory_mib:
    description:
      - A GPU with less free memory than this (MiB) is unhealthy. V(0) disables the check.
    type: int
    default: 0
  max_utilization_pct:
    description:
      - A GPU busier than this (percent) is unhealthy. V(100) disables the check.
    type: int
    default: 100
  xid_file:
    description:
      - The record of the Xid errors the node agent (role P(gpufleet.vllm.node_agent#role)) saw, per GPU. NVML reports
        Xid errors only as events that a waiting process sees, so this module reads what the agent recorded - without
        a running agent there is none and Xids judge nothing.
      - A critical Xid (48 double-bit ECC, 64 ECC page retirement/row remapping failure, 74 NVLink, 79 fallen off the
        bus, 94/95 contained/uncontained ECC, 119/120 GSP) seen since the host booted makes the GPU unhealthy.
    type: path
    default: /var/lib/gpufleet/agent/xid.json
  max_xid_age_s:
    description:
      - A critical Xid counts only this many seconds (after a GPU reset without a reboot, for example). Unset, it
        counts until the host reboots (or its entry is removed from O(xid_file)).
    type: int
  fail_on_unhealthy:
    description:
      - Fail the task when a (selected) GPU is unhealthy. The facts are returned either way.
    type: bool
    default: false
  min_gpus:
    description:
      - Fail the task when fewer GPUs than this are found (after O(gpus) selection), saying why.
    type: int
    default: 0
  nvidia_smi_path:
    description:
      - The nvidia-smi executable. Default - found on PATH, else in C(/usr/bin) or C(/usr/local/nvidia/bin).
    type: path
  timeout:
    description:
      - Seconds the nvidia-smi calls may take together before they are killed and the source is given up.
    type: float
    default: 10
  container_runtime:
    description:
      - Gather RV(ansible_facts.gpu_container_runtime) (docker and podman GPU readiness).
    type: bool
    default: true
  docker_host:
    description:
      - Docker daemon to ask (C(unix://...) or C(tcp://...)). Default - E(DOCKER_HOST), else
        C(unix:///var/run/docker.sock).
    type: str
  cdi_spec_dirs:
    description:
      - Directories holding CDI spec files, as podman reads them.
    type: list
    elements: path
    default: [/etc/cdi, /var/run/cdi]
notes:
  - Needs C(nvidia-ml-py) on the target for the NVML source (it is in the collection's requirements-host.txt); without
    it the module falls back to nvidia-smi and says so.
  - With O(source=nvidia_smi), RV(ansible_facts.gpu_cuda_version) is V(null) (nvidia-smi has no query field for it).
  - Memory follows nvidia-smi - used excludes the memory the driver reserves, so used + free can be less than total.
"""

EXAMPLES = r"""
- name: Gather GPU facts (then use ansible_facts.gpus)
  gpufleet.vllm.gpu_facts:

- name: Require two healthy, cool GPUs with 70 GiB free before deploying
  gpufleet.vllm.gpu_facts:
    min_gpus: 2
    max_temperature_c: 80
    min_free_memory_mib: 71680
    fail_on_unhealthy: true

- name: Look at one GPU by UUID, through nvidia-smi only
  gpufleet.vllm.gpu_facts:
    source: nvidia_smi
    gpus: [GPU-6de7df54-45cf-4a7d-0d9a-68d797ea5517]
    timeout: 5

- name: Stop early when no container engine can use the GPUs
  ansible.builtin.assert:
    that: ansible_facts.gpu_container_runtime.ready
    fail_msg: "{{ ansible_facts.gpu_container_runtime.summary }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts added to the host.
  returned: always
  type: dict
  contains:
    gpu_count:
      description: Number of GPUs in RV(ansible_facts.gpus) (after O(gpus) selection).
      type: int
      sample: 2
    gpu_source:
      description: The source that answered; V(none) when none did.
      type: str
      choices: [nvml, nvidia_smi, none]
      sample: nvml
    gpu_source_reason:
      description: Why the sources tried before the one that answered (or all of them) did not, in plain words; V(null) when NVML answered.
      type: str
      sample: "NVML: the NVIDIA kernel driver is not loaded: install the driver or load it (modprobe nvidia), then check that nvidia-smi answers"
    gpu_driver_version:
      description: NVIDIA driver version.
      type: str
      sample: "550.54.15"
    gpu_cuda_version:
      description: Highest CUDA version the driver supports (V(null) from nvidia-smi).
      type: str
      sample: "12.4"
    gpu_healthy:
      description: Every GPU in RV(ansible_facts.gpus) is healthy (V(true) when there are none).
      type: bool
      sample: true
    gpus:
      description: One entry per GPU, by index. A field the device does not support is V(null).
      type: list
      elements: dict
      contains:
        index:
          description: NVML / nvidia-smi index.
          type: int
          sample: 0
        uuid:
          description: GPU UUID.
          type: str
          sample: GPU-6de7df54-45cf-4a7d-0d9a-68d797ea5517
        name:
          description: Product name.
          type: str
          sample: NVIDIA H100 80GB HBM3
        memory_total_mib:
          description: Total memory in MiB.
          type: int
          sample: 81559
        memory_used_mib:
          description: Used memory in MiB (without the driver-reserved part).
          type: int
          sample: 0
        memory_free_mib:
          description: Free memory in MiB.
          type: int
          sample: 81005
        temperature_c:
          description: Core temperature in degrees Celsius.
          type: int
          sample: 33
        utilization_gpu_pct:
          description: Percent of time a kernel ran over the last sample period.
          type: int
          sample: 0
        utilization_memory_pct:
          description: Percent of time memory was read or written over the last sample period.
          type: int
          sample: 0
        power_draw_w:
          description: Power draw in watts.
          type: float
          sample: 105.0
        power_limit_w:
          description: Enforced power limit in watts.
          type: float
          sample: 700.0
        compute_capability:
          description: CUDA compute capability, C(MAJOR.MINOR).
          type: str
          sample: "9.0"
        pci_bus_id:
          description: PCI bus id, C(DDDDDDDD:BB:DD.F).
          type: str
          sample: "00000000:18:00.0"
        mig_mode:
          description: V(true) when MIG is enabled, V(false) when disabled, V(null) on GPUs without MIG.
          type: bool
          sample: false
        processes:
          description: Compute processes on the GPU (V(null) when the device cannot list them).
          type: list
          elements: dict
          contains:
            pid:
              description: Process id (in the host's PID namespace).
              type: int
            used_memory_mib:
              description: GPU memory the process uses, in MiB (V(null) when not available).
              type: int
        ecc_errors_uncorrected:
          description:
            - Uncorrectable ECC errors since the driver loaded (volatile counter; V(null) without ECC). Any makes the GPU
              unhealthy.
          type: int
          sample: 0
        retired_pages_pending:
          description: Memory pages wait to be retired at the next GPU reset (V(null) when not supported); makes it unhealthy.
          type: bool
          sample: false
        xid_errors:
          description:
            - The critical Xid errors the node agent recorded for this GPU that still count (O(xid_file)), oldest first,
              each with C(xid), C(at) (ISO 8601, UTC) and C(meaning). Any makes the GPU unhealthy.
          type: list
          elements: dict
          sample: [{xid: 79, at: "2026-12-03T04:21:07Z", meaning: GPU has fallen off the bus}]
        healthy:
          description:
            - No health issue. The fleet's placement puts no new replica on an unhealthy GPU and vllm_container's
              pre-checks refuse it.
          type: bool
          sample: true
        health_issues:
          description: Thresholds broken and fields that could not be read (other than unsupported ones).
          type: list
          elements: str
          sample: ["temperature 91 C is above max_temperature_c (85 C)"]
    gpu_container_runtime:
      description: Can a container get a GPU here (V(null) with O(container_runtime=false)).
      type: dict
      contains:
        ready:
          description: Docker or podman can give a container a GPU.
          type: bool
        summary:
          description: One line - what works, or "this host cannot run GPU containers" and why.
          type: str
        docker:
          description:
            - C(reachable), C(server_version), C(runtimes), C(nvidia_runtime) (an C(nvidia) runtime is configured),
              C(gpu_device_driver) (dockerd has its NVIDIA device driver), C(gpu_device_driver_evidence),
              C(gpu_ready), C(reason) (why not, or V(null)).
          type: dict
        podman:
          description:
            - C(installed), C(cdi_spec_dirs), C(cdi_spec_files), C(cdi_devices) (like C(nvidia.com/gpu=0)),
              C(gpu_ready), C(reason) (why not, or a note such as a stale spec; V(null) when nothing to say).
          type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.facts import SOURCES, gather_gpus
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.health import RANGES as HEALTH_RANGES
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.health import (
    Thresholds,
    range_problems,
    unhealthy_summary,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.xid import XID_FILE
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.gpu_runtime import (
    DEFAULT_CDI_DIRS,
    container_readiness,
)

ARGUMENT_SPEC = dict(
    source=dict(type="str", choices=list(SOURCES), default="auto"),
    gpus=dict(type="list", elements="str", default=[]),
    max_temperature_c=dict(type="int", default=85),
    min_free_memory_mib=dict(type="int", default=0),
    max_utilization_pct=dict(type="int", default=100),
    xid_file=dict(type="path", default=XID_FILE),
    max_xid_age_s=dict(type="int"),
    fail_on_unhealthy=dict(type="bool", default=False),
    min_gpus=dict(type="int", default=0),
    nvidia_smi_path=dict(type="path"),
    timeout=dict(type="float", default=10),
    container_runtime=dict(type="bool", default=True),
    docker_host=dict(type="str"),
    cdi_spec_dirs=dict(type="list", elements="path", default=list(DEFAULT_CDI_DIRS)),
)


# Values the argument spec's types let through: (low, high, low_open, what the option means); the health thresholds'
# ranges are _gpu/health.py's.
RANGES = {
    "timeout": (0, None, True, "seconds NVML / nvidia-smi may take, e.g. 10"),
    "min_gpus": (0, None, False, "the fewest GPUs this host must have"),
    **HEALTH_RANGES,
}


def value_problems(p: dict) -> list[str]:
    out = range_problems(p, RANGES)
    for path in p.get("cdi_spec_dirs") or []:
        if not str(path).startswith("/"):
            out.append(f"cdi_spec_dirs: {path!r} is not an absolute path; give directories such as /etc/cdi")
    return out


def run(module: AnsibleModule) -> None:
    p = module.params
    problems = value_problems(p)
    if problems:
        module.fail_json(msg="gpu_facts: " + "; ".join(problems), problems=problems)
    thresholds = Thresholds(
        p["max_temperature_c"], p["min_free_memory_mib"], p["max_utilization_pct"], max_xid_age_s=p["max_xid_age_s"]
    )
    try:
        facts = gather_gpus(p["source"], thresholds, p["gpus"], p["nvidia_smi_path"], p["timeout"], p["xid_file"])
    except GpufleetError as err:
        module.fail_json(msg=str(err), **err.details)
    facts["gpu_container_runtime"] = (
        container_readiness(p["docker_host"], p["cdi_spec_dirs"], facts["gpu_count"] if facts["gpus"] else None)
        if p["container_runtime"]
        else None
    )
    runtime = facts["gpu_container_runtime"]
    if runtime and facts["gpu_count"] and not runtime["ready"]:
        module.warn(runtime["summary"])
    if facts["gpu_count"] < p["min_gpus"]:
        why = f" ({facts['gpu_source_reason']})" if facts["gpu_source_reason"] else ""
        module.fail_json(
            msg=f"found {facts['gpu_count']} GPU(s) through {facts['gpu_source']}{why}, min_gpus is {p['min_gpus']}",
            failure_class="not_enough_gpus",
            ansible_facts=facts,
        )
    if p["fail_on_unhealthy"] and not facts["gpu_healthy"]:
        module.fail_json(
            msg=f"unhealthy GPU(s): {unhealthy_summary(facts['gpus'])}",
            failure_class="gpu_unhealthy",
            ansible_facts=facts,
        )
    module.exit_json(changed=False, ansible_facts=facts)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run(module)


if __name__ == "__main__":
    main()
