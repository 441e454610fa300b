"""Shared pytest set-up: the collection on the Ansible collection path and the test-bed fixtures.

Fixture modules live in tests/fixtures/ (one per part of the test bed) and are registered here as plugins.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Iterator
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
# hack/test.sh runs the integration tests with `-n 2 --dist loadgroup` (any distributing mode gets the same
# grouping), scheduled here by file: a file's tests run on
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
    # An xdist worker: the longest chain (the fleet group) is handed out first, and in it the files marked
    # `after_background_builds` come last (test_ee waits for the image hack/test.sh builds in the background, at a
    # lower priority: first in the chain, it held the chain up to two minutes). Stable; every worker the same.
    if hasattr(config, "workerinput"):
        items.sort(
            key=lambda item: (
                xdist_scope(item.nodeid) != SIM_FLEET_GROUP,
                item.get_closest_marker("after_background_builds") is not None,
            )
        )


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; a run without xdist never calls it
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    # Every distributing mode gets the bed's grouping (plain `-n 2` means `--dist load`, which would spread one fleet
    # file's dependent tests over both workers and race its module fixtures); `each`/`no` are left to xdist.
    if config.getoption("dist") in ("each", "no"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class BedScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    config.option.loadscopereorder = False  # keep the collection order: the fleet group first
    return BedScheduling(config, log)


# ------------------------------------------------------------------------------------------------ time per file
# Seconds and CPU seconds per test file (set-up + call + tear-down of its tests, summed; with xdist the controller
# receives every worker's reports), printed after the run, slowest first, and written as JSON to the file
# GPUFLEET_TEST_DURATIONS names (unset: printed only). CPU: the test process's own and that of the processes it
# waited for (ansible-playbook and its workers, modules run here, ...; getrusage), not the bed's daemons, containers
# or the simulated hosts' sessions: what a test costs the controller. A file's module fixtures count in its first and
# last tests, a session fixture in the first test that uses it.
_file_seconds: dict[str, float] = {}
_file_cpu: dict[str, float] = {}
_cpu_mark: list[float] = [0.0]


def _cpu_now() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _cpu_mark[0] = _cpu_now()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    now = _cpu_now()
    outcome.get_result().user_properties.append(("cpu_s", now - _cpu_mark[0]))  # type: ignore[attr-defined]
    _cpu_mark[0] = now


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _file_seconds[path] = _file_seconds.get(path, 0.0) + report.duration
    cpu = sum(v for k, v in report.user_properties if k == "cpu_s")
    _file_cpu[path] = _file_cpu.get(path, 0.0) + cpu


def pytest_terminal_summary(terminalreporter: object, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not _file_seconds:
        return
    rows = sorted(_file_seconds.items(), key=lambda kv: -kv[1])
    write = terminalreporter.write_line  # type: ignore[attr-defined]
    write("")
    write(
        f"seconds per file (set-up + call + tear-down, all workers; total {sum(_file_seconds.values()):.1f} s,"
        f" CPU {sum(_file_cpu.values()):.1f} s: the tests' processes and what they waited for)"
    )
    write(f"{'seconds':>9}  {'CPU s':>7}  file")
    for path, secs in rows[:40]:
        write(f"{secs:9.1f}  {_file_cpu.get(path, 0.0):7.1f}  {path}")
    target = os.environ.get("GPUFLEET_TEST_DURATIONS")
    if target:
        import json

        table = {path: {"seconds": round(secs, 1), "cpu_s": round(_file_cpu.get(path, 0.0), 1)} for path, secs in rows}
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(table, indent=1) + "\n")
