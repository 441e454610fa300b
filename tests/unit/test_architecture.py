"""The architecture of plugins/module_utils, checked (docs/architecture.md, "Layers").

- every module_utils import points down a layer, or stays inside its own package;
- no import cycle between module_utils modules;
- module_utils never imports from modules, action plugins or other plugin types;
- every package has an ``__init__.py`` (the node agent ships packages as files).
A new package gets a layer here and a row in docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MU = ROOT / "plugins" / "module_utils"
PKG = "ansible_collections.gpufleet.vllm.plugins.module_utils"
PLUGINS = "ansible_collections.gpufleet.vllm.plugins"

# The layer of each top-level piece of module_utils: an import may only point to a lower layer (or stay in its package).
LAYERS: dict[str, int] = {
    "_errors": 0,
    "_files": 1,
    "_duration": 1,
    "_utc": 1,
    "_labels": 1,
    "_failures": 1,
    "_supervisor": 1,
    "_gpu": 2,
    "_engine": 2,
    "_vllm": 2,
    "_image": 2,
    "_model": 3,
    "_container": 3,
    "_gateway": 3,
    "_ray": 3,
    "_fleet": 4,
    "_agent": 4,
    "_monitoring": 4,
}


def _modname(path: Path) -> str:
    parts = list(path.relative_to(MU).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_modname(p): p for p in MU.rglob("*.py") if "__pycache__" not in p.parts}


def _imports(path: Path, mods: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(module_utils modules imported, other collection plugin modules imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    inside, outside = set(), set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == PKG or node.module.startswith(PKG + "."):
                sub = node.module[len(PKG) :].lstrip(".")
                for alias in node.names:
                    full = f"{sub}.{alias.name}" if sub else alias.name
                    names.append(full if full in mods else sub)
            elif node.module.startswith(PLUGINS + "."):
                outside.add(node.module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PKG + "."):
                    names.append(alias.name[len(PKG) + 1 :])
                elif alias.name.startswith(PLUGINS + "."):
                    outside.add(alias.name)
        inside.update(n for n in names if n)
    return inside, outside


MODS = _sources()
GRAPH = {m: _imports(p, MODS)[0] for m, p in MODS.items()}


def test_every_top_level_piece_has_a_layer():
    tops = {m.split(".")[0] for m in MODS if m}
    missing = sorted(t for t in tops if t not in LAYERS)
    assert not missing, f"give {missing} a layer in LAYERS and a row in docs/architecture.md"


@pytest.mark.parametrize("mod", sorted(m for m in MODS if m))
def test_imports_point_down(mod):
    top = mod.split(".")[0]
    for dep in sorted(GRAPH[mod]):
        dep_top = dep.split(".")[0]
        if dep_top == top:
            continue
        assert LAYERS[dep_top] < LAYERS[top], (
            f"{mod} (layer {LAYERS[top]}) imports {dep} (layer {LAYERS[dep_top]}): imports must point down a layer"
        )


def test_no_import_cycle():
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(GRAPH.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep in GRAPH and not state.get(dep):
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for mod in sorted(GRAPH):
        if not state.get(mod):
            visit(mod, [])
    assert not cycles, cycles


def test_module_utils_import_no_plugin_above_them():
    for mod, path in sorted(MODS.items()):
        outside = _imports(path, MODS)[1]
        assert not outside, f"{mod} imports {sorted(outside)}: module_utils must not depend on modules or plugins"


def test_every_package_has_an_init():
    for d in sorted(p for p in MU.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        if any(d.glob("*.py")):
            assert (d / "__init__.py").is_file(), f"{d.relative_to(ROOT)} has no __init__.py"


def test_the_layer_table_sees_a_wrong_arrow(tmp_path):
    """The check can fail: an upward import in a synthetic file is reported."""
    src = tmp_path / "x.py"
    src.write_text(f"from {PKG}._fleet import schema\n")
    inside, _ = _imports(src, MODS)
    assert inside == {"_fleet.schema"} and LAYERS["_fleet"] > LAYERS["_engine"]
