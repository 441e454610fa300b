"""Usage per owner and per deployment (plugins/module_utils/_fleet/usage.py, issue #17 item 5): the host's two
samples (driven clock, no wall time), the controller's sums, the table, fleet_report kind=usage, the owner label of
the Prometheus targets, and the vLLM stand-in's counters read back through the same parser."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.action.fleet_report import from_host_vars
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import usage as us
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.report import run_report
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.targets import vllm_targets


def metrics(requests: float, prompt: float, gen: float) -> str:
    """vLLM's exposition of the three counters (finished requests split by reason, as vLLM labels them)."""
    labels = 'engine="0",model_name="m"'
    return "\n".join(
        [
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{labels}}} {prompt}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{labels}}} {gen}",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{finished_reason="stop",{labels}}} {requests - 1}',
            f'vllm:request_success_total{{finished_reason="length",{labels}}} 1.0',
            "",
        ]
    )


class Clock:
    """A monotonic clock the test drives: each read advances it by ``step``; sleep advances it by its argument."""

    def __init__(self, step: float = 0.01) -> None:
        self.t = 100.0
        self.step = step
        self.slept: list[float] = []

    def __call__(self) -> float:
        self.t += self.step
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


class Server:
    """Answers each /metrics with the next text of its endpoint (status 0: nothing answers)."""

    def __init__(self, texts: dict[str, list[tuple[int, str]]]) -> None:
        self.texts = {k: list(v) for k, v in texts.items()}
        self.urls: list[str] = []

    def __call__(self, url: str, timeout: float) -> tuple[int, bytes]:
        self.urls.append(url)
        status, text = self.texts[url.rsplit("/metrics", 1)[0]].pop(0)
        return status, text.encode()


def test_two_samples_give_totals_and_the_rate_between_them():
    clock = Clock(step=0.01)
    server = Server({"http://a:8000": [(200, metrics(3, 30, 12)), (200, metrics(5, 50, 112))]})
    rows = us.sample_replicas(
        [{"name": "chat-0", "owner": "team-a", "endpoint": "http://a:8000", "running": True}],
        10.0,
        fetch=server,
        clock=clock,
        sleep=clock.sleep,
    )
    assert clock.slept == [10.0]
    (row,) = rows
    assert row["deployment"] == "chat" and row["owner"] == "team-a" and row["scraped"] is True
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (5, 50, 112)
    # Each sample is timed at the middle of its request: exactly 10.02 s apart on this clock.
    assert row["tokens_per_s"] == round(100 / 10.02, 2) and row["prompt_tokens_per_s"] == round(20 / 10.02, 2)
    assert server.urls == ["http://a:8000/metrics"] * 2


def test_one_wait_for_all_replicas_and_each_its_own_time_apart():
    clock = Clock(step=1.0)  # each read of the clock is a second later: the replicas' samples differ in time
    server = Server(
        {
            "http://a:1": [(200, metrics(1, 1, 0)), (200, metrics(1, 1, 60))],
            "http://a:2": [(200, metrics(1, 1, 0)), (200, metrics(1, 1, 60))],
        }
    )
    rows = us.sample_replicas(
        [
            {"name": "x-0", "endpoint": "http://a:1", "running": True},
            {"name": "x-1", "endpoint": "http://a:2", "running": True},
        ],
        4.0,
        fetch=server,
        clock=clock,
        sleep=clock.sleep,
    )
    assert clock.slept == [4.0]
    # x-0: sampled at 101.5 and 109.5 (8 s); x-1 at 103.5 and 111.5 (8 s).
    assert [r["tokens_per_s"] for r in rows] == [7.5, 7.5]


