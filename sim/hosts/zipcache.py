"""A compile cache for the code Python imports from zip files, on the test bed only.

Every Ansible module run ships its code as a zip (AnsiballZ) that Python imports with zipimport, which never caches
bytecode: each run compiles ansible.module_utils.basic and everything it imports again, about 0.2 s of CPU out of
0.35 s for a module run on this machine's Python. The test suite runs about 1500 modules on the simulated hosts, so
that is minutes of CPU on a 2-core machine. Real hosts pay it; the bed caches it.

Imported at start-up by every Python of .venv (the Python of the simulated hosts, the controller and the tests), through
the gpufleet_zipcache.pth and the gpufleet_zipcache.py link that hack/setup.sh puts in its site-packages, and active when
GPUFLEET_ZIPIMPORT_CACHE names a directory: sim/hosts/hosts.sh sets it in the hosts' sshd (SetEnv), hack/env.sh for
the controller. Unset or empty: Python imports as always. No other Python (the EE's, sanity's venvs, the images') has
it.

The cache key is the source's SHA-256 with the Python version and the optimization level; the code object is
marshalled there the first time and loaded from there after, with its file name set to this run's path (tracebacks
name the real zip). Writes are atomic (temporary file, rename), so concurrent module runs never read half a file.
Anything unexpected (no directory, a corrupt entry) falls back to compiling.
"""

from __future__ import annotations

import os
import sys
import types
import zipimport

_MAGIC = f"{sys.implementation.cache_tag}-o{sys.flags.optimize}".encode()


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    """code with co_filename (its own and its nested code objects') set to filename."""
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _uncached() -> types.FunctionType:
    """zipimport's own compile function, whether or not the cache is installed."""
    return getattr(zipimport._compile_source, "uncached", zipimport._compile_source)  # type: ignore[attr-defined]


def install(directory: str) -> None:
    """Make zipimport compile through the cache in directory (created if missing)."""
    os.makedirs(directory, exist_ok=True)
    compile_source = _uncached()

    def cached_compile(pathname: str, source: bytes) -> types.CodeType:
        # Imported here, not at start-up: every Python of .venv loads this file, and hashlib (OpenSSL) alone took
        # 5-8 ms of it; a process that imports nothing from a zip never needs them.
        import hashlib
        import marshal

        key = hashlib.sha256(_MAGIC + b"\0" + source).hexdigest()
        entry = os.path.join(directory, key[:2], key[2:])
        try:
            with open(entry, "rb") as f:
                return _renamed(marshal.loads(f.read()), pathname)
        except (OSError, ValueError, EOFError, TypeError):
            pass
        code = compile_source(pathname, source)
        try:
            os.makedirs(os.path.dirname(entry), exist_ok=True)
            tmp = f"{entry}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(marshal.dumps(code))
            os.replace(tmp, entry)
        except OSError:
            pass
        return code

    cached_compile.uncached = compile_source  # type: ignore[attr-defined]
    zipimport._compile_source = cached_compile  # type: ignore[attr-defined]


def uninstall() -> None:
    """Compile without the cache again."""
    zipimport._compile_source = _uncached()  # type: ignore[attr-defined]


def _from_environment() -> None:
    directory = os.environ.get("GPUFLEET_ZIPIMPORT_CACHE", "")
    if directory and hasattr(zipimport, "_compile_source"):
        try:
            install(directory)
        except OSError:
            pass


_from_environment()
