"""The collection's one timestamp format (_utc.py)."""

from __future__ import annotations

import re

from ansible_collections.gpufleet.vllm.plugins.module_utils._utc import stamp, stamp_or_none


def test_stamp_is_utc_to_the_second_with_z() -> None:
    assert stamp(0) == "1970-01-01T00:00:00Z"
    assert stamp(1796311445.9) == "2026-12-03T15:24:05Z"  # whole seconds, never rounded up
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp())


def test_no_time_is_none() -> None:
    assert stamp_or_none(None) is None
    assert stamp_or_none(60) == "1970-01-01T00:01:00Z"
