"""What the node agent needs on a host (plugins/module_utils/_agent/shipping.py): exactly the import closure of its
program, with the package __init__.py files, read from the sources."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.cli import main
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.shipping import (
    COMPLETE,
    ENTRY,
    MODULE,
    PACKAGE,
    PACKAGE_DIR,
    pack,
    shipped_files,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

MODULE_UTILS = Path(__file__).resolve().parents[4] / "plugins" / "module_utils"
ENTRY_FILE = ENTRY.replace(".", "/") + ".py"


def test_shipped_files_are_the_import_closure():
    files = shipped_files()
    assert files == sorted(files) and ENTRY_FILE in files and MODULE == f"{PACKAGE}.{ENTRY}"
    assert {
        "_labels.py",
        "_failures.py",
        "_engine/__init__.py",
        "_engine/base.py",
        "_engine/docker.py",
        "_engine/podman.py",
        "_container/readiness.py",
    } <= set(files)
    for f in files:
        assert (MODULE_UTILS / f).is_file()
    # Closed: every gpufleet module_utils import of a shipped file is shipped too, with its package's __init__.py.
    for f in files:
        src = (MODULE_UTILS / f).read_text()
        for pkg, names in re.findall(r"plugins\.module_utils((?:\.\w+)*) import \(?([\w, \n]+)", src):
            base = pkg.strip(".").replace(".", "/")
            if base:
                assert f"{base}.py" in files or f"{base}/__init__.py" in files, (f, base)
            for name in (n.split(" as ")[0].strip() for n in names.split(",")):
                path = f"{base}/{name}" if base else name
                if name and (MODULE_UTILS / f"{path}.py").is_file():
                    assert f"{path}.py" in files, (f, path)
    # The whole agent package (its program imports every piece of it) ...
    assert {f for f in files if f.startswith("_agent/")} == {
        f"_agent/{p.name}" for p in (MODULE_UTILS / "_agent").glob("*.py")
    }
    # ... and nothing the agent does not import (e.g. the container state machine, the flag tables).
    assert "_container/deployment.py" not in files and "_vllm/args.py" not in files


def test_list_files_cli(capsys):
    assert main(["--list-files"]) == 0
    assert json.loads(capsys.readouterr().out) == shipped_files()


def test_shipped_files_refuses_a_missing_module(tmp_path):
    (tmp_path / "_agent").mkdir()
    (tmp_path / "_agent" / "__init__.py").write_text("")
    (tmp_path / ENTRY_FILE).write_text(f"from {PACKAGE}.nowhere import x\n")
    with pytest.raises(GpufleetError, match="nowhere"):
        shipped_files(str(tmp_path))
    assert os.path.exists(tmp_path / ENTRY_FILE)


def test_pack_is_the_closure_byte_for_byte_and_reproducible(tmp_path, capsys):
    """One archive (the role ships it in one transfer): the packages' __init__.py above module_utils (empty), exactly
    shipped_files() with the collection's bytes, the completion marker last; the same code gives the same bytes."""
    first = pack(str(tmp_path / "a.tar.gz"))
    assert main(["--pack", str(tmp_path / "b.tar.gz")]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert first["files"] == shipped_files() and first["bytes"] == (tmp_path / "a.tar.gz").stat().st_size
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = tar.getmembers()
        files = [m for m in members if m.isfile()]
        assert files[-1].name == COMPLETE and all(m.uid == 0 and m.mtime == 0 for m in members)
        top = f"{PACKAGE_DIR}/__init__.py"
        code = {
            m.name[len(PACKAGE_DIR) + 1 :]: m for m in files if m.name.startswith(PACKAGE_DIR + "/") and m.name != top
        }
        inits = [m.name for m in files if m.name not in {COMPLETE, *(f"{PACKAGE_DIR}/{f}" for f in code)}]
        assert inits == [
            "ansible_collections/__init__.py",
            "ansible_collections/gpufleet/__init__.py",
            "ansible_collections/gpufleet/vllm/__init__.py",
            "ansible_collections/gpufleet/vllm/plugins/__init__.py",
            "ansible_collections/gpufleet/vllm/plugins/module_utils/__init__.py",
        ]
        code = {f: tar.extractfile(m).read() for f, m in code.items()}
    assert sorted(code) == shipped_files()
    assert all(code[f] == (MODULE_UTILS / f).read_bytes() for f in code)


@pytest.mark.skipif(not shutil.which("tar"), reason="no tar")
def test_pack_unpacked_by_tar_runs_the_agent(tmp_path):
    """What the role's unarchive does (GNU tar): the unpacked release imports and runs the agent's program."""
    pack(str(tmp_path / "code.tar.gz"))
    release = tmp_path / "release"
    release.mkdir()
    subprocess.run(["tar", "-xzf", str(tmp_path / "code.tar.gz"), "-C", str(release)], check=True)
    proc = subprocess.run(
        [os.sys.executable, "-m", MODULE, "--list-files"],
        env={"PYTHONPATH": str(release), "PATH": os.environ.get("PATH", "")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == shipped_files() and (release / COMPLETE).exists()
