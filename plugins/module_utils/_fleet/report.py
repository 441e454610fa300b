# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpufleet.vllm.fleet_report``: one entry, ``run_report``, that dispatches by kind and writes the JSON artifact.

The kinds live by concern: ``summary.py`` (the converge summary and its table), ``status.py`` (the status report
with vLLM's ``/metrics``), ``usage.py`` (usage per owner and per deployment), ``redeploy.py`` (manifest →
vllm_container parameters); ``table.py`` renders the tables.
Plain functions over plain data (the registered results of the role's tasks), run on the controller. Never sees a
secret value: the role passes results of ``no_log``-aware modules and the plan, which holds none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_atomic
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.redeploy import redeploy
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.status import status_report, status_table
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.summary import converge_summary, converge_table
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.usage import usage_report, usage_table


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON atomically (the directory is created)."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def run_report(params: Mapping[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """What the ``fleet_report`` module (and its action plugin) returns for validated ``params``."""
    dest = params.get("dest")
    if dest and not os.path.expanduser(str(dest)).startswith("/"):
        raise GpufleetError(f"dest: {dest!r} is not an absolute path; give a path starting with / (or ~/)")
    out: dict[str, Any] = {"changed": False}
    data: Any = None
    if params["kind"] == "converge":
        summary = converge_summary(
            params.get("plan") or {},
            params.get("results") or {},
            unreachable=params.get("unreachable") or [],
            plan_errors=params.get("plan_errors") or [],
            check_mode=bool(params.get("run_check_mode")),
            ray_nodes=params.get("ray_nodes") or {},
            ray_ready=params.get("ray_ready") or {},
        )
        counts = summary["counts"]
        out.update(
            summary=summary,
            table=converge_table(summary),
            ok=summary["ok"],
            failed_count=counts["failed"] + counts["unschedulable"],
            failed_hosts=summary["failed_hosts"],
        )
        data = summary
    elif params["kind"] == "status":
        report = status_report(
            params.get("infos") or {},
            params.get("metrics") or {},
            unreachable=params.get("unreachable") or [],
            addresses=params.get("addresses") or {},
        )
        out.update(report=report, table=status_table(report))
        data = report
    elif params["kind"] == "usage":
        report = usage_report(params.get("usage") or {}, unreachable=params.get("unreachable") or [])
        out.update(report=report, table=usage_table(report))
        data = report
    else:
        out.update(redeploy(params.get("manifest"), params.get("manifest_path")))
    if params.get("dest") and data is not None and not check_mode:
        write_json(os.path.expanduser(str(params["dest"])), data)
        out["dest"] = params["dest"]
    return out
