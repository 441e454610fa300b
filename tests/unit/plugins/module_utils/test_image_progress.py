"""Image pull progress (issue #19 item 6): bytes and layers from recorded pull streams of the bed's registry (docker
20.10 and podman 4.3.1's Docker-compatible service, data/pull_stream_*.jsonl), the progress file while the pull runs
(driven clock), its removal at the end, the status line (vllm_image's result: test_image_module.py)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._image import progress as pp

DATA = Path(__file__).parent / "data"
LAYERS = {"08561cfa82c2": 3001126, "9550e828cab3": 1500650}


def stream(engine: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / f"pull_stream_{engine}.jsonl").read_text().splitlines()]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_docker_stream_bytes_and_layers_while_pulling_and_at_the_end(tmp_path: Path) -> None:
    clock = Clock()
    tracker = pp.PullProgress("r/img:1", str(tmp_path), clock=clock, interval=1.0)
    path = Path(pp.progress_path(str(tmp_path), "r/img:1"))
    events = stream("docker")
    seen = []
    for event in events:
        tracker.feed(event)
        seen.append(tracker.snapshot())
        clock.t += 0.4
    first_bytes = next(s for s in seen if s["bytes_total"])
    assert first_bytes["phase"] == "pulling" and 0 < first_bytes["bytes_done"] < first_bytes["bytes_total"]
    assert any(s["phase"] == "extracting" for s in seen)
    assert all(a["bytes_done"] <= b["bytes_done"] for a, b in itertools.pairwise(seen))  # never goes back
    # The file is written at most once per interval (the clock is driven): it holds the last written snapshot.
    on_disk = json.loads(path.read_text())
    assert on_disk["image"] == "r/img:1" and on_disk["updated_at"] <= clock.t
    final = tracker.close()
    total = sum(LAYERS.values())
    assert (final["bytes_done"], final["bytes_total"], final["bytes_known"]) == (total, total, True)
    assert (final["layers_done"], final["layers_total"], final["phase"]) == (2, 2, "done")
    assert not path.exists()  # a finished pull leaves no file behind
    assert pp.progress_text(final) == "pulling image · 4.5/4.5 MB"


def test_podman_stream_counts_layers_without_bytes() -> None:
    tracker = pp.PullProgress("r/img:1", engine="podman")
    for event in stream("podman"):
        tracker.feed(event)
    final = tracker.close()
    assert (final["layers_done"], final["layers_total"], final["bytes_known"]) == (3, 3, False)
    assert final["phase"] == "done" and final["bytes_total"] == 0
    assert pp.progress_text(final) == "pulling image · 3/3 layers"


def test_midway_snapshot_and_status_line(tmp_path: Path) -> None:
    """A pull of 21.6 GB with 3.5 GB done reads as aquila shows it; read_all gives the files with their age."""
    clock = Clock()
    tracker = pp.PullProgress("vllm/vllm-openai:v0.10.2", str(tmp_path), clock=clock, interval=0)
    tracker.feed({"status": "Already exists", "id": "base"})
    tracker.feed({"status": "Downloading", "id": "a", "progressDetail": {"current": 3_500_000_000, "total": 7.2e9}})
    tracker.feed(
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 3_500_000_000, "total": 7_200_000_000}}
    )
    tracker.feed({"status": "Downloading", "id": "b", "progressDetail": {"current": 0, "total": 14_400_000_000}})
    (row,) = pp.read_all(str(tmp_path), now=clock.t + 5)
    assert row["text"] == "pulling image · 3.5/21.6 GB" and row["age"] == 5.0
    assert (row["layers_done"], row["layers_total"], row["layers_existing"]) == (1, 3, 1)
    tracker.feed({"error": "unexpected EOF", "errorDetail": {"message": "unexpected EOF"}})
    assert tracker.close()["phase"] == "pulling" and pp.read_all(str(tmp_path)) == []


def test_an_unwritable_progress_dir_never_fails_the_pull(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    tracker = pp.PullProgress("r/i:1", str(blocker / "pulls"))
    for event in stream("docker"):
        tracker.feed(event)
    assert tracker.close()["bytes_known"] is True


def test_gather_and_the_status_report_show_the_pulls_running(tmp_path: Path, fake_runtime: Any) -> None:
    """vllm_deployment_info (state_dir) lists the progress files; the status report and table show each pull."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container.info import gather
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import status as fr_status

    tracker = pp.PullProgress("vllm/vllm-openai:v0.10.2", str(tmp_path / pp.PULLS_DIR), interval=0)
    tracker.feed({"status": "Downloading", "id": "a", "progressDetail": {"current": 3_500_000_000, "total": 21.6e9}})
    tracker.feed(
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 3_500_000_000, "total": 21_600_000_000}}
    )
    params = {"runtime": "docker", "probe": False, "classify_failures": False, "state_dir": str(tmp_path)}
    info = gather(params, fake_runtime)
    (pull,) = info["pulls"]
    assert pull["text"] == "pulling image · 3.5/21.6 GB" and pull["bytes_total"] == 21_600_000_000
    report = fr_status.status_report({"gpu-a": info}, generated_at=0)
    assert report["pulls"][0]["host"] == "gpu-a" and report["pulls"][0]["bytes_done"] == 3_500_000_000
    lines = fr_status.status_table(report)
    assert any(line.startswith("gpu-a: pulling image · 3.5/21.6 GB (vllm/vllm-openai:v0.10.2,") for line in lines)
    tracker.close()
    assert gather(params, fake_runtime)["pulls"] == []