def test_restart_between_samples_counts_from_zero_failures_and_stopped_replicas():
    clock = Clock()
    server = Server(
        {
            "http://a:1": [(200, metrics(50, 500, 900)), (200, metrics(2, 20, 40))],  # restarted in between
            "http://a:2": [(200, metrics(4, 4, 4)), (0, "")],  # gone in between: its first sample counts
            "http://a:3": [(503, ""), (200, metrics(1, 1, 1))],
            "http://a:4": [(200, "# nothing of vLLM\n"), (200, "")],
        }
    )
    rows = us.sample_replicas(
        [
            {"name": "a-0", "endpoint": "http://a:1", "running": True},
            {"name": "b-0", "endpoint": "http://a:2", "running": True},
            {"name": "c-0", "endpoint": "http://a:3", "running": True},
            {"name": "d-0", "endpoint": "http://a:4", "running": True},
            {"name": "e-0", "endpoint": "http://a:5", "running": False},
        ],
        1.0,
        fetch=server,
        clock=clock,
        sleep=clock.sleep,
    )
    by = {r["name"]: r for r in rows}
    # a-0's samples: the middle of its first request, then three other replicas' requests (6 reads of 0.01 s), the
    # wait (1 s), the middle of its second request: 1.08 s apart. Restarted: 40 completion tokens since its restart.
    assert by["a-0"]["completion_tokens"] == 40 and by["a-0"]["tokens_per_s"] == round(40 / 1.08, 2)
    assert by["b-0"]["requests"] == 4 and by["b-0"]["tokens_per_s"] is None and by["b-0"]["scraped"] is True
    assert by["c-0"]["requests"] == 1 and by["c-0"]["tokens_per_s"] is None
    assert by["d-0"]["scraped"] is False and "no vllm:request_success_total" in by["d-0"]["error"]
    assert by["e-0"]["scraped"] is False and by["e-0"]["error"] == "not running" and by["e-0"]["requests"] is None
    assert "http://a:5/metrics" not in server.urls


def test_interval_zero_takes_one_sample_and_never_waits():
    clock = Clock()
    server = Server({"http://a:1": [(200, metrics(2, 3, 4))]})
    (row,) = us.sample_replicas(
        [{"name": "a-0", "endpoint": "http://a:1", "running": True}], 0, fetch=server, clock=clock, sleep=clock.sleep
    )
    assert clock.slept == [] and row["requests"] == 2 and row["tokens_per_s"] is None


def container(name: str, owner: str | None, port: int, running: bool = True, extra_name: str | None = None):
    labels = lb.build(name=name, port=port, host="0.0.0.0", config_hash="x", vllm_version="v", model="m", gpus=[],
                      manifest={}, spec={}, extra={lb.OWNER: owner} if owner else None)  # fmt: skip
    return ContainerState(f"id-{name}", extra_name or lb.container_name(name), "running" if running else "exited",
                          running, exit_code=None if running else 0, restart_count=0, labels=labels)  # fmt: skip


class Rt:
    def __init__(self, *cs: ContainerState) -> None:
        self.cs = list(cs)

    def list_managed(self):
        return self.cs


def test_sample_host_reads_the_labels_and_selects_by_name():
    rt = Rt(
        container("chat-1", "team-a", 8001),
        container("chat-0", "team-a", 8000),
        container("chat-0", "team-a", 8009, extra_name=lb.previous_name("chat-0")),  # kept aside: not a replica
        container("embed-0", None, 8100),
    )
    clock = Clock()
    server = Server(
        {"http://127.0.0.1:8000": [(200, metrics(1, 2, 3))], "http://127.0.0.1:8001": [(200, metrics(4, 5, 6))]}
    )
    out = us.sample_host({**params(), "names": ["chat"], "interval": 0}, rt, fetch=server, clock=clock)
    assert out["changed"] is False and out["interval_s"] == 0
    assert [(r["name"], r["owner"], r["endpoint"], r["requests"]) for r in out["replicas"]] == [
        ("chat-0", "team-a", "http://127.0.0.1:8000", 1),
        ("chat-1", "team-a", "http://127.0.0.1:8001", 4),
    ]


