"""The node agent's copy of the vLLM logs (plugins/module_utils/_agent/logs.py): ANSI stripped, probe lines left out,
UTC stamps from the engine's times, one file per run (the previous as .1), size-bounded, deleted after the retention;
driven by an in-memory engine and a clock the test sets."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent import logs
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState, Runtime

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z: in the past, as the files' real mtimes are to the retention
DAY = 86400.0


def iso(t: float, nanos: int = 0) -> str:
    """An engine timestamp (RFC 3339, nanoseconds, Z)."""
    whole = datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{round((t - int(t)) * 1e9) + nanos:09d}Z"


class Engine(Runtime):
    """Containers whose logs are (time, text) pairs, read with the engine's timestamp prefix and since (inclusive)."""

    def __init__(self) -> None:
        self.lines: dict[str, list[tuple[float, str]]] = {}
        self.reads: list[float | None] = []

    def say(self, cid: str, t: float, text: str) -> None:
        self.lines.setdefault(cid, []).append((t, text))

    def _since(self, cid: str, since: float | None) -> list[str]:
        self.reads.append(since)
        return [f"{iso(t)} {text}" for t, text in self.lines.get(cid, []) if since is None or t >= since]

    def logs(self, cid: str, tail: int = 300, since: float | None = None, timestamps: bool = False) -> list[str]:
        assert tail == -1 and timestamps
        return self._since(cid, since)

    def follow(self, cid: str, since: float | None = None, timestamps: bool = False) -> Iterator[str]:
        yield from self._since(cid, since)  # a stream that ends (the container stopped)


def container(cid: str, started: float, status: str = "running", name: str = "chat-0") -> ContainerState:
    labels = {lb.MANAGED: "true", lb.DEPLOYMENT: name}
    return ContainerState(cid, f"gpufleet-{name}", status, status == "running", 0, 0, labels, started_at=iso(started))


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


def keeper(tmp_path, clock, **kw) -> logs.LogKeeper:
    return logs.LogKeeper(str(tmp_path / "vllm-logs"), clock=clock, follow=kw.pop("follow", False), **kw)


def read(tmp_path, name: str = "chat-0.log") -> list[str]:
    return (tmp_path / "vllm-logs" / name).read_text().splitlines()


# ------------------------------------------------------------------------------------------------ pure pieces
def test_ansi_stripped():
    assert logs.strip_ansi("\x1b[32mINFO\x1b[0m \x1b[1;31mred\x1b[0m\r") == "INFO red"
    assert logs.strip_ansi("\x1b]0;title\x07text \x1b[2K\x1b[1Gdone") == "text done"


@pytest.mark.parametrize(
    ("text", "probe"),
    [
        ('INFO:     127.0.0.1:51234 - "GET /health HTTP/1.1" 200 OK', True),
        ('(APIServer pid=1) INFO:     10.0.0.5:40000 - "GET /metrics HTTP/1.1" 200 OK', True),
        ('INFO:     127.0.0.1:1 - "HEAD /health HTTP/1.1" 204 No Content', True),
        ('INFO:     127.0.0.1:1 - "GET /health HTTP/1.1" 503 Service Unavailable', False),  # a failed probe: kept
        ('INFO:     127.0.0.1:1 - "POST /v1/completions HTTP/1.1" 200 OK', False),
        ('INFO:     127.0.0.1:1 - "GET /healthz HTTP/1.1" 200 OK', False),
        ("INFO 12-02 22:05:40 [metrics.py:1] Avg prompt throughput: 0.0 tokens/s", False),
    ],
)
def test_probe_access_lines_left_out(text, probe):
    assert logs.is_probe(text) is probe


def test_utc_stamps_from_the_engine_times():
    assert logs.stamp(T0 + 0.5) == "2023-11-14T22:13:20.500000Z"
    t, text = logs.split_engine_line("2023-11-14T22:13:20.123456789Z hello world")
    assert t == pytest.approx(T0 + 0.123456789) and text == "hello world"
    assert logs.split_engine_line("2023-11-14T23:13:20.5+01:00 x")[0] == pytest.approx(T0 + 0.5)  # an offset: UTC
    assert logs.split_engine_line("no stamp") == (None, "no stamp")
    assert logs.file_line("2023-11-14T22:13:20.000001Z \x1b[32mINFO\x1b[0m up", T0) == (
        pytest.approx(T0 + 1e-6),
        "2023-11-14T22:13:20.000001Z INFO up",
    )
    assert logs.file_line("x", T0 + 2)[1] == "2023-11-14T22:13:22.000000Z x"  # no engine time: stamped now
    assert logs.line_time("2023-11-14T22:13:20.500000Z text") == pytest.approx(T0 + 0.5)


