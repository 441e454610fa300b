"""Shared pytest set-up: the collection on the Ansible collection path and the test-bed fixtures.

Fixture modules live in tests/fixtures/ (one per part of the test bed) and are registered here as plugins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / ".build" / "collections"
_link = COLLECTIONS / "ansible_collections" / "gpufleet" / "vllm"
if not _link.exists():
    _link.parent.mkdir(parents=True, exist_ok=True)
    _link.symlink_to(ROOT)
sys.path.insert(0, str(COLLECTIONS))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(COLLECTIONS))
os.environ.setdefault("ANSIBLE_COLLECTIONS_SCAN_SYS_PATH", "false")
os.environ.setdefault("ANSIBLE_NOCOLOR", "1")

pytest_plugins = sorted(
    f"fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if not p.stem.startswith("_")
)


# ------------------------------------------------------------------------------------------------ pytest-xdist
# hack/test.sh runs the integration tests with `-n 2 --dist loadgroup`, scheduled here by file: a file's tests run on
# one worker (module- and session-scoped bed fixtures are set up once per file, and a file's tests may build on each
# other's state), and every file that uses `sim_fleet_lock` (fleets converged on the shared simulated hosts) joins one
# group, "sim-fleet", which runs first and on one worker, so no worker sits blocked on the other's lock. Unit tests
# are their own scope each (spread test by test). The groups are computed from node ids and file contents, not from
# xdist_group marks: pytest-xdist 3.8 adds a mark's group to `item._nodeid`, which pytest 9.2 no longer reads.
SIM_FLEET_GROUP = "sim-fleet"
_fleet_files: dict[str, bool] = {}


def xdist_scope(nodeid: str) -> str:
    """The scheduling scope of a test: an explicit xdist group, "sim-fleet", its integration file, or itself."""
    if "@" in nodeid:
        return nodeid.rsplit("@", 1)[1]
    path = nodeid.split("::", 1)[0]
    if not path.startswith("tests/integration/"):
        return nodeid
    if path not in _fleet_files:
        try:
            _fleet_files[path] = "sim_fleet_lock" in (ROOT / path).read_text()
        except OSError:
            _fleet_files[path] = False
    return SIM_FLEET_GROUP if _fleet_files[path] else path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the longest chain (the fleet group) is handed out first
        items.sort(key=lambda item: xdist_scope(item.nodeid) != SIM_FLEET_GROUP)  # stable; every worker the same


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; a run without xdist never calls it
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class BedScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    config.option.loadscopereorder = False  # keep the collection order: the fleet group first
    return BedScheduling(config, log)
