# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Xid errors: what the NVIDIA driver reports when a GPU fails, kept where gpu_facts can read them.

NVML reports Xid errors only as *events* (``nvmlDeviceRegisterEvents`` with ``nvmlEventTypeXidCriticalError``, then
``nvmlEventSetWait``): a process must be waiting when one happens, and NVML keeps no history. gpu_facts runs once
and cannot wait, so the node agent does (``_agent/xid.py``): it records every Xid it sees, per GPU UUID, in a small
JSON file (``XID_FILE``, the agent's state directory), and gpu_facts reads that record (``recent``). An Xid of
``CRITICAL`` seen since the host booted (and, when ``max_age_s`` is set, not older than that) makes the GPU
unhealthy with the reason; the placement, the container pre-checks and the status report already refuse or show an
unhealthy GPU. A reboot clears it (those Xids need a GPU reset or a reboot); after a GPU reset without a reboot,
remove the GPU's entry from the file (or the file).

Without a running agent nothing is recorded and nothing is judged: ``xid_errors`` is then an empty list.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_atomic
from ansible_collections.gpufleet.vllm.plugins.module_utils._utc import stamp

# Where the agent keeps the record (its default state directory, _agent/cli.py DEFAULT_STATE_DIR) and gpu_facts
# looks for it; a unit test keeps them equal.
XID_FILE_NAME = "xid.json"
XID_FILE = "/var/lib/gpufleet/agent/" + XID_FILE_NAME
KEEP_PER_GPU = 20  # the newest entries per GPU

# The Xids that mean the GPU (not the application) is broken until a reset or a reboot (NVIDIA's Xid catalog).
# Others (13 graphics engine exception, 31 MMU fault, 43 a stopped application, ...) are mostly an application's own
# fault: recorded, never unhealthy.
CRITICAL = {
    48: "double-bit ECC error",
    64: "ECC page retirement or row remapping recording failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}


def read_record(path: str = XID_FILE) -> dict[str, list[dict[str, Any]]]:
    """``{uuid: [{"xid", "at"}, ...]}`` from the record; empty when there is none or it is not one (a damaged file
    judges nothing rather than failing every fact gathering)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    gpus = data.get("gpus") if isinstance(data, Mapping) else None
    if not isinstance(gpus, Mapping):
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for uuid, entries in gpus.items():
        good = [
            {"xid": int(e["xid"]), "at": float(e["at"])}
            for e in entries or []
            if isinstance(e, Mapping)
            and isinstance(e.get("xid"), int)
            and isinstance(e.get("at"), (int, float))
            and not isinstance(e.get("xid"), bool)
        ]
        if isinstance(uuid, str) and good:
            out[uuid] = good
    return out


def add(record: dict[str, list[dict[str, Any]]], uuid: str, xid: int, at: float) -> dict[str, list[dict[str, Any]]]:
    """The record with one more Xid of GPU ``uuid`` (the newest ``KEEP_PER_GPU`` kept)."""
    entries = [*record.get(uuid, []), {"xid": int(xid), "at": round(float(at), 3)}]
    return {**record, uuid: entries[-KEEP_PER_GPU:]}


def write_record(path: str, record: Mapping[str, list[dict[str, Any]]]) -> None:
    text = json.dumps({"version": 1, "gpus": dict(sorted(record.items()))}, sort_keys=True) + "\n"
    write_atomic(path, text, 0o644, durable=True)


def boot_time() -> float | None:
    """When the host booted (``btime`` of /proc/stat), None when unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def recent(
    entries: list[dict[str, Any]] | None,
    booted: float | None,
    now: float,
    max_age_s: float | None = None,
) -> list[dict[str, Any]]:
    """The critical Xids among ``entries`` that still count: seen since the host booted and, with ``max_age_s``,
    within that many seconds of ``now``; each ``{"xid", "at" (ISO 8601 UTC), "meaning"}``, oldest first."""
    out = []
    for e in entries or []:
        if e["xid"] not in CRITICAL or (booted is not None and e["at"] < booted):
            continue
        if max_age_s is not None and now - e["at"] > max_age_s:
            continue
        at = stamp(e["at"])
        out.append({"xid": e["xid"], "at": at, "meaning": CRITICAL[e["xid"]]})
    return out


def attach(gpus: list[dict[str, Any]], path: str | None, max_age_s: float | None = None) -> None:
    """Each GPU's ``xid_errors`` (``recent``) from the record at ``path`` (None: not read, every list empty)."""
    record = read_record(path) if path and os.path.exists(path) else {}
    booted, now = (boot_time(), time.time()) if record else (None, 0.0)
    for gpu in gpus:
        gpu["xid_errors"] = recent(record.get(str(gpu.get("uuid"))), booted, now, max_age_s)
