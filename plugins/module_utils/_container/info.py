# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What gpufleet manages on a host, from container labels alone (``vllm_deployment_info``, and ``fleet_apply``
``state=gathered`` for the deployments role): name, state, phase, health, endpoint, model, GPUs, image, uptime,
restarts, last failure class, manifest; optionally the host's GPUs as ``gpu_facts`` gathers them."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.validate import name_problem
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import (
    ContainerState,
    Runtime,
    parse_time,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.factory import get_runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._utc import stamp_or_none

ARGUMENT_SPEC: dict[str, Any] = {
    "name": {"type": "str"},
    "names": {"type": "list", "elements": "str", "default": []},
    "runtime": {"type": "str", "default": "docker", "choices": ["docker", "podman"]},
    "docker_host": {"type": "str"},
    "probe": {"type": "bool", "default": True},
    "classify_failures": {"type": "bool", "default": True},
    "gpus": {"type": "bool", "default": False},
    "state_dir": {"type": "path", "default": "/var/lib/gpufleet"},
    # With gpus: where the node agent keeps its Xid record (its --state-dir; None: its default) and how long a
    # critical Xid counts (None: since boot), as gpu_facts' xid_file and max_xid_age_s.
    "agent_state_dir": {"type": "path"},
    "max_xid_age_s": {"type": "int"},
}
MUTUALLY_EXCLUSIVE = [("name", "names")]


def _uptime(started: str | None) -> float | None:
    t = parse_time(started)
    return None if t is None else round(time.time() - t, 1)


def _lifecycle(state_dir: str | None, name: str | None, lab: dict[str, Any]) -> dict[str, Any]:
    """The lifecycle record's view (lifecycle.summary): failed / expired, the deadline; the old label without one."""
    rec = lc.load(state_dir, name) if state_dir and name else {}
    out = lc.summary(rec, time.time())
    out["record"] = rec
    if rec.get("since") is not None:
        until = out["serve_until_ts"]
        out["serve_until"] = stamp_or_none(until)
    else:
        out["serve_until"] = lab["serve_until"]
        t = parse_time(lab["serve_until"])
        out["lifecycle"] = "expired" if t is not None and t <= time.time() else None
    return out


def describe(
    rt: Runtime, st: ContainerState, probe: bool, classify: bool, state_dir: str | None = None
) -> dict[str, Any]:
    lab = lb.parse(st.labels)
    life = _lifecycle(state_dir, lab["name"], lab)
    endpoint = rd.base_url(lab["host"], lab["port"]) if lab["port"] else None
    state = {"exited": "stopped", "dead": "stopped"}.get(st.status, st.status)
    if st.running:
        state = "running"
    health, phase = "unknown", {"running": "starting", "paused": "paused"}.get(state, "stopped")
    if st.running and probe and endpoint:
        code = rd.http(endpoint + "/health", timeout=2.0)[0]
        health = "ok" if code == 200 else "unhealthy"
        phase = "ready" if code == 200 else "starting"
        if code == 200 and lab["sleep_mode"] and rd.is_sleeping(endpoint, None):
            health, phase, state = "sleeping", "sleeping", "paused"
        if code != 200:
            phase = rd.phase_of(rt.logs(st.id, failures.TAIL_LINES))
            phase = "starting" if phase == "ready" else phase
    last_failure = None
    requested = not st.running and lc.stopped_by_request(life["record"], st.id, parse_time(st.started_at))
    if not st.running and st.exit_code not in (None, 0) and classify and not requested:
        last_failure = failures.classify(rt.logs(st.id, failures.TAIL_LINES), exit_code=st.exit_code)[0]
        phase = "failed"
    if st.running and life["lifecycle"] == "paused":
        state, phase = "paused", "paused"  # asleep on purpose (idle, warm cache, pause.yml); a request wakes it
    if not st.running and life["lifecycle"]:
        phase = life["lifecycle"]  # failed: stopped for good by the node agent; expired: past serve_for
        if life["failed"]:
            last_failure = life["failed"].get("failure_class") or last_failure
    return {
        "name": lab["name"],
        "container_name": st.name,
        "container_id": st.id,
        "state": state,
        "phase": phase,
        "health": health,
        "endpoint": endpoint,
        "port": lab["port"],
        "api_key": lab["api_key"],
        "model": lab["model"],
        "gpus": lab["gpus"],
        "image": st.image,
        "image_id": st.image_id,
        "vllm_version": lab["vllm_version"],
        "config_hash": lab["config_hash"],
        "plan_digest": lab["plan_digest"],
        "started_at": st.started_at,
        "uptime_s": _uptime(st.started_at) if st.running else None,
        "restart_count": st.restart_count,
        "exit_code": st.exit_code,
        "last_failure_class": last_failure,
        "serve_until": life["serve_until"],
        "lifecycle": life["lifecycle"],
        "failed": life["failed"],
        "paused_for_s": life["paused_for_s"],
        "paused_reason": life["paused_reason"],
        "pinned": life["pinned"],
        "owner": lab["owner"],
        "hosts": lab["ray_hosts"] or None,  # a multi-host replica's hosts, head first (docs/ray.md)
        "manifest": lab["manifest"],
        "previous": False,
    }


def ray_nodes(rt: Runtime, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Ray nodes of multi-host replicas on the host (docs/ray.md: no ``gpufleet.managed`` label, read by
    ``_labels.ray_node``), chosen by ``name``/``names`` as the deployments are, sorted by container name: each with
    ``name`` (its replica, ``<deployment>-<replica>``), ``ray_role``/``ray_port`` (as a placement or a removal of the
    plan says them), ``container_name`` and ``state``."""
    out = []
    for st in rt.list_labeled(lb.RAY_ROLE):
        node = lb.ray_node(st.labels)
        if node is None:
            continue
        key = f"{node['deployment']}-{node['replica']}"
        if st.name != lb.container_name(f"{key}-ray-{node['role']}"):
            continue  # a node set aside by a rollout wave (<node>-previous, _fleet/ray_wave.py): not a placement
        if (params.get("name") and key != params["name"]) or not lb.selected(key, params.get("names") or []):
            continue
        state = "running" if st.running else "stopped"
        out.append({**node, "name": key, "ray_role": node["role"], "ray_port": node["port"]} | {"state": state})
        out[-1]["container_name"] = st.name
    return sorted(out, key=lambda n: n["container_name"])


def gather(params: Mapping[str, Any], runtime: Runtime | None = None) -> dict[str, Any]:
    """``{deployments: [...]}`` (sorted by name; a deployment whose previous container is kept aside for a rollback
    has ``previous: true``), plus ``gpus`` and ``gpu_source`` with ``params["gpus"]``."""
    problems = [
        p
        for p in [name_problem(params["name"]) if params.get("name") is not None else None]
        + [name_problem(n, "names:") for n in params.get("names") or []]
        if p
    ]
    if problems:
        raise GpufleetError("; ".join(problems) + " (names select deployments by their vllm_container name)")
    rt = runtime or get_runtime(params["runtime"], params.get("docker_host"))
    out: dict[str, dict[str, Any]] = {}
    previous = set()
    for st in rt.list_managed():
        name = lb.parse(st.labels)["name"]
        if (
            not name
            or (params.get("name") and name != params["name"])
            or not lb.selected(name, params.get("names") or [])
        ):
            continue
        if st.name == lb.previous_name(name):
            previous.add(name)
            continue
        if st.name != lb.container_name(name):
            continue
        out[name] = describe(rt, st, params["probe"], params["classify_failures"], params.get("state_dir"))
    for name in previous:
        if name in out:
            out[name]["previous"] = True
    result: dict[str, Any] = {"deployments": [out[k] for k in sorted(out)], "ray_nodes": ray_nodes(rt, params)}
    if params.get("state_dir"):  # the image pulls running now (vllm_image/vllm_container progress files)
        from ansible_collections.gpufleet.vllm.plugins.module_utils._image import progress

        result["pulls"] = progress.read_all(os.path.join(params["state_dir"], progress.PULLS_DIR))
    if params.get("gpus"):
        from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.facts import gather_gpus

        facts = gather_gpus(thresholds=gpu_thresholds(params), xid_file=xid_file(params))
        result.update(gpus=facts["gpus"], gpu_source=facts["gpu_source"])
    return result


def gpu_thresholds(params: Mapping[str, Any]) -> Any:
    """gpu_facts' default health limits, with ``max_xid_age_s`` (seconds a critical Xid counts; None: since boot)."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.health import Thresholds, range_problems

    age = params.get("max_xid_age_s")
    problems = range_problems({"max_xid_age_s": age})
    if problems:
        raise GpufleetError(f"{problems[0]} (gpufleet_max_xid_age_s)")
    return Thresholds(max_xid_age_s=age)


def xid_file(params: Mapping[str, Any]) -> str:
    """The node agent's Xid record: ``xid.json`` in its state directory (``agent_state_dir``, else its default)."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu import xid

    state = params.get("agent_state_dir")
    if not state:
        return xid.XID_FILE
    if not os.path.isabs(state):
        raise GpufleetError(f"agent_state_dir must be an absolute path (gpufleet_agent_state_dir), not {state!r}")
    return os.path.join(state, xid.XID_FILE_NAME)
