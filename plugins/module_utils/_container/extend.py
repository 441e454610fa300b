# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_lifecycle (playbooks/extend.yml): move the serve_for deadline of a deployment's replicas on this host in their
lifecycle records, without a restart; a replica stopped for expiry whose new deadline lies ahead is started again
(the same container)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc
from ansible_collections.gpufleet.vllm.plugins.module_utils._duration import INFINITE, duration_hours
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._utc import stamp_or_none

ARGUMENT_SPEC: dict[str, Any] = {
    "deployment": {"type": "str", "required": True},
    "action": {"type": "str", "default": "extend", "choices": ["extend", "pause", "resume", "pin", "unpin"]},
    "hours": {"type": "raw"},
    "runtime": {"type": "str", "default": "docker", "choices": ["docker", "podman"]},
    "docker_host": {"type": "str"},
    "state_dir": {"type": "path", "default": lc.DEFAULT_STATE_DIR},
}


def extend_host(params: Mapping[str, Any], rt: Runtime, check_mode: bool, now: float | None = None) -> dict[str, Any]:
    """Extend every replica of ``deployment`` on this host by ``hours`` (a duration, or ``infinite``)."""
    now = time.time() if now is None else now
    raw = params["hours"]
    if raw is None:
        raise GpufleetError("hours is required with action=extend: a duration (4, 90m, 1d) or 'infinite'")
    hours = None if str(raw).strip().lower() == INFINITE else duration_hours(raw, "hours")
    if hours is None and str(raw).strip().lower() != INFINITE:
        raise GpufleetError(f"hours {raw!r}: give a duration or 'infinite'")
    out: list[dict[str, Any]] = []
    changed = False
    for c in rt.list_managed():
        name = lb.parse(c.labels)["name"]
        if not name or c.name != lb.container_name(name) or not lb.selected(name, [params["deployment"]]):
            continue
        rec = lc.load(params["state_dir"], name)
        if rec.get("since") is None:
            out.append({"name": name, "changed": False, "serve_until": None, "note": "no lifecycle record"})
            continue
        after = dict(rec)
        lc.extend(after, hours, now)
        until = lc.deadline(after)
        start = not c.running and bool(rec.get("expired")) and (until is None or until > now)
        item_changed = after != rec or start
        if item_changed and not check_mode:
            lc.update(params["state_dir"], name, lambda r: lc.extend(r, hours, now))
            if start:
                rt.start(c.id)
        changed = changed or item_changed
        out.append(
            {
                "name": name,
                "changed": item_changed,
                "serve_until_before": stamp_or_none(lc.deadline(rec)),
                "serve_until": stamp_or_none(until),
                "started": start,
                "container_id": c.id,
            }
        )
    return {"changed": changed, "replicas": out}
