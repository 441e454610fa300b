# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one error type module_utils raise for bad input or an unusable host.

A module catches it in ``main()`` and calls ``module.fail_json(msg=str(err), **err.details)``: the message says what
is wrong and how to fix it, ``details`` carries machine-readable context (e.g. a failure class).
"""

from __future__ import annotations

from typing import Any


class GpufleetError(Exception):
    """An error with one clear message and optional structured details for the module result."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return self.msg
