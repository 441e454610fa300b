# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The base of the collection's controller-side action plugins (fleet_plan, fleet_report): no connection, check
mode supported, the module's argument spec validated here, a GpufleetError turned into one failed result."""

from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError


class ControllerAction(ActionBase):
    """Subclasses set ``ARGUMENT_SPEC`` (the module's) and implement ``act``."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False
    ARGUMENT_SPEC: dict[str, Any] = {}

    def act(self, params: dict[str, Any], task_vars: dict[str, Any], result: dict[str, Any]) -> None:
        """Fill ``result`` from the validated ``params``; raise GpufleetError for one clear failure."""
        raise NotImplementedError

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        validation, _args = self.validate_argument_spec(argument_spec=self.ARGUMENT_SPEC)
        try:
            self.act(dict(validation.validated_parameters), task_vars or {}, result)
        except GpufleetError as err:
            result.update(failed=True, msg=str(err), **err.details)
        return result
