# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin gpufleet.vllm.fleet_report: builds the report on the controller itself (no module round trip:
the summary runs after every rollout batch). Documentation and the same code as a module: plugins/modules/fleet_report.py."""

from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase
from ansible_collections.gpufleet.vllm.plugins.module_utils.errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils.fleet_report import run_report
from ansible_collections.gpufleet.vllm.plugins.modules.fleet_report import ARGUMENT_SPEC


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        validation, _args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        try:
            result.update(run_report(dict(validation.validated_parameters), bool(self._task.check_mode)))
        except GpufleetError as err:
            result.update(failed=True, msg=str(err), **err.details)
        return result
