"""Print the unit test files whose outcome can depend on the ansible-core version (hack/matrix.sh).

A test file is selected when it imports ansible-core (``ansible`` or ``ansible.*``) or a file of the collection that
does, directly or through other files of the collection (modules with AnsibleModule and argument specs, action
plugins, filters, module_utils on ansible.module_utils.urls/basic, ...). The other unit tests check pure logic of the
collection: they run the same on every core and run once, on the test venv's core (hack/test.sh).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PREFIX = "ansible_collections.gpufleet.vllm."


def imported(path: Path) -> set[str]:
    """Dotted names a file imports (``from a import b`` gives ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def is_core(name: str) -> bool:
    return name == "ansible" or name.startswith("ansible.")


def main(root: Path) -> int:
    files = {
        PREFIX + p.with_suffix("").relative_to(root).as_posix().replace("/", "."): p
        for p in root.glob("plugins/**/*.py")
    }
    graph = {name: imported(path) for name, path in files.items()}
    touches = {name for name, names in graph.items() if any(is_core(n) for n in names)}
    while True:  # the closure: a file importing one that touches ansible-core touches it too
        more = {name for name, names in graph.items() if name not in touches and names & touches}
        if not more:
            break
        touches |= more
    for test in sorted(root.glob("tests/unit/**/test_*.py")):
        names = imported(test)
        if any(is_core(n) for n in names) or names & touches:
            print(test.relative_to(root).as_posix())
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()))