def params(**kw):
    return {"names": [], "interval": 5.0, "timeout": 5.0, "runtime": "docker", "docker_host": None, **kw}


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"interval": -1.0}, "interval: -1.0 must be seconds between 0 and 300"),
        ({"interval": 301.0}, "interval: 301.0 must be seconds between 0 and 300"),
        ({"timeout": 0.0}, "timeout: 0.0 must be seconds above 0"),
        ({"names": ["../x"]}, "names:"),
    ],
)
def test_bad_params_are_one_clear_error_before_the_engine_is_asked(kw, message):
    class NoEngine:
        def list_managed(self):
            raise AssertionError("the engine was asked")

    with pytest.raises(GpufleetError, match=message.replace(".", r"\.")):
        us.sample_host(params(**kw), NoEngine())


def row(name, owner, requests, prompt, completion, tps=None, scraped=True):
    return {"name": name, "owner": owner, "scraped": scraped, "error": None if scraped else "not running",
            "requests": requests, "prompt_tokens": prompt, "completion_tokens": completion, "tokens_per_s": tps,
            "prompt_tokens_per_s": None if tps is None else 0.0}  # fmt: skip


HOSTS = {
    "gpu-a": {
        "interval_s": 5.0,
        "replicas": [row("chat-0", "team-a", 3, 30, 24, 1.5), row("mover-0", "team-b", 2, 7, 10, 0.25)],
    },
    "gpu-b": {
        "interval_s": 5.0,
        "replicas": [row("chat-1", "team-a", 1, 10, 8, 0.0), row("solo-0", None, 5, 5, 5, 2.0)],
    },
    "gpu-c": {"interval_s": 5.0, "replicas": [row("mover-1", "team-b", None, None, None, scraped=False)]},
    "gpu-d": None,  # did not run
}


def test_report_sums_per_deployment_per_owner_and_in_total():
    report = us.usage_report(HOSTS, unreachable=["gpu-d"], generated_at=0)
    assert report["kind"] == "usage" and report["interval_s"] == 5.0 and report["unreachable_hosts"] == ["gpu-d"]
    deps = {d["deployment"]: d for d in report["deployments"]}
    assert deps["chat"] == {"deployment": "chat", "owner": "team-a", "replicas": 2, "scraped": 2, "requests": 4,
                            "prompt_tokens": 40, "completion_tokens": 32, "tokens_per_s": 1.5,
                            "prompt_tokens_per_s": 0.0}  # fmt: skip
    assert (deps["mover"]["replicas"], deps["mover"]["scraped"], deps["mover"]["requests"]) == (2, 1, 2)
    assert deps["solo"]["owner"] is None
    owners = report["owners"]
    assert [o["owner"] for o in owners] == ["team-a", "team-b", None]  # no owner last
    assert (owners[0]["deployments"], owners[0]["requests"], owners[0]["completion_tokens"]) == (["chat"], 4, 32)
    assert (owners[1]["deployments"], owners[1]["prompt_tokens"], owners[1]["tokens_per_s"]) == (["mover"], 7, 0.25)
    total = report["total"]
    assert (total["replicas"], total["scraped"], total["requests"], total["prompt_tokens"]) == (5, 4, 11, 52)
    assert total["completion_tokens"] == 47 and total["tokens_per_s"] == 3.75
    assert [(r["host"], r["name"]) for r in report["replicas"]] == [
        ("gpu-a", "chat-0"), ("gpu-b", "chat-1"), ("gpu-a", "mover-0"), ("gpu-c", "mover-1"), ("gpu-b", "solo-0")
    ]  # fmt: skip


def test_an_owner_changing_mid_roll_shows_both_on_the_deployment():
    report = us.usage_report({"h": [row("chat-0", "old", 1, 1, 1), row("chat-1", "new", 1, 1, 1)]})
    assert report["deployments"][0]["owner"] == "new,old"
    assert [(o["owner"], o["requests"]) for o in report["owners"]] == [("new", 1), ("old", 1)]
    assert report["interval_s"] is None