@pytest.mark.parametrize(
    "started,stamp",
    [
        # nanoseconds that a float sum (10-digit epoch + fraction) rounded to the wrong microsecond
        ("2026-12-04T12:57:48.284132521Z", "2026-12-04T12:57:48.284133Z"),
        ("2026-12-04T12:57:30.737654501Z", "2026-12-04T12:57:30.737655Z"),
        ("2026-12-04T12:57:33.977071496Z", "2026-12-04T12:57:33.977071Z"),
        # half a microsecond: to the even one, as datetime rounds
        ("2026-12-04T12:57:33.000001500Z", "2026-12-04T12:57:33.000002Z"),
        ("2026-12-04T12:57:33.000002500Z", "2026-12-04T12:57:33.000002Z"),
        ("2026-12-04T12:57:59.999999700Z", "2026-12-04T12:58:00.000000Z"),
    ],
)
def test_a_runs_header_has_the_engines_start_rounded_exactly(started, stamp):
    # The header is how the agent (and a person) tells runs apart: it must be the engine's StartedAt, to the
    # microsecond, whatever its nanoseconds.
    c = ContainerState("a" * 64, "gpufleet-x", "running", True, 0, 0, {}, started_at=started)
    run = logs.Run.of(c)
    assert run is not None and run.started_at == stamp
    assert logs.Run.of(ContainerState("a" * 64, "gpufleet-x", "running", True, 0, 0, {}, started_at=stamp)) == run


# ------------------------------------------------------------------------------------------------ runs
def test_a_run_copied_once_filtered_and_stamped(tmp_path, clock):
    rt, k = Engine(), keeper(tmp_path, clock)
    rt.say("a" * 64, T0 + 1, "\x1b[32mINFO\x1b[0m Starting vLLM API server")
    rt.say("a" * 64, T0 + 2, 'INFO:     127.0.0.1:5 - "GET /health HTTP/1.1" 200 OK')
    rt.say("a" * 64, T0 + 3, "INFO Application startup complete.")
    c = container("a" * 64, T0)
    k.sync(rt, [c])
    assert read(tmp_path) == [
        f"2023-11-14T22:13:20.000000Z --- run of container {'a' * 12}, started 2023-11-14T22:13:20.000000Z ---",
        "2023-11-14T22:13:21.000000Z INFO Starting vLLM API server",
        "2023-11-14T22:13:23.000000Z INFO Application startup complete.",
    ]
    rt.say("a" * 64, T0 + 4, "INFO request done")
    k.sync(rt, [c])
    k.sync(rt, [c])
    assert read(tmp_path)[1:] == [
        "2023-11-14T22:13:21.000000Z INFO Starting vLLM API server",
        "2023-11-14T22:13:23.000000Z INFO Application startup complete.",
        "2023-11-14T22:13:24.000000Z INFO request done",
    ], "each line once: the engine is read from the last line's time on"
    assert rt.reads[-1] == pytest.approx(T0 + 4)


def test_a_restart_makes_the_previous_run_dot_1(tmp_path, clock):
    rt, k = Engine(), keeper(tmp_path, clock)
    cid = "b" * 64
    rt.say(cid, T0 + 1, "run one starts")
    k.sync(rt, [container(cid, T0)])
    rt.say(cid, T0 + 5, "EngineCore encountered a fatal error")  # after the last tick, before the crash
    rt.say(cid, T0 + 10, "run two starts")
    k.sync(rt, [container(cid, T0 + 9)])  # the same container started again
    previous, current = read(tmp_path, "chat-0.log.1"), read(tmp_path)
    assert [line.split(" ", 1)[1] for line in previous[1:]] == [
        "run one starts",
        "EngineCore encountered a fatal error",
    ]
    assert "started 2023-11-14T22:13:29.000000Z" in current[0] and current[1:] == [
        "2023-11-14T22:13:30.000000Z run two starts"
    ]
    # A new container (a converge recreated it): a new run again; the oldest run goes.
    rt.say("c" * 64, T0 + 21, "a new container")
    k.sync(rt, [container("c" * 64, T0 + 20)])
    assert "run two starts" in read(tmp_path, "chat-0.log.1")[1] and read(tmp_path)[1].endswith("a new container")
    assert sorted(os.listdir(tmp_path / "vllm-logs")) == ["chat-0.log", "chat-0.log.1"]


