# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one duration format of ``serve_for``, shared by the inventory (fleet_schema) and vllm_container.

A duration is one of:

- a bare positive number (``12``, ``1.5``, ``"12"``, ``"1.5"``): **hours**;
- a positive number with a unit, ``m`` (minutes), ``h`` (hours) or ``d`` (days): ``"90m"``, ``"2h"``, ``"1.5d"``;
- ``"infinite"`` or null (None): no expiry.

Case and surrounding blanks do not matter. Anything else (zero, negative numbers, booleans, seconds, words) is an
error. docs/inventory.md and vllm_container's ``serve_for`` option document the same format.

One code path: the fleet schema parses a deployment's ``serve_for`` once (``duration_hours``: hours as a float, or
``"infinite"``), the plan hands that normalised value to vllm_container unchanged, and vllm_container reads it with
the same ``duration_hours`` (a number is hours: nothing is formatted and parsed again on the way).
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

INFINITE = "infinite"
FORMAT = "a positive number of hours (12, 1.5), a number with a unit m, h or d (90m, 2h, 1d), or 'infinite'"
_UNIT_HOURS = {"": 1.0, "m": 1 / 60, "h": 1.0, "d": 24.0}
_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([mhd]?)")


def duration_hours(value: Any, field: str = "serve_for") -> float | None:
    """Hours of ``value`` (see the module docstring), None for ``infinite``/null; GpufleetError when malformed."""
    if value is None:
        return None
    hours: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        hours = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text == INFINITE:
            return None
        m = _RE.fullmatch(text)
        if m:
            hours = float(m.group(1)) * _UNIT_HOURS[m.group(2)]
    if hours is None or not math.isfinite(hours) or hours <= 0:
        raise GpufleetError(f"{field} {value!r} is not a duration: use {FORMAT}")
    return hours


def parse_duration(value: Any, field: str = "serve_for") -> datetime.timedelta | None:
    """``value`` as a timedelta (None = no expiry); GpufleetError when malformed."""
    hours = duration_hours(value, field)
    return None if hours is None else datetime.timedelta(hours=hours)
