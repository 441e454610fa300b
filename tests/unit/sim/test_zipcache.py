"""The bed's compile cache for zip imports (sim/hosts/zipcache.py): what AnsiballZ modules import on the simulated hosts.

A zipped module imports the same with and without the cache; its second import compiles nothing; a changed source is
compiled again; a corrupt entry is compiled again; tracebacks name the zip of this run; and .venv's Python turns it on
exactly when GPUFLEET_ZIPIMPORT_CACHE is set (the .pth file hack/setup.sh writes).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import traceback
import zipfile
import zipimport
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


@pytest.fixture
def zipcache() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("zipcache_under_test", ROOT / "sim" / "hosts" / "zipcache.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    before = zipimport._compile_source  # type: ignore[attr-defined]
    env = os.environ.pop("GPUFLEET_ZIPIMPORT_CACHE", None)
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        zipimport._compile_source = before  # type: ignore[attr-defined]
        if env is not None:
            os.environ["GPUFLEET_ZIPIMPORT_CACHE"] = env


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths zipimport really compiles (the function under the cache)."""
    seen: list[str] = []
    real = getattr(zipimport._compile_source, "uncached", zipimport._compile_source)  # type: ignore[attr-defined]

    def counting(pathname: str, source: bytes):  # type: ignore[no-untyped-def]
        seen.append(pathname)
        return real(pathname, source)

    monkeypatch.setattr(zipimport, "_compile_source", counting)
    return seen


def import_from_zip(zip_path: Path, name: str, source: str) -> ModuleType:
    with zipfile.ZipFile(zip_path, "w") as z:
        z.writestr(f"{name}.py", source)
    spec = zipimport.zipimporter(str(zip_path)).find_spec(name)  # what a zip on sys.path does
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SOURCE = "def answer():\n    return 42\n\ndef fail():\n    raise ValueError('boom')\n"


def test_second_import_compiles_nothing_and_names_its_own_zip(zipcache, compiles, tmp_path: Path) -> None:
    zipcache.install(str(tmp_path / "cache"))
    first = import_from_zip(tmp_path / "one.zip", "zc_mod", SOURCE)
    second = import_from_zip(tmp_path / "two.zip", "zc_mod", SOURCE)
    assert first.answer() == second.answer() == 42
    assert compiles == [str(tmp_path / "one.zip" / "zc_mod.py")]
    assert second.answer.__code__.co_filename == str(tmp_path / "two.zip" / "zc_mod.py")
    with pytest.raises(ValueError) as err:
        second.fail()
    assert str(tmp_path / "two.zip" / "zc_mod.py") in "".join(traceback.format_tb(err.tb))
    assert len(list((tmp_path / "cache").rglob("*"))) == 2  # one directory, one entry, no temporary file left


def test_changed_source_is_compiled_again(zipcache, compiles, tmp_path: Path) -> None:
    zipcache.install(str(tmp_path / "cache"))
    import_from_zip(tmp_path / "one.zip", "zc_mod", SOURCE)
    changed = import_from_zip(tmp_path / "two.zip", "zc_mod", SOURCE.replace("42", "43"))
    assert changed.answer() == 43
    assert len(compiles) == 2


def test_corrupt_entry_is_compiled_again(zipcache, compiles, tmp_path: Path) -> None:
    zipcache.install(str(tmp_path / "cache"))
    import_from_zip(tmp_path / "one.zip", "zc_mod", SOURCE)
    for entry in (tmp_path / "cache").rglob("*"):
        if entry.is_file():
            entry.write_bytes(b"\x00not marshal")
    assert import_from_zip(tmp_path / "two.zip", "zc_mod", SOURCE).answer() == 42
    assert len(compiles) == 2


def test_uninstall_compiles_every_time(zipcache, compiles, tmp_path: Path) -> None:
    zipcache.install(str(tmp_path / "cache"))
    zipcache.install(str(tmp_path / "cache"))  # twice: still one layer
    zipcache.uninstall()
    import_from_zip(tmp_path / "one.zip", "zc_mod", SOURCE)
    import_from_zip(tmp_path / "two.zip", "zc_mod", SOURCE)
    assert {str(tmp_path / z / "zc_mod.py") for z in ("one.zip", "two.zip")} == set(compiles)


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason="no .venv (hack/setup.sh makes it)")
@pytest.mark.parametrize("setting", ["dir", "", None])
def test_venv_python_has_the_cache_only_when_the_variable_names_a_directory(setting, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GPUFLEET_ZIPIMPORT_CACHE"}
    if setting is not None:
        env["GPUFLEET_ZIPIMPORT_CACHE"] = str(tmp_path / "cache") if setting == "dir" else ""
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as z:
        z.writestr("zc_probe.py", "VALUE = 7\n")
    probe = f"import sys, zipimport; sys.path.insert(0, {str(tmp_path / 'm.zip')!r}); import zc_probe; "
    probe += "print(zc_probe.VALUE, zipimport._compile_source.__name__)"
    out = subprocess.run([str(VENV_PYTHON), "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["7", "cached_compile" if setting == "dir" else "_compile_source"]
    assert (tmp_path / "cache").exists() == (setting == "dir")
