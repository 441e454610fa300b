# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin gpufleet.vllm.fleet_plan: gathers every host's GPU facts, labels and existing placements from
hostvars, runs the pure placement (module_utils/_fleet/placement.py, payload.py) on the controller and returns the plan.
Documentation: plugins/modules/fleet_plan.py."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as labels
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_if_changed
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import published
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import ray as fleet_ray
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import state as fleet_state
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.payload import fleet_plan
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.rollout import wave_lines
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import (
    HOST_FIELDS,
    validate_deployments,
    validate_host_vars,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import metadata
from ansible_collections.gpufleet.vllm.plugins.modules.fleet_plan import ARGUMENT_SPEC
from ansible_collections.gpufleet.vllm.plugins.plugin_utils.controller_action import ControllerAction

STATE_VERSION = 1


def _plain(value: Any) -> Any:
    """Templated hostvars → plain Python (dict/list/str/int/...), so the pure code never sees lazy containers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def gpus_from_facts(hostvars: Mapping[str, Any], var: str) -> list[dict[str, Any]] | None:
    """The host's GPU list: ``ansible_facts[var]`` or the host var ``var``; a dict with a ``gpus`` key is unwrapped.

    None when the host has no GPU facts at all (gpu_facts did not run there).
    """
    facts = hostvars.get("ansible_facts") or {}
    value = facts.get(var) if isinstance(facts, Mapping) else None
    if value is None:
        value = hostvars.get(var)
    if isinstance(value, Mapping) and "gpus" in value:
        value = value["gpus"]
    if value is None:
        return None
    return [dict(g) for g in value if isinstance(g, Mapping) and g.get("index") is not None]


def existing_from_info(host: str, info: Any) -> list[dict[str, Any]]:
    """Existing placements from a registered vllm_deployment_info result (or its ``deployments`` list); with the
    ``ray_nodes`` of fleet_apply state=gathered, the parts of multi-host replicas (``_fleet/ray.existing_parts``)."""
    nodes = info.get("ray_nodes") if isinstance(info, Mapping) else None
    if isinstance(info, Mapping):
        info = info.get("deployments")
    out = []
    for item in info or []:
        if not isinstance(item, Mapping):
            continue
        # Fields vllm_deployment_info computed win; otherwise the container's labels, read by the one label schema.
        parsed = labels.parse(item.get("labels") or {})
        name = item.get("name") or parsed["name"]
        if not name:
            continue
        name = re.sub(r"^gpufleet-", "", str(name)) if item.get("name") is None else str(name)
        gpus = item.get("gpus")
        if gpus is None:
            gpus = parsed["gpus"]
        if isinstance(gpus, str):
            gpus = [g for g in re.split(r"[,\s]+", gpus) if g]
        port = item.get("port")
        if port is None:
            port = parsed["port"]
        entry: dict[str, Any] = {"host": host, "name": name, "gpus": list(gpus or []), "port": port}
        # For the rollout (_fleet/rollout.py): what the container was declared with, and whether it serves now.
        digest = item.get("plan_digest") or parsed.get("plan_digest")
        if digest:
            entry["plan_digest"] = str(digest)
        if item.get("state"):
            entry["state"] = str(item["state"])
        if item.get("replica") is not None and item.get("deployment") is not None:
            entry.update(deployment=item["deployment"], replica=item["replica"])
        out.append(entry)
    return fleet_ray.existing_parts(host, out, [n for n in nodes or [] if isinstance(n, Mapping)])


def used_ports_from_facts(hostvars: Mapping[str, Any]) -> list[int]:
    """Ports in use on the host from community.general.listen_ports_facts' ``tcp_listen`` (when gathered)."""
    ports: set[int] = set()
    facts = hostvars.get("ansible_facts") or {}
    for entry in (facts.get("tcp_listen") if isinstance(facts, Mapping) else None) or []:
        if isinstance(entry, Mapping) and str(entry.get("port", "")).isdigit():
            ports.add(int(entry["port"]))
    return sorted(ports)


def read_state(path: str | None) -> list[dict[str, Any]]:
    if not path or not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise GpufleetError(f"state_path {path}: cannot read it ({err}); fix or delete the file") from err
    if not isinstance(data, Mapping) or data.get("version") != STATE_VERSION:
        raise GpufleetError(f"state_path {path}: not a gpufleet placement file (version {STATE_VERSION}); delete it")
    return [dict(p) for p in data.get("placements") or [] if isinstance(p, Mapping)]


def write_state(path: str, assignments: list[dict[str, Any]]) -> bool:
    """Write the placements atomically; True when the file content changed."""
    placements = fleet_state.placements(assignments)  # a multi-host replica: its head and each Ray worker
    text = json.dumps({"version": STATE_VERSION, "placements": placements}, indent=2, sort_keys=True) + "\n"
    return write_if_changed(path, text, mode=0o600)


def diff_lines(entries: list[dict[str, Any]], errors: list[dict[str, Any]] | None = None) -> str:
    """One sorted line per placement (``chat-0: gpu-a gpus=0 port=8000``), then unschedulable deployments."""
    lines = []
    for e in entries:
        name = e.get("name") or f"{e.get('deployment')}-{e.get('replica')}"
        gpus = ",".join(str(g) for g in e.get("gpus") or [])
        if e.get("gpus_all"):  # gpus: all: every GPU of the host, by index
            gpus = f"all({gpus})"
        lines.append(f"{name}: {e.get('host')} gpus={gpus} port={e.get('port')}")
    lines.sort()
    lines.extend(f"# unschedulable: {err['message']}" for err in errors or [])
    return "\n".join(lines) + ("\n" if lines else "")


def gather(
    task_vars: Mapping[str, Any], args: Mapping[str, Any]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(hosts for the placement, existing placements, unreachable hosts) from hostvars and the task's arguments."""
    all_hostvars = task_vars.get("hostvars") or {}
    names = args.get("hosts")
    if names is None:
        names = list(task_vars.get("ansible_play_hosts_all") or [])
    active = set(task_vars.get("ansible_play_hosts") or names)
    forced = set(args.get("unreachable") or [])
    unreachable = sorted({h for h in names if h not in active or h in forced})

    raw_vars = {}
    per_host: dict[str, dict[str, Any]] = {}
    for name in names:
        hv = all_hostvars.get(name) or {}
        raw_vars[name] = {k: _plain(hv.get(k)) for k in HOST_FIELDS if hv.get(k) is not None}
        gpus = _plain(gpus_from_facts(hv, args["gpu_facts_var"]))
        per_host[name] = {
            "reachable": name not in unreachable,
            "gpus": gpus or [],
            "used_ports": used_ports_from_facts(hv),
            "_hv": hv,
        }
    host_vars = validate_host_vars(raw_vars)
    hosts: dict[str, dict[str, Any]] = {}
    for name, info in per_host.items():
        norm = host_vars[name]
        hosts[name] = {
            "reachable": info["reachable"],
            "gpus": info["gpus"],
            "used_ports": sorted(set(info["used_ports"]) | set(norm["used_ports"])),
            "labels": norm["labels"],
            "reservations": norm["reservations"],
            "allowed_model_dirs": norm["allowed_model_dirs"],
            "runtime": norm["runtime"],
            "models_root": norm["models_root"],
            # Where the other hosts reach it (a multi-host replica's Ray nodes, docs/ray.md).
            "address": str(
                _plain(info["_hv"].get("gpufleet_advertise_address") or info["_hv"].get("ansible_host") or name)
            ),
        }

    if args.get("existing") is not None:
        existing = [_plain(dict(e)) for e in args["existing"]]
    else:
        existing = []
        for name, info in per_host.items():
            if info["reachable"]:
                existing.extend(existing_from_info(name, _plain(info["_hv"].get(args["existing_var"]))))
    # Unreachable hosts report nothing: their last known placements come from the copy of the fleet's placements
    # that the reachable hosts keep (the newest one, _fleet/state.py), else from the state file when one is given.
    # A multi-host replica comes back whole (its head and Ray workers), wherever its unreachable part is.
    reachable = [n for n in names if n not in unreachable]
    kept = host_state(all_hostvars, reachable, args["existing_var"])
    remembered = kept["placements"] if kept else read_state(args.get("state_path"))
    existing.extend(fleet_state.restore(remembered, existing, unreachable, reachable))
    return hosts, existing, unreachable


def host_state(all_hostvars: Mapping[str, Any], reachable: list[str], var: str) -> dict[str, Any] | None:
    """The newest copy of the fleet's placements among the reachable hosts' facts (``<var>.fleet_state``)."""
    copies = []
    for name in reachable:
        facts = (all_hostvars.get(name) or {}).get(var)
        if isinstance(facts, Mapping) and facts.get("fleet_state") is not None:
            copies.append(_plain(facts["fleet_state"]))
    return fleet_state.newest(copies)


def job_slice(task_vars: Mapping[str, Any]) -> tuple[int, int] | None:
    """(slice number, slice count) when AWX/AAP runs this job as one slice of a sliced job template (it sets
    ``awx_job_slice_number``/``awx_job_slice_count``, and the ``tower_`` names), else None."""
    for prefix in ("awx", "tower"):
        count = task_vars.get(f"{prefix}_job_slice_count")
        try:
            count = int(count) if count is not None else 0
        except (TypeError, ValueError):
            continue
        if count > 1:
            try:
                number = int(task_vars.get(f"{prefix}_job_slice_number") or 0)
            except (TypeError, ValueError):
                number = 0
            return number, count
    return None


def slicing_refused(number: int, count: int) -> str:
    return (
        f"fleet_plan: this job is slice {number} of {count} of a sliced job template: it sees only its slice's hosts, "
        "so its plan would place replicas that other slices place too and prune (or move) the other slices' "
        "replicas. The plan is global: run the converge as one job (job slicing 1; raise forks for a large fleet, "
        "docs/awx.md 'Large fleets'). status.yml and stop.yml may be sliced."
    )


def assemble_planned(task_vars: Mapping[str, Any], args: Mapping[str, Any]) -> dict[str, Any]:
    """``planned_var`` mode: the plan of the play's hosts from the plan files they keep (_fleet/published.py), with
    ``changed`` when their parts change the fleet."""
    all_hostvars = task_vars.get("hostvars") or {}
    names = args.get("hosts")
    if names is None:
        names = list(task_vars.get("ansible_play_hosts_all") or [])
    active = set(task_vars.get("ansible_play_hosts") or names) - set(args.get("unreachable") or [])
    records, kept = {}, {}
    for name in names:
        if name not in active:
            continue
        hv = all_hostvars.get(name) or {}
        records[name] = published.parse(_plain(hv.get(args["planned_var"])))
        facts = hv.get(args["existing_var"])
        kept[name] = _plain(facts.get("fleet_state")) if isinstance(facts, Mapping) else None
    out = published.assemble(
        records,
        [dict(d) for d in _plain(args["deployments"])],
        kept,
        expected_id=args.get("plan_id") or "",
        unreachable=[n for n in names if n not in active],
    )
    plan = out["plan"]
    changes = sum(1 for specs in plan["hosts"].values() for s in specs if s.get("action") != "keep")
    changes += sum(len(r) for r in plan["remove"].values()) + sum(len(w["replicas"]) for w in plan["rollout"]["waves"])
    out.update(changed=changes > 0, rollout_waves=wave_lines(plan["rollout"]))
    return out


SIZE_FIELDS = ("model_size_bytes", "num_parameters", "vram_mib")


def feed_sizes(
    deployments: list[dict[str, Any]], args: Mapping[str, Any], task_vars: Mapping[str, Any], reachable: list[str]
) -> tuple[dict[str, str], list[str]]:
    """Fill ``model_size_bytes`` of the deployments that give no size, so a hub model needs none typed by hand
    (_model/metadata.py): ``model_sizes``, else what model_sync recorded for the same model on a reachable host (the
    ``model_sizes`` of ``existing_var``), else the hub's model info. Returns (where each size came from, warnings)."""
    hostvars = task_vars.get("hostvars") or {}
    records = []
    for name in reachable:
        facts = (hostvars.get(name) or {}).get(args["existing_var"])
        if isinstance(facts, Mapping) and isinstance(facts.get("model_sizes"), Mapping):
            records.append((name, _plain(facts["model_sizes"])))
    wanted = [d for d in deployments if isinstance(d, dict) and all(d.get(k) is None for k in SIZE_FIELDS)]
    if not wanted:
        return {}, []
    norm = {d["name"]: d for d in validate_deployments(deployments)}  # its error is the plan's own, said first
    hub_ok = args["hub_model_info"] and not os.environ.get("HF_HUB_OFFLINE")
    sources: dict[str, str] = {}
    warnings: list[str] = []
    for dep in wanted:
        name, found = dep["name"], None
        model = norm[name]["model"]
        if norm[name]["state"] != "present" or not model:
            continue
        if (args.get("model_sizes") or {}).get(name) is not None:
            found = (int(args["model_sizes"][name]), "model_sizes")
        elif (recorded := metadata.recorded_size(name, model, records)) is not None:
            found = (recorded[0], f"model_sync on {recorded[1]}")
        elif hub_ok and (model["source"] == "hf" or "hf" in (model.get("sources") or [])):
            try:
                weights = metadata.hub_weights(
                    model["repo_id"], model["revision"], args.get("hf_endpoint"), norm[name]["hf_token"]
                )
            except GpufleetError as err:
                warnings.append(f"{name}: VRAM estimate unknown (only gpu_memory_utilization is checked): {err}")
                continue
            found = (weights, "hub model info") if weights else None
        if found:
            dep["model_size_bytes"], sources[name] = found
    return sources, warnings


class ActionModule(ControllerAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def act(self, params: dict[str, Any], task_vars: dict[str, Any], result: dict[str, Any]) -> None:
        args = params
        if args.get("planned_var"):  # the apply of a published plan: allowed in a slice
            result.update(assemble_planned(task_vars, args))
            return
        sliced = job_slice(task_vars)
        if sliced:
            result.update(failed=True, msg=slicing_refused(*sliced))
            return
        hosts, existing, unreachable = gather(task_vars, args)
        reachable = [h for h in hosts if h not in unreachable]
        previous = host_state(task_vars.get("hostvars") or {}, reachable, args["existing_var"])
        deployments = [dict(d) for d in _plain(args["deployments"])]
        size_sources, size_warnings = feed_sizes(deployments, args, task_vars, reachable)
        planned = fleet_plan(
            hosts,
            deployments,
            existing,
            prune=args["prune"],
            move_from_unreachable=args["move_from_unreachable"],
        )

        errors = planned.pop("errors")
        warnings = planned.pop("warnings") + size_warnings
        for name, source in size_sources.items():  # where a size that the inventory does not give came from
            planned["estimates"][name]["source"] = source
        # changed = the plan changes the fleet (something starts, moves or stops); the task itself touches nothing.
        summary = planned["summary"]
        fleet_changes = summary["create"] + summary["update"] + summary["move"] + summary["remove"]
        fleet_changes += sum(len(wave["replicas"]) for wave in planned["rollout"]["waves"])  # replicas that roll
        result.update(changed=fleet_changes > 0, plan=planned, errors=errors, unreachable_hosts=unreachable)
        result["rollout_waves"] = wave_lines(planned["rollout"])
        if warnings:
            result["warnings"] = warnings
        if self._task.diff:
            result["diff"] = {
                "before_header": "placements now",
                "after_header": "placements planned",
                "before": diff_lines(existing),
                "after": diff_lines(planned["assignments"], errors)
                + "".join(f"# rollout {line}\n" for line in wave_lines(planned["rollout"])),
            }
        if errors and args["fail_on_unschedulable"]:
            result.update(failed=True, msg="\n".join(e["message"] for e in errors))
            return
        # What the hosts keep (fleet_apply fleet_state): the newest copy they sent, or its next generation.
        result["fleet_state"] = None if errors else fleet_state.next_state(previous, planned["assignments"])
        if args["publish"] and not errors:
            # The declaration as given (the apply compares it), not with the sizes filled in above.
            result["plan_id"], result["published"] = published.publish(
                planned, result["fleet_state"], _plain(args["deployments"]), reachable
            )
        if args.get("state_path") and not self._task.check_mode and not errors:
            write_state(args["state_path"], planned["assignments"])
