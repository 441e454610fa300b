"""plugins/module_utils/_monitoring/monitoring.py: targets, scrape configs, rules (checked and unit-tested by promtool), dashboard
(metric names against the vLLM stand-in's /metrics), YAML rendering and file writing (idempotence, check mode, diff,
secrets)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring import monitoring as mon

ROOT = Path(__file__).resolve().parents[4]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")
CANARY = "canary-monitoring-token-93b1"


def _info(*entries):
    return {"changed": False, "deployments": list(entries)}


def _dep(name, port, bind="0.0.0.0", **kw):
    return {
        "name": name,
        "endpoint": f"http://{bind}:{port}",
        "port": port,
        "model": "Qwen/Qwen3-0.6B",
        "gpus": ["0"],
        **kw,
    }


def _params(tmp_path, **kw):
    p = {
        "infos": {"gpu-a": _info(_dep("chat-0", 8000), _dep("chat-1", 8001, gpus=["1", "2"]))},
        "addresses": {"gpu-a": "10.1.0.5"},
        "targets_dir": str(tmp_path / "targets"),
        "rules_path": str(tmp_path / "rules" / "gpufleet.yml"),
        "config_path": str(tmp_path / "prometheus.yml"),
        "config_mode": "full",
        "dashboards_dir": str(tmp_path / "dashboards"),
        "job_name": "vllm",
        "health_probe": True,
        "alerts": {},
        "validate": True,
    }
    p.update(kw)
    return p


# --- names and addresses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "split"),
    [("chat-1", ("chat", "1")), ("chat-12", ("chat", "12")), ("llama", ("llama", "0")), ("a-b-0", ("a-b", "0"))],
)
def test_split_name(name, split):
    assert mon.split_name(name) == split


@pytest.mark.parametrize(
    ("endpoint", "address", "want"),
    [
        ("http://0.0.0.0:8000", "10.0.0.7", "10.0.0.7:8000"),
        ("http://0.0.0.0:8000", None, "127.0.0.1:8000"),
        ("http://127.0.0.1:8000", "127.0.0.1", "127.0.0.1:8000"),
        ("http://127.0.0.1:8000", None, "127.0.0.1:8000"),
        ("http://192.168.5.5:8000", "10.0.0.7", "192.168.5.5:8000"),
        ("http://0.0.0.0:8000", "fd00::7", "[fd00::7]:8000"),
    ],
)
def test_scrape_address(endpoint, address, want):
    assert mon.scrape_address(endpoint, address) == (want, None)


def test_loopback_only_server_on_a_remote_host_is_skipped_with_a_reason():
    addr, reason = mon.scrape_address("http://127.0.0.1:8000", "10.0.0.7")
    assert addr is None and "127.0.0.1 only" in reason


def test_targets_labels_jobs_and_skips():
    infos = {
        "gpu-b": _info(_dep("emb", 9000, model="/models/e5", gpus=[])),
        "gpu-a": _info(_dep("chat-1", 8001, gpus=["1", "2"]), _dep("chat-0", 8000), _dep("lo", 8002, bind="127.0.0.1")),
        "gpu-c": None,  # unreachable host: nothing to scrape
    }
    out = mon.vllm_targets(infos, {"gpu-a": "10.0.0.1", "gpu-b": "10.0.0.2"})
    assert list(out["jobs"]) == ["vllm"]
    entries = out["jobs"]["vllm"]["targets"]
    assert [e["targets"] for e in entries] == [["10.0.0.1:8000"], ["10.0.0.1:8001"], ["10.0.0.2:9000"]]
    assert entries[1]["labels"] == {
        "deployment": "chat",
        "replica": "1",
        "host": "gpu-a",
        "model": "Qwen/Qwen3-0.6B",
        "gpus": "1,2",
    }
    assert entries[2]["labels"]["deployment"] == "emb" and entries[2]["labels"]["gpus"] == ""
    assert out["skipped"] == [{"host": "gpu-a", "name": "lo", "reason": mon.scrape_address(
        "http://127.0.0.1:8002", "10.0.0.1")[1]}]  # fmt: skip


def test_api_key_servers_go_to_an_auth_job_with_a_credentials_file():
    infos = {"gpu-a": _info(_dep("chat-0", 8000, api_key=True), _dep("open-0", 8001), _dep("own-0", 8002))}
    out = mon.vllm_targets(
        infos, {}, credentials_file="/etc/prometheus/vllm.token", credentials_files={"own": "/etc/prometheus/own"}
    )
    assert sorted(out["jobs"]) == ["vllm", "vllm-auth", "vllm-auth-own"]
    assert out["jobs"]["vllm-auth"]["credentials_file"] == "/etc/prometheus/vllm.token"
    assert out["jobs"]["vllm-auth-own"]["credentials_file"] == "/etc/prometheus/own"
    assert [e["labels"]["deployment"] for e in out["jobs"]["vllm"]["targets"]] == ["open"]


def test_api_key_server_without_credentials_file_is_an_error():
    with pytest.raises(GpufleetError, match="set credentials_file"):
        mon.vllm_targets({"h": _info(_dep("chat-0", 8000, api_key=True))}, {})


def test_bad_infos_and_job_name():
    with pytest.raises(GpufleetError, match="registered result"):
        mon.vllm_targets({"h": "nonsense"}, {})
    with pytest.raises(GpufleetError, match="job_name"):
        mon.vllm_targets({}, {}, job_name="a b")


def test_agent_targets():
    assert mon.agent_targets(["b", "a"], {"a": "10.0.0.1"}, 9464) == [
        {"targets": ["10.0.0.1:9464"], "labels": {"host": "a"}},
        {"targets": ["b:9464"], "labels": {"host": "b"}},
    ]
    with pytest.raises(GpufleetError, match="node_agent_port"):
        mon.agent_targets(["a"], {}, 70000)


# --- scrape configs and rendering ------------------------------------------------------------------------------------


def test_render_full_config_references_target_files_rules_and_credentials_file_never_the_secret(tmp_path):
    p = _params(
        tmp_path,
        infos={"gpu-a": _info(_dep("chat-0", 8000, api_key=True), _dep("open-0", 8001))},
        credentials_file=str(tmp_path / "token"),
        api_key=CANARY,
        node_agent_port=9464,
    )
    r = mon.render(p)
    by_path = {f["path"]: f for f in r["files"]}
    cfg = yaml.safe_load(by_path[p["config_path"]]["content"])
    assert cfg["rule_files"] == [p["rules_path"]]
    jobs = {c["job_name"]: c for c in cfg["scrape_configs"]}
    assert sorted(jobs) == ["gpufleet-agent", "vllm", "vllm-auth", "vllm-auth-health", "vllm-health"]
    assert jobs["vllm-health"]["metrics_path"] == "/health"
    assert jobs["vllm"]["file_sd_configs"] == jobs["vllm-health"]["file_sd_configs"]
    assert jobs["vllm"]["file_sd_configs"][0]["files"] == [f"{p['targets_dir']}/vllm.json"]
    assert jobs["vllm-auth"]["authorization"] == {"type": "Bearer", "credentials_file": p["credentials_file"]}
    assert jobs["vllm"]["relabel_configs"] == [{"target_label": "gpufleet_probe", "replacement": "metrics"}]
    assert by_path[p["credentials_file"]]["content"] == CANARY
    for f in r["files"]:
        if f["path"] != p["credentials_file"]:
            assert CANARY not in f["content"], f["path"]
    assert CANARY not in json.dumps({k: v for k, v in r.items() if k != "files"})
    sd = json.loads(by_path[f"{p['targets_dir']}/vllm-auth.json"]["content"])
    assert sd == [{"targets": ["10.1.0.5:8000"], "labels": sd[0]["labels"]}]


def test_unreachable_hosts_keep_their_targets(tmp_path):
    infos = {
        "gpu-a": _info(_dep("chat-0", 8000)),
        "gpu-b": _info(_dep("chat-1", 8000), _dep("key-0", 8001, api_key=True)),
    }
    p = _params(tmp_path, infos=infos, addresses={"gpu-a": "10.0.0.1", "gpu-b": "10.0.0.2"}, validate=False)
    p.update(from_hosts=["gpu-a", "gpu-b"], credentials_file="/etc/t", node_agent_port=9464)
    mon.run_config(p)
    before = {f.name: f.read_text() for f in (tmp_path / "targets").iterdir()}
    # gpu-b does not answer this time: its entries stay; chat-0 moved ports on gpu-a
    down = {**p, "infos": {"gpu-a": _info(_dep("chat-0", 8005))}}
    r = mon.run_config(down)
    assert sorted((k["host"], k["deployment"], k["job"]) for k in r["kept"]) == [
        ("gpu-b", "chat", "vllm"),
        ("gpu-b", "key", "vllm-auth"),
    ]
    assert [e["targets"] for e in r["targets"]["vllm"]] == [["10.0.0.1:8005"], ["10.0.0.2:8000"]]
    assert r["targets"]["vllm-auth"] == json.loads(before["vllm-auth.json"])
    assert [e["labels"]["host"] for e in r["targets"]["gpufleet-agent"]] == ["gpu-a", "gpu-b"]
    # without keep_unreachable they go
    gone = mon.run_config({**down, "keep_unreachable": False})
    assert gone["kept"] == [] and [e["labels"]["host"] for e in gone["targets"]["vllm"]] == ["gpu-a"]


def test_fragment_mode_has_only_scrape_configs(tmp_path):
    r = mon.render(_params(tmp_path, config_mode="fragment", rules_path=None, dashboards_dir=None))
    cfg = yaml.safe_load(r["files"][-1]["content"])
    assert list(cfg) == ["scrape_configs"] and [f["kind"] for f in r["files"]] == ["targets", "config_fragment"]


def test_extra_scrape_configs_must_have_unique_job_names(tmp_path):
    with pytest.raises(GpufleetError, match="used twice"):
        mon.render(_params(tmp_path, extra_scrape_configs=[{"job_name": "vllm", "static_configs": []}]))


@pytest.mark.parametrize(
    "data",
    [
        {"a": "yes", "b": "15s", "c": ["", "x: y", 'q"uote', "{{ $labels.x }}", "null", "#x"], "d": {}, "e": []},
        {"n": [1, 2.5, True, None], "nested": [{"k": [{"x": 1}]}, [1, [2]]], "unicode": "Qwen/模型"},
    ],
)
def test_to_yaml_round_trips(data):
    assert yaml.safe_load(mon.to_yaml(data)) == data


def test_adding_a_deployment_changes_only_a_target_file(tmp_path):
    before = {f["path"]: f["content"] for f in mon.render(_params(tmp_path))["files"]}
    infos = {"gpu-a": _info(_dep("chat-0", 8000), _dep("chat-1", 8001, gpus=["1", "2"]), _dep("new-0", 8100))}
    after = {f["path"]: f["content"] for f in mon.render(_params(tmp_path, infos=infos))["files"]}
    assert [p for p in after if after[p] != before.get(p)] == [str(tmp_path / "targets" / "vllm.json")]


# --- rules ---------------------------------------------------------------------------------------------------------


def test_rule_overrides_and_agent_alerts():
    base = {r["alert"] for r in mon.alert_rules()["groups"][0]["rules"]}
    assert base == set(mon.DEFAULT_ALERTS) - set(mon.AGENT_ALERTS)
    with_agent = mon.alert_rules(agent=True, agent_metrics={"restarts": "my_restarts_total"})["groups"][0]["rules"]
    assert {r["alert"] for r in with_agent} == set(mon.DEFAULT_ALERTS)
    restarts = next(r for r in with_agent if r["alert"] == "GpufleetDeploymentRestarts")
    assert restarts["expr"] == "increase(my_restarts_total[15m]) > 0"
    rules = mon.alert_rules({"VllmKvCacheHigh": {"threshold": 0.8, "for": "1m"}, "VllmServerDown": {"enabled": False}})
    by = {r["alert"]: r for r in rules["groups"][0]["rules"]}
    assert "VllmServerDown" not in by
    assert by["VllmKvCacheHigh"]["for"] == "1m" and by["VllmKvCacheHigh"]["expr"].endswith("> 0.8")
    assert "for" not in by["VllmServerRestarted"]  # for: 0s is left out


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"Nope": {}}, "unknown alert"),
        ({"VllmServerDown": {"for": "2 minutes"}}, "not a Prometheus duration"),
        ({"VllmServerDown": {"threshold": 1}}, "unknown keys"),
        ({"VllmKvCacheHigh": {"threshold": "high"}}, "must be a number"),
        ({"VllmTimeToFirstTokenHigh": {"quantile": 95}}, "between 0 and 1"),
        ({"VllmServerDown": "off"}, "must be a dict"),
    ],
)
def test_rule_overrides_are_checked(overrides, match):
    with pytest.raises(GpufleetError, match=match):
        mon.alert_rules(overrides)


@needs_promtool
def test_every_rule_expression_parses(tmp_path):
    path = tmp_path / "rules.yml"
    path.write_text(mon.to_yaml(mon.alert_rules(agent=True)))
    r = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(mon.DEFAULT_ALERTS)} rules found" in r.stdout


@needs_promtool
def test_rules_fire_on_promtool_series(tmp_path):
    """promtool test rules: the alerts fire on the series they are about, and not on healthy ones."""
    overrides = {
        name: {"for": "1m"}
        for name in ("VllmServerDown", "VllmHealthFailing", "VllmKvCacheHigh", "VllmRequestQueueGrowing")
    }
    (tmp_path / "rules.yml").write_text(mon.to_yaml(mon.alert_rules(overrides, agent=True)))
    lab = 'deployment="chat",replica="0",host="gpu-a",instance="10.0.0.1:8000"'
    lab1 = 'deployment="chat",replica="1",host="gpu-a",instance="10.0.0.1:8001"'
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'up{{gpufleet_probe="metrics",job="vllm",{lab}}}', "values": "1 1 0 0 0"},
                    {"series": f'up{{gpufleet_probe="health",job="vllm-health",{lab}}}', "values": "1 1 0 0 0"},
                    {"series": f'up{{gpufleet_probe="metrics",job="vllm",{lab1}}}', "values": "1 1 1 1 1"},
                    {"series": f'up{{gpufleet_probe="health",job="vllm-health",{lab1}}}', "values": "1 1 0 0 0"},
                    # 0.10.x exports both names, 0.11+ only the new one: either triggers
                    {"series": f"vllm:gpu_cache_usage_perc{{{lab}}}", "values": "0.95x5"},
                    {"series": f"vllm:kv_cache_usage_perc{{{lab}}}", "values": "0.95x5"},
                    {"series": f"vllm:kv_cache_usage_perc{{{lab1}}}", "values": "0.2x5"},
                    {"series": f"vllm:num_requests_waiting{{{lab}}}", "values": "5 10 20 30 40 50"},
                    {"series": f"vllm:num_requests_waiting{{{lab1}}}", "values": "50x5"},
                    {"series": 'gpufleet_agent_serve_until_seconds{deployment="chat-0"}', "values": "86400x5"},
                    {
                        "series": 'gpufleet_agent_restarts_total{deployment="chat-1",host="gpu-a"}',
                        "values": "0 0 1 1 1",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "4m",
                        "alertname": "VllmServerDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "gpufleet_probe": "metrics",
                                    "job": "vllm",
                                    "deployment": "chat",
                                    "replica": "0",
                                    "host": "gpu-a",
                                    "instance": "10.0.0.1:8000",
                                },
                                "exp_annotations": {
                                    "summary": "vLLM server chat/0 on gpu-a is down",
                                    "description": "Prometheus cannot scrape 10.0.0.1:8000/metrics: the server is "
                                    "stopped, crashed or unreachable.",
                                },
                            }
                        ],
                    },
                    {"eval_time": "1m", "alertname": "VllmServerDown", "exp_alerts": []},
                    {
                        # only replica 1 (metrics up, health down); replica 0 is down altogether (ServerDown)
                        "eval_time": "4m",
                        "alertname": "VllmHealthFailing",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "gpufleet_probe": "health",
                                    "job": "vllm-health",
                                    "deployment": "chat",
                                    "replica": "1",
                                    "host": "gpu-a",
                                    "instance": "10.0.0.1:8001",
                                },
                                "exp_annotations": {
                                    "summary": "vLLM server chat/1 on gpu-a fails /health",
                                    "description": "10.0.0.1:8001 answers /metrics but not /health with 200: its engine is unhealthy.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "4m",
                        "alertname": "VllmKvCacheHigh",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "deployment": "chat",
                                    "replica": "0",
                                    "host": "gpu-a",
                                    "instance": "10.0.0.1:8000",
                                },
                                "exp_annotations": {
                                    "summary": "KV cache of chat/0 is nearly full",
                                    "description": "KV cache usage on 10.0.0.1:8000 is 95%: requests will queue or be preempted.",
                                },
                            }
                        ],
                    },
                    {
                        # replica 1's queue is long but flat: not "growing"
                        "eval_time": "5m",
                        "alertname": "VllmRequestQueueGrowing",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "deployment": "chat",
                                    "replica": "0",
                                    "host": "gpu-a",
                                    "instance": "10.0.0.1:8000",
                                },
                                "exp_annotations": {
                                    "summary": "Request queue of chat/0 keeps growing",
                                    "description": "50 requests wait on 10.0.0.1:8000 and the queue grows: add replicas or capacity.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "3m",
                        "alertname": "GpufleetDeploymentRestarts",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "deployment": "chat-1", "host": "gpu-a"},
                                "exp_annotations": {
                                    "summary": "gpufleet agent restarted chat-1 on gpu-a",
                                    "description": "The node agent counted 1 restart(s) of chat-1 in the last 15m.",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    r = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_serve_for_expiring_fires_before_the_deadline_only(tmp_path):
    (tmp_path / "rules.yml").write_text(mon.to_yaml(mon.alert_rules(agent=True)))
    # the agent counts down: 7200 s left at 0, 600 s less every 10 minutes; past 1h left at 70m
    tests = {
        "rule_files": ["rules.yml"],
        "tests": [
            {
                "interval": "10m",
                "input_series": [
                    {
                        "series": 'gpufleet_agent_serve_until_seconds{deployment="chat-0",host="gpu-a"}',
                        "values": "7200-600x12",
                    }
                ],
                "alert_rule_test": [
                    {"eval_time": "30m", "alertname": "GpufleetServeForExpiring", "exp_alerts": []},
                    {
                        "eval_time": "70m",
                        "alertname": "GpufleetServeForExpiring",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "info", "deployment": "chat-0", "host": "gpu-a"},
                                "exp_annotations": {
                                    "summary": "chat-0 on gpu-a stops serving soon (serve_for)",
                                    "description": "chat-0 reaches its serve-until time in 50m 0s; extend serve_for "
                                    "and converge to keep it.",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    r = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert r.returncode == 0, r.stdout + r.stderr


# --- dashboard -----------------------------------------------------------------------------------------------------


def _standin_metric_names(version: str) -> set[str]:
    sys.path.insert(0, str(ROOT / "sim" / "standin"))
    try:
        from standin.metrics import Metrics
    finally:
        sys.path.pop(0)
    text = Metrics(version, "m").render()
    return {re.match(r"[^{ ]+", line).group(0) for line in text.splitlines() if line and not line.startswith("#")}


# Documented vLLM 0.10.x metrics (vllm/v1/metrics/loggers.py) the dashboard and rules may use besides the stand-in's.
VLLM_DOCUMENTED = {"vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc", "process_start_time_seconds"}


def test_dashboard_references_only_metrics_the_standin_exports_or_vllm_documents():
    board = mon.dashboard()
    exported = _standin_metric_names("0.10.2") | {"up"}
    used = set().union(*(mon.metric_names(e) for e in mon.dashboard_exprs(board)))
    assert {"vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket", "up"} <= used
    assert used - exported - VLLM_DOCUMENTED == set()
    rules = mon.alert_rules()["groups"][0]["rules"]
    used_by_rules = set().union(*(mon.metric_names(r["expr"]) for r in rules))
    assert used_by_rules - exported - VLLM_DOCUMENTED == set()
    # every vLLM metric name exists in the 0.10.2 stand-in (which exports vLLM 0.10's names)
    assert {m for m in used | used_by_rules if m.startswith("vllm:")} <= exported


def test_dashboard_structure():
    board = mon.dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] == "gpufleet-vllm"
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("throughput", "time to first token", "latency", "running and waiting", "kv cache"):
        assert topic in titles
    assert all(p["targets"] and all("$deployment" in t["expr"] for t in p["targets"]) for p in board["panels"])
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "deployment"]
    json.dumps(board)  # plain JSON


@needs_promtool
def test_dashboard_expressions_parse(tmp_path):
    exprs = [
        e.replace("$deployment", ".*").replace("$__rate_interval", "5m") for e in mon.dashboard_exprs(mon.dashboard())
    ]
    rules = {"groups": [{"name": "d", "rules": [{"record": f"dash:e{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "d.yml").write_text(mon.to_yaml(rules))
    r = subprocess.run(
        [PROMTOOL, "check", "rules", str(tmp_path / "d.yml")], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr


# --- writing -------------------------------------------------------------------------------------------------------


@needs_promtool
def test_apply_is_idempotent_check_mode_writes_nothing_and_diff_hides_the_secret(tmp_path):
    p = _params(
        tmp_path,
        infos={"gpu-a": _info(_dep("chat-0", 8000, api_key=True))},
        credentials_file=str(tmp_path / "token"),
        api_key=CANARY,
    )
    pred = mon.run_config(p, check_mode=True)
    assert pred["changed"] and pred["reload_needed"] and not list(tmp_path.iterdir())
    assert all(f["changed"] for f in pred["files"])
    first = mon.run_config(p)
    assert first["changed"] and first["promtool"] == PROMTOOL
    assert set(first["validated"]) == {p["rules_path"], p["config_path"]}
    assert (tmp_path / "token").read_text() == CANARY and oct((tmp_path / "token").stat().st_mode & 0o777) == "0o640"
    assert CANARY not in json.dumps(first)
    assert any(d["before"] == d["after"] == mon.SECRET_DIFF for d in first["diff"])
    again = mon.run_config(p)
    assert again["changed"] is False and again["reload_needed"] is False and again["diff"] == []
    assert mon.run_config(p, check_mode=True)["changed"] is False
    # a file put back to another mode is fixed, content untouched and no reload
    os.chmod(p["config_path"], 0o600)
    fixed = mon.run_config(p)
    assert fixed["changed"] and not fixed["reload_needed"]
    assert [f["path"] for f in fixed["files"] if f["changed"]] == [p["config_path"]]


@needs_promtool
def test_promtool_refusal_fails_and_replaces_nothing(tmp_path):
    p = _params(tmp_path)
    mon.run_config(p)
    before = Path(p["config_path"]).read_text()
    bad = _params(
        tmp_path, extra_scrape_configs=[{"job_name": "x", "static_configs": [{"targets": ["a:1"]}], "bogus": 1}]
    )
    with pytest.raises(GpufleetError, match="promtool check config refused") as err:
        mon.run_config(bad)
    assert "bogus" in str(err.value)
    assert Path(p["config_path"]).read_text() == before


def test_without_promtool_nothing_is_validated(tmp_path):
    r = mon.run_config(_params(tmp_path, validate=False))
    assert r["changed"] and r["validated"] == [] and r["promtool"] is None


def test_missing_promtool_given_explicitly_is_an_error(tmp_path):
    with pytest.raises(GpufleetError, match="not found"):
        mon.run_config(_params(tmp_path, promtool="/nonexistent/promtool"))


def test_reload_url_errors_are_clear(tmp_path):
    with pytest.raises(GpufleetError, match="did not answer"):
        mon.run_config(_params(tmp_path, validate=False, reload_url="http://127.0.0.1:1/-/reload", reload_timeout=2))


def test_action_plugin_fills_infos_and_addresses_from_host_vars():
    sys.path.insert(0, str(ROOT / ".build" / "collections"))
    from ansible_collections.gpufleet.vllm.plugins.action.monitoring_config import from_host_vars

    hostvars = {
        "gpu-a": {"gpufleet_monitoring_info": _info(_dep("chat-0", 8000)), "ansible_host": "10.0.0.1"},
        "gpu-b": {"gpufleet_monitoring_info": {"failed": True, "msg": "x"}},
        "gpu-c": {},
        "gpu-d": {"gpufleet_monitoring_info": {"unreachable": True, "changed": False, "msg": "ssh: refused"}},
        "gpu-e": {"gpufleet_monitoring_info": {"skipped": True, "changed": False}},
    }
    hosts = ["gpu-a", "gpu-b", "gpu-c", "gpu-d", "gpu-e"]
    out = from_host_vars({"from_hosts": hosts, "infos": {"gpu-c": []}}, hostvars)
    assert sorted(out["infos"]) == ["gpu-a", "gpu-c"]
    assert out["addresses"] == {"gpu-a": "10.0.0.1", **{h: h for h in hosts[1:]}}