def test_a_stopped_container_is_read_once_and_an_agent_restart_goes_on(tmp_path, clock):
    rt, cid = Engine(), "d" * 64
    rt.say(cid, T0 + 1, "one")
    k = keeper(tmp_path, clock)
    k.sync(rt, [container(cid, T0, status="exited")])
    k.sync(rt, [container(cid, T0, status="exited")])
    assert len(rt.reads) == 1, "an exited container has nothing new"
    rt.say(cid, T0 + 2, "two")
    again = keeper(tmp_path, clock)  # the agent restarted: it goes on from the file's last line
    again.sync(rt, [container(cid, T0)])
    assert [line.split(" ", 1)[1] for line in read(tmp_path)[1:]] == ["one", "two"]
    assert not (tmp_path / "vllm-logs" / "chat-0.log.1").exists()


def test_lines_the_engine_stamps_alike_are_all_copied_once(tmp_path, clock):
    # podman (conmon) stamps every line of one write with the same time: a traceback arrives as one burst.
    rt, cid = Engine(), "9" * 64
    for text in ("Traceback (most recent call last):", '  File "x.py", line 1', "RuntimeError: boom"):
        rt.say(cid, T0 + 1, text)
    k = keeper(tmp_path, clock)
    k.sync(rt, [container(cid, T0)])
    rt.say(cid, T0 + 1, "one more in the burst")  # read by the next tick (since is inclusive: the 3 come again)
    k.sync(rt, [container(cid, T0)])
    again = keeper(tmp_path, clock)  # and after the agent's restart, from the file's last lines
    rt.say(cid, T0 + 1, "and another")
    again.sync(rt, [container(cid, T0)])
    assert [line.split(" ", 1)[1] for line in read(tmp_path)[1:]] == [
        "Traceback (most recent call last):",
        '  File "x.py", line 1',
        "RuntimeError: boom",
        "one more in the burst",
        "and another",
    ]


def test_the_long_running_agent_follows_the_stream(tmp_path, clock):
    rt, cid = Engine(), "e" * 64
    rt.say(cid, T0 + 1, "streamed")
    k = keeper(tmp_path, clock, follow=True)
    k.sync(rt, [container(cid, T0)])
    k.close()
    assert read(tmp_path)[1] == "2023-11-14T22:13:21.000000Z streamed"
    assert k.copies["chat-0"].thread is not None and not k.copies["chat-0"].thread.is_alive()


# ------------------------------------------------------------------------------------------------ bounds
def test_rotated_at_the_size_keeping_the_header_and_the_newest_lines(tmp_path, clock):
    rt, cid = Engine(), "f" * 64
    k = keeper(tmp_path, clock, max_bytes=2000)
    c = container(cid, T0)
    for i in range(100):
        rt.say(cid, T0 + 1 + i, f"line {i:03d} " + "x" * 20)
        k.sync(rt, [c])
    lines = read(tmp_path)
    size = (tmp_path / "vllm-logs" / "chat-0.log").stat().st_size
    assert size <= 2000 and lines[0].endswith(f"started {logs.stamp(T0)} ---")
    assert "bytes of this run dropped ---" in lines[1]
    assert lines[-1].split(" ")[1:3] == ["line", "099"]
    numbers = [int(line.split(" ")[2]) for line in lines[2:]]
    assert numbers == list(range(numbers[0], 100)), "the newest lines, in order, none twice"


def test_deleted_after_the_retention_without_activity(tmp_path, clock):
    rt = Engine()
    k = keeper(tmp_path, clock, retention_days=14)
    rt.say("1" * 64, T0 + 1, "old")
    rt.say("2" * 64, T0 + 1, "busy")
    k.sync(rt, [container("1" * 64, T0, name="gone-0"), container("2" * 64, T0, name="busy-0")])
    d = tmp_path / "vllm-logs"
    os.utime(d / "gone-0.log", (T0, T0))
    clock.t = T0 + 14 * DAY - 1
    rt.say("2" * 64, clock.t, "still busy")
    k.sync(rt, [container("2" * 64, T0, name="busy-0")])
    assert (d / "gone-0.log").exists(), "not yet 14 days"
    clock.t = T0 + 14 * DAY + 1
    k.sync(rt, [container("2" * 64, T0, name="busy-0")])
    assert sorted(os.listdir(d)) == ["busy-0.log"], "written a second ago: kept; quiet for 14 days: deleted"
    # A live replica quiet for that long loses its file, and gets it back (with its run's header) at its next line.
    os.utime(d / "busy-0.log", (T0, T0))
    k.sync(rt, [container("2" * 64, T0, name="busy-0")])
    assert not (d / "busy-0.log").exists()
    rt.say("2" * 64, clock.t + 1, "back")
    k.sync(rt, [container("2" * 64, T0, name="busy-0")])
    assert read(tmp_path, "busy-0.log")[0].startswith(f"{logs.stamp(clock.t)} --- run of container 222222222222")
    assert read(tmp_path, "busy-0.log")[1].endswith(" back")
    assert logs.prune(str(d), clock.t + 100 * DAY, 0) == [], "0 days: kept for ever"