def test_table_per_owner_then_per_deployment():
    table = us.usage_table(us.usage_report(HOSTS, unreachable=["gpu-d"]))
    text = "\n".join(table)
    assert table[0].split() == ["OWNER", "DEPLOYMENTS", "REPLICAS", "REQUESTS", "PROMPT", "TOKENS", "COMPLETION",
                                "TOKENS", "TOK/S"]  # fmt: skip
    assert table[2].split() == ["team-a", "chat", "2/2", "4", "40", "32", "1.5"]
    assert table[4].split() == ["-", "solo", "1/1", "5", "5", "5", "2.0"]
    assert table[5].split() == ["TOTAL", "-", "4/5", "11", "52", "47", "3.75"]
    assert "DEPLOYMENT  OWNER" in text and "mover       team-b  1/2" in text
    assert "TOK/S: completion tokens per second over the last 5 s" in text
    assert "not read: mover-1 on gpu-c: not running" in text
    assert "unreachable hosts (not counted): gpu-d" in text
    assert us.usage_table(us.usage_report({}))[-2:] == [
        "(no managed deployments)",
        "Counters since each server started; TOK/S: not sampled (interval 0); REPLICAS: read/managed.",
    ]


def test_fleet_report_kind_usage_from_the_hosts_registered_results(tmp_path):
    hostvars = {h: {"deployments_usage_samples": v} for h, v in HOSTS.items() if v is not None}
    p = from_host_vars({"kind": "usage", "from_hosts": ["gpu-a", "gpu-b", "gpu-c"]}, hostvars)
    out = run_report({**p, "unreachable": ["gpu-d"], "dest": str(tmp_path / "usage.json")})
    assert out["changed"] is False and out["report"]["total"]["requests"] == 11
    assert out["table"][0].startswith("OWNER")
    assert json.loads((tmp_path / "usage.json").read_text())["owners"][0]["owner"] == "team-a"
    out = run_report({**p, "dest": str(tmp_path / "again.json")}, check_mode=True)
    assert not (tmp_path / "again.json").exists()


def test_prometheus_targets_carry_the_owner_when_there_is_one():
    infos = {"gpu-a": [{"name": "chat-0", "endpoint": "http://0.0.0.0:8000", "owner": "team-a", "gpus": [0]},
                       {"name": "solo-0", "endpoint": "http://0.0.0.0:8001", "owner": None, "gpus": [1]}]}  # fmt: skip
    entries = vllm_targets(infos, {"gpu-a": "10.0.0.1"}).jobs["vllm"].targets
    labels = {e["labels"]["deployment"]: e["labels"] for e in entries}
    assert labels["chat"]["owner"] == "team-a" and "owner" not in labels["solo"]


def test_the_stand_ins_counters_read_back_exactly():
    """What the bed's vLLM stand-in exports after known requests is what the usage parser reads (vLLM's names)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "sim" / "standin"))
    from standin.metrics import Metrics

    m = Metrics("0.10.2", "tiny")
    for prompt, gen, reason in [(11, 4, "length"), (7, 16, "stop"), (3, 1, "length")]:
        m.start()
        m.finish(prompt, gen, 0.01, 0.02, reason)
    clock = Clock()
    (r,) = us.sample_replicas(
        [{"name": "t-0", "endpoint": "http://s:1", "running": True}],
        0,
        fetch=lambda url, timeout: (200, m.render().encode()),
        clock=clock,
    )
    assert (r["requests"], r["prompt_tokens"], r["completion_tokens"]) == (3, 21, 21)
    # Grouped as vLLM's prometheus_client writes them (HELP/TYPE named with _total): each counter one family.
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(m.render())}
    assert [(s.name, s.value) for s in families["vllm:prompt_tokens"].samples] == [("vllm:prompt_tokens_total", 21.0)]
    assert families["vllm:generation_tokens"].type == "counter"
    assert sum(s.value for s in families["vllm:request_success"].samples) == 3
