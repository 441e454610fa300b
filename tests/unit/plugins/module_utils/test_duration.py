"""The one serve_for format (plugins/module_utils/_duration.py), shared by the inventory and vllm_container."""

from __future__ import annotations

import datetime

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._duration import (
    duration_hours,
    parse_duration,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import parse_serve_for


@pytest.mark.parametrize(
    ("value", "hours"),
    [
        (12, 12.0),  # a bare number is hours, not seconds
        ("12", 12.0),
        (1.5, 1.5),
        ("1.5", 1.5),
        (" 2H ", 2.0),
        ("90m", 1.5),
        ("1d", 24.0),
        ("0.5d", 12.0),
        (None, None),
        ("infinite", None),
        ("INFINITE", None),
    ],
)
def test_duration_hours(value, hours):
    assert duration_hours(value) == hours


@pytest.mark.parametrize("value", [0, "0", -1, "-2h", "30s", "soon", "inf", "", True, [1], float("nan"), "1w"])
def test_malformed_durations_fail_with_the_format(value):
    with pytest.raises(GpufleetError, match=r"serve_for .* is not a duration: use a positive number of hours"):
        duration_hours(value)


def test_parse_duration_is_a_timedelta_or_none():
    assert parse_duration("12") == datetime.timedelta(hours=12)
    assert parse_duration("90m") == datetime.timedelta(minutes=90)
    assert parse_duration("infinite") is None


@pytest.mark.parametrize("value", [12, "1.5", "90m", "2h", "1d", "infinite", None])
def test_inventory_and_module_read_the_same_value(value):
    """What the inventory schema parses once, the plan hands to vllm_container unchanged: the module reads the
    normalised value exactly as it would have read the inventory's own text."""
    inventory = parse_serve_for(value)
    module = parse_duration(value)
    if inventory == "infinite":
        assert module is None
    else:
        assert module == datetime.timedelta(hours=inventory)
    assert parse_duration(inventory) == module
