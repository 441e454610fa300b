# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPU health: the thresholds a GPU must keep and the plain-words issues when it breaks one."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# What each threshold option allows (gpu_facts' options, the deployments' gpufleet_max_xid_age_s), one home for both:
# name -> (low, high or None, whether low itself is refused, what the value means).
RANGES: dict[str, tuple[float, float | None, bool, str]] = {
    "min_free_memory_mib": (0, None, False, "MiB a GPU must have free to count as healthy"),
    "max_utilization_pct": (0, 100, False, "a percentage"),
    "max_temperature_c": (0, 150, False, "degrees Celsius, e.g. 85"),
    "max_xid_age_s": (0, None, True, "seconds a critical Xid counts, e.g. 86400"),
}


def range_problems(
    values: Mapping[str, Any], ranges: Mapping[str, tuple[float, float | None, bool, str]] | None = None
) -> list[str]:
    """One line per value of ``values`` outside its range (``ranges``, default RANGES; None: not set, no problem)."""
    out = []
    for name, (low, high, low_open, what) in (RANGES if ranges is None else ranges).items():
        v = values.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            out.append(f"{name}: {v!r} must be a number; {what}")
            continue
        ok = math.isfinite(v) and (v > low if low_open else v >= low) and (high is None or v <= high)
        if not ok:
            allowed = f"in [{low}, {high}]" if high is not None else f"{'>' if low_open else '>='} {low}"
            out.append(f"{name}: {v!r} must be {allowed}; {what}")
    return out


@dataclass(frozen=True)
class Thresholds:
    """Health limits; a GPU breaking one is ``healthy: false`` with a line in ``health_issues``."""

    max_temperature_c: int | None = 85
    min_free_memory_mib: int | None = 0
    max_utilization_pct: int | None = 100
    max_ecc_uncorrected: int | None = 0  # volatile uncorrectable ECC errors (since the driver loaded)
    retired_pages_pending_ok: bool = False  # pages waiting to be retired: a GPU reset is due
    max_xid_age_s: float | None = None  # a critical Xid counts since boot (None) or for this many seconds (xid.py)


def evaluate_health(gpu: dict[str, Any], thresholds: Thresholds) -> list[str]:
    """Health issues of one GPU (read errors already in ``gpu['health_issues']`` are kept first).

    A value the device does not report (None) breaks no threshold: it cannot be judged.
    """
    issues = list(gpu.get("health_issues") or [])
    temp = gpu.get("temperature_c")
    if thresholds.max_temperature_c is not None and temp is not None and temp > thresholds.max_temperature_c:
        issues.append(f"temperature {temp} C is above max_temperature_c ({thresholds.max_temperature_c} C)")
    free = gpu.get("memory_free_mib")
    if thresholds.min_free_memory_mib and free is not None and free < thresholds.min_free_memory_mib:
        issues.append(f"free memory {free} MiB is below min_free_memory_mib ({thresholds.min_free_memory_mib} MiB)")
    util = gpu.get("utilization_gpu_pct")
    if thresholds.max_utilization_pct is not None and util is not None and util > thresholds.max_utilization_pct:
        issues.append(f"utilization {util}% is above max_utilization_pct ({thresholds.max_utilization_pct}%)")
    ecc = gpu.get("ecc_errors_uncorrected")
    if thresholds.max_ecc_uncorrected is not None and ecc is not None and ecc > thresholds.max_ecc_uncorrected:
        issues.append(f"{ecc} uncorrectable ECC errors (volatile; more than {thresholds.max_ecc_uncorrected})")
    if not thresholds.retired_pages_pending_ok and gpu.get("retired_pages_pending"):
        issues.append("retired memory pages pending: the GPU needs a reset")
    for e in gpu.get("xid_errors") or []:  # the critical Xids the node agent saw since boot (_gpu/xid.py)
        issues.append(f"Xid {e['xid']} ({e['meaning']}) at {e['at']}: the GPU needs a reset or a reboot")
    return issues


def apply_health(gpus: list[dict[str, Any]], thresholds: Thresholds) -> None:
    for gpu in gpus:
        gpu["health_issues"] = evaluate_health(gpu, thresholds)
        gpu["healthy"] = not gpu["health_issues"]


def unhealthy_summary(gpus: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"GPU {g['index']} ({g.get('uuid') or g.get('name')}): {', '.join(g['health_issues'])}"
        for g in gpus
        if not g["healthy"]
    )
