# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the node agent needs on a host: the module that runs it (``MODULE``) and the module_utils files it imports,
transitively (``shipped_files``). The role ``gpufleet.vllm.node_agent`` ships exactly these files, byte for byte:
never a copy that could drift."""

from __future__ import annotations

import ast
import os

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

PACKAGE = "ansible_collections.gpufleet.vllm.plugins.module_utils"
ENTRY = "_agent.cli"  # the agent's program, relative to PACKAGE
MODULE = f"{PACKAGE}.{ENTRY}"  # what runs it: python3 -m MODULE


def shipped_files(directory: str | None = None, start: str = ENTRY) -> list[str]:
    """The module_utils files the agent needs on a host: its program, every module_utils module it imports,
    transitively, and the ``__init__.py`` of each package on the way (read from the sources, so the list cannot
    drift from the code). Paths relative to module_utils, sorted."""
    directory = directory or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def module_file(mod: str) -> str | None:
        base = os.path.join(directory, *mod.split("."))
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
        return None

    todo, seen, files = [start], set(), set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = module_file(mod)
        if path is None:
            raise GpufleetError(f"{mod} is imported by the node agent but {directory} has no module file for it")
        files.add(os.path.relpath(path, directory))
        parts = mod.split(".")
        for i in range(1, len(parts)):  # the packages on the way
            todo.append(".".join(parts[:i]))
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), filename=path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == PACKAGE:
                    todo.extend(alias.name for alias in node.names)
                elif node.module.startswith(PACKAGE + "."):
                    sub = node.module[len(PACKAGE) + 1 :]
                    todo.append(sub)
                    # ``from PACKAGE.pkg import mod`` names modules of the package as well as names in it
                    todo.extend(f"{sub}.{a.name}" for a in node.names if module_file(f"{sub}.{a.name}"))
            elif isinstance(node, ast.Import):
                todo.extend(a.name[len(PACKAGE) + 1 :] for a in node.names if a.name.startswith(PACKAGE + "."))
    return sorted(files)
