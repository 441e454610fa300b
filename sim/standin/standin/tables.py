"""Find and load the vLLM flag tables (data modules `v<major>_<minor>_<patch>.py` holding `TABLE`).

Search order: STANDIN_TABLES (one directory); else the image's /opt/standin/tables (copied there by
sim/images/build.sh); else, in a checkout, the generated tables in plugins/module_utils/_vllm/flag_tables.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^v(\d+)_(\d+)_(\d+)\.py$")
_HERE = Path(__file__).resolve().parent
REAL_DIR = _HERE.parents[2] / "plugins" / "module_utils" / "_vllm" / "flag_tables"
IMAGE_DIR = _HERE.parent / "tables"


def version_key(version: str) -> tuple[int, ...]:
    nums = re.findall(r"\d+", version)[:3]
    return tuple(int(n) for n in nums) + (0,) * (3 - len(nums))


def _in_dir(d: Path) -> dict[str, Path]:
    out = {}
    for p in d.iterdir() if d.is_dir() else []:
        m = _NAME.match(p.name)
        if m:
            out[".".join(m.groups())] = p
    return out


def default_dirs() -> list[Path]:
    """Directories in priority order (first wins for a version)."""
    if os.environ.get("STANDIN_TABLES"):
        return [Path(os.environ["STANDIN_TABLES"])]
    if _in_dir(IMAGE_DIR):
        return [IMAGE_DIR]
    return [REAL_DIR]


def available(dirs: Path | list[Path] | None = None) -> dict[str, Path]:
    """Map "0.10.2" -> path of its table module, oldest first."""
    if dirs is None:
        dirs = default_dirs()
    if isinstance(dirs, Path):
        dirs = [dirs]
    out: dict[str, Path] = {}
    for d in reversed(dirs):
        out.update(_in_dir(d))
    return dict(sorted(out.items(), key=lambda kv: version_key(kv[0])))


def load(version: str, dirs: Path | list[Path] | None = None) -> dict[str, Any]:
    """The table of `version`; an unknown version gets the newest table not newer than it (else the oldest)."""
    tabs = available(dirs)
    if not tabs:
        raise FileNotFoundError(f"no vLLM flag tables (v*_*_*.py) in {dirs or default_dirs()}")
    if version in tabs:
        path = tabs[version]
    else:
        older = [v for v in tabs if version_key(v) <= version_key(version)]
        path = tabs[older[-1] if older else next(iter(tabs))]
    spec = importlib.util.spec_from_file_location(f"_vllm_flag_table_{path.stem}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.TABLE
