"""sim/bed.sh runs its steps in order, `up STEP...` only those, and `# bed-step: background` steps beside the later ones.

The steps here are small scripts in a temporary directory (GPUFLEET_BED_STEPS); they record what ran in a file. The
background test waits on a condition, not a clock: the background step waits (bounded) for a file that only a later
foreground step writes, so it can end only if both ran at the same time.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BED = ROOT / "sim" / "bed.sh"


def step(steps: Path, name: str, body: str, background: bool = False) -> None:
    marker = "# bed-step: background\n" if background else ""
    (steps / f"{name}.sh").write_text(f"#!/usr/bin/env bash\n{marker}set -eu\n{body}\n")


def bed(steps: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUFLEET_BED_STEPS": str(steps)}
    return subprocess.run(["bash", str(BED), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def steps(tmp_path: Path) -> Path:
    d = tmp_path / "steps.d"
    d.mkdir()
    return d


def test_up_runs_in_order_down_in_reverse_and_up_step_only_that(steps: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    for name in ("10-one", "20-two", "30-three"):
        step(steps, name, f'echo "{name} $1" >>{log}')
    assert bed(steps, "up").returncode == 0
    assert bed(steps, "down").returncode == 0
    assert bed(steps, "up", "three", "one").returncode == 0
    lines = log.read_text().split("\n")[:-1]
    assert lines == [
        "10-one up", "20-two up", "30-three up",
        "30-three down", "20-two down", "10-one down",
        "10-one up", "30-three up",
    ]  # fmt: skip
    missing = bed(steps, "up", "nosuch")
    assert missing.returncode == 2 and "no step named nosuch" in missing.stderr


def test_a_background_step_runs_beside_the_later_steps_and_up_waits_for_it(steps: Path, tmp_path: Path) -> None:
    flag, done = tmp_path / "flag", tmp_path / "done"
    # waits up to 60 s for the flag the next step writes: it ends only if the two ran at the same time
    step(
        steps,
        "10-slow",
        f"for _ in $(seq 600); do [[ -e {flag} ]] && break; sleep 0.1; done; [[ -e {flag} ]]; touch {done}",
        True,
    )
    step(steps, "20-next", f"touch {flag}")
    r = bed(steps, "up")
    assert r.returncode == 0, r.stderr
    assert done.exists()  # up returned after the background step ended
    assert "10-slow" in r.stderr and "20-next" in r.stderr


def test_a_failed_background_step_fails_up_after_the_others_ran(steps: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    step(steps, "10-bad", "echo 'what went wrong' >&2; exit 3", True)
    step(steps, "20-next", f"touch {ran}")
    r = bed(steps, "up")
    assert r.returncode == 1
    assert ran.exists()
    assert "what went wrong" in r.stderr and "10-bad" in r.stderr and "FAILED (rc=3)" in r.stderr


def test_down_runs_background_steps_in_the_foreground(steps: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    step(steps, "10-one", f'echo "one $1" >>{log}')
    step(steps, "20-bg", f'echo "bg $1" >>{log}', True)
    step(steps, "30-three", f'echo "three $1" >>{log}')
    assert bed(steps, "down").returncode == 0
    assert log.read_text().split("\n")[:-1] == ["three down", "bg down", "one down"]
