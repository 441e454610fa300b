"""What the node agent needs on a host (plugins/module_utils/_agent/shipping.py): exactly the import closure of its
program, with the package __init__.py files, read from the sources."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.cli import main
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.shipping import ENTRY, MODULE, PACKAGE, shipped_files
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
