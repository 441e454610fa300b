"""meta/runtime.yml: the action group holds exactly the modules that run on the GPU hosts."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def test_action_group_is_every_host_module() -> None:
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    group = runtime["action_groups"]["vllm"]
    modules = {p.stem for p in (ROOT / "plugins" / "modules").glob("*.py") if p.stem != "__init__"}
    controller = {p.stem for p in (ROOT / "plugins" / "action").glob("*.py") if p.stem != "__init__"}
    assert len(group) == len(set(group))
    # Modules with an action plugin of the same name run on the controller and share no option with the group.
    assert set(group) == modules - controller
