# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one timestamp format of the collection's records, labels and reports: UTC, ISO 8601 to the second, ``Z``.

``2026-12-03T15:04:05Z``: the manifests' ``created_at``, ``serve_until`` (labels, info, the agent), the Xid record, the
agent's events and the ``generated_at`` of the summary, status and usage reports.
"""

from __future__ import annotations

import time

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def stamp(t: float | None = None) -> str:
    """``t`` (seconds since the epoch; None: now) in the collection's format."""
    return time.strftime(FORMAT, time.gmtime(t))


def stamp_or_none(t: float | None) -> str | None:
    """``stamp(t)``, or None when there is no time (e.g. no expiry)."""
    return None if t is None else stamp(t)
