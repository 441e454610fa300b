"""Role argument specs: every entry point is described (ansible-doc, antsibull-docs), and a role variable whose
default is a public gpufleet_* variable says so, with its own default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
ROLES = sorted(p.parent.parent.name for p in ROOT.glob("roles/*/meta/argument_specs.yml"))
ALIAS = re.compile(r"^\{\{ (gpufleet_\w+) \| default\((.*)\) \}\}$", re.S)


@pytest.mark.parametrize("role", ROLES)
def test_every_entry_point_is_described(role: str) -> None:
    specs = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    for entry, spec in specs.items():
        assert spec.get("short_description"), entry
        assert spec.get("description"), entry


@pytest.mark.parametrize("role", ROLES)
def test_role_variables_carry_the_role_prefix_and_name_their_public_default(role: str) -> None:
    defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    for key, value in defaults.items():
        assert key.startswith(f"{role}_"), key
        m = ALIAS.match(" ".join(str(value).split()))
        if not m:
            continue
        public, fallback = m.groups()
        for spec in specs.values():
            opt = spec.get("options", {}).get(key)
            if opt is None:
                continue
            text = " ".join(opt["description"] if isinstance(opt["description"], list) else [opt["description"]])
            assert f"C({public})" in text, (key, text)
            computed = any(c in fallback for c in "|~(")  # another variable or a lookup: described in words
            literal = None if computed else yaml.safe_load(fallback.strip("'"))
            if literal not in (None, "", [], {}):
                if isinstance(literal, list):
                    assert all(str(x) in text for x in literal), (key, text)
                else:
                    assert f"V({str(literal).lower() if isinstance(literal, bool) else literal})" in text, (key, text)


def _tasks(tasks: list | None):
    for task in tasks or []:
        yield task
        for part in ("block", "rescue", "always"):
            yield from _tasks(task.get(part))


@pytest.mark.parametrize(
    "path", sorted(ROOT.glob("roles/*/tasks/*.yml")), ids=lambda p: f"{p.parent.parent.name}/{p.name}"
)
def test_a_tagged_include_passes_its_tags_to_the_included_tasks(path: Path) -> None:
    """The tags of an include_tasks apply to the include only, never to the tasks it includes, unless `apply` names
    them: `--tags preflight,facts,plan,apply` (docs/playbooks.md) would include wave.yml and run none of it."""
    for task in _tasks(yaml.safe_load(path.read_text())):
        include = task.get("ansible.builtin.include_tasks")
        tags = set(task.get("tags") or []) - {"always"}
        if include is None or not tags:
            continue
        passed = set((include.get("apply") or {}).get("tags") or []) if isinstance(include, dict) else set()
        assert tags <= passed, f"{path.name}: {task.get('name')!r} tags {sorted(tags)} but applies {sorted(passed)}"
