# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plain fixed-width tables of the fleet reports (converge summary and status)."""

from __future__ import annotations

from typing import Any


def gpus_text(gpus: Any) -> str:
    """GPU ids as ``0,1`` (``-`` for none)."""
    if not gpus:
        return "-"
    return ",".join(str(g) for g in gpus)


def render_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A plain fixed-width table (one string per line); ``None`` shows as ``-``."""
    cells = [[("-" if c is None or c == "" else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in header]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(widths[i]) for i, v in enumerate(values)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *[line(r) for r in cells]]
