"""A cache of the imports Ansible's controller finds in module_utils files, on the test bed only.

For every module a task runs, ansible-playbook builds the module's AnsiballZ payload once per run: it parses each
Python file the module imports (recursively: module_utils of ansible-core and of the collection) into an AST and walks
it for more imports. The payload holds the same files in every run of an unchanged tree, yet every run parses them
again: 136 files and 0.85 s of CPU for fleet_apply's payload on this machine, 0.7 s of it the parsing and walking.
The test suite runs about 150 playbooks, each building several payloads, so that is minutes of CPU on a 2-core
machine. Real controllers pay it once per run; the bed caches it.

What is cached: for one file (its source, its dotted name, whether it is a package's __init__), the two sets
ansible-core's ModuleDepFinder computes from its AST (the submodules it imports, the optional ones among them), as
JSON, keyed by the SHA-256 of those inputs and ansible-core's version. The payload's bytes are the same with and
without the cache (tests/unit/sim/test_depcache.py builds payloads both ways and compares them); a file that does not
parse is parsed without the cache and fails as always. The module's own file is parsed as always (its metadata is
read from its AST).

Imported at start-up by every Python of .venv through the gpufleet_zipcache.pth that hack/setup.sh writes, and active
when GPUFLEET_ANSIBALLZ_CACHE names a directory (hack/env.sh sets it): a finder at the front of sys.meta_path waits for
ansible.executor.module_common to be imported, then patches it (no cost to a process that never builds a payload).
ansible-core versions whose module_common differs (names or signatures) are left alone. Writes are atomic
(temporary file, rename); anything unexpected (no directory, a corrupt entry) falls back to parsing.
"""

from __future__ import annotations

import os
import sys

# typing only for type checkers: importing it took 16 ms of every .venv Python's start-up (python -X importtime)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TARGET = "ansible.executor.module_common"
# What the patched builds did in this process: files whose imports came from the cache, files parsed.
stats = {"cached": 0, "parsed": 0}


class Deferred:
    """A module_utils file's source, parsed into an AST only when the cache does not know its imports."""

    __slots__ = ("name", "source")

    def __init__(self, name: str, source: str | bytes) -> None:
        self.name = name
        self.source = source


def patch(mc: Any, directory: str) -> bool:
    """Make module_common (the imported module) find imports through the cache in directory; False if it can't."""
    import hashlib
    import json

    compile_ast = getattr(mc, "_compile_module_ast", None)
    finder_class = getattr(mc, "ModuleDepFinder", None)
    get_metadata = getattr(mc, "_get_module_metadata", None)
    version = getattr(sys.modules.get("ansible.release"), "__version__", None)
    if compile_ast is None or finder_class is None or get_metadata is None or version is None:
        return False
    if getattr(compile_ast, "gpufleet_depcache", False):
        return True
    os.makedirs(directory, exist_ok=True)

    def tree_of(tree: Any) -> Any:
        if not isinstance(tree, Deferred):
            return tree
        stats["parsed"] += 1
        return compile_ast(tree.name, tree.source)

    def deferred_compile(module_name: str, source_code: str | bytes) -> Deferred:
        return Deferred(module_name, source_code)

    def metadata(tree: Any) -> Any:
        return get_metadata(tree_of(tree))

    original_init = finder_class.__init__

    def cached_init(
        self: Any, module_fqn: str, tree: Any, is_pkg_init: bool = False, *args: Any, **kwargs: Any
    ) -> None:
        """ModuleDepFinder's result (submodules, optional_imports) from the cache, or computed and cached."""
        if not isinstance(tree, Deferred):
            original_init(self, module_fqn, tree, is_pkg_init, *args, **kwargs)
            return
        source = tree.source if isinstance(tree.source, bytes) else tree.source.encode("utf-8", "surrogateescape")
        head = f"{version}\0{module_fqn}\0{bool(is_pkg_init)}\0".encode()
        key = hashlib.sha256(head + source).hexdigest()
        entry = os.path.join(directory, key[:2], key[2:])
        try:
            with open(entry, encoding="utf-8") as f:
                found = json.load(f)
            submodules = {tuple(m) for m in found["submodules"]}
            optional = {tuple(m) for m in found["optional_imports"]}
        except (OSError, ValueError, KeyError, TypeError):
            pass
        else:
            stats["cached"] += 1
            self.module_fqn, self.is_pkg_init = module_fqn, is_pkg_init
            self.submodules, self.optional_imports = submodules, optional
            return
        original_init(self, module_fqn, tree_of(tree), is_pkg_init, *args, **kwargs)
        try:
            os.makedirs(os.path.dirname(entry), exist_ok=True)
            tmp = f"{entry}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"submodules": sorted(self.submodules), "optional_imports": sorted(self.optional_imports)}, f)
            os.replace(tmp, entry)
        except (OSError, TypeError):
            pass

    deferred_compile.gpufleet_depcache = True  # type: ignore[attr-defined]
    mc._compile_module_ast = deferred_compile
    mc._get_module_metadata = metadata
    finder_class.__init__ = cached_init
    mc._gpufleet_depcache_originals = (compile_ast, get_metadata, original_init)
    return True


def unpatch(mc: Any) -> None:
    """module_common as ansible-core wrote it again."""
    originals = getattr(mc, "_gpufleet_depcache_originals", None)
    if originals:
        mc._compile_module_ast, mc._get_module_metadata, mc.ModuleDepFinder.__init__ = originals
        del mc._gpufleet_depcache_originals


class _PatchOnImport:
    """A sys.meta_path finder that patches module_common right after it is imported (then removes itself)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != TARGET:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module
        directory = self.directory

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            try:
                patch(module, directory)
            except Exception:  # the bed's cache never stops a build: ansible-core as it is then
                pass

        loader.exec_module = exec_and_patch
        return spec


def install(directory: str) -> None:
    """Patch module_common now if it is imported, else when it is."""
    mc = sys.modules.get(TARGET)
    if mc is not None:
        patch(mc, directory)
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport(directory))


def _from_environment() -> None:
    directory = os.environ.get("GPUFLEET_ANSIBALLZ_CACHE", "")
    if directory:
        install(directory)


_from_environment()
