"""plugins/module_utils/_monitoring/{rules,dashboard}.py: alert rules (checked and unit-tested by promtool, in the YAML
the action plugin renders) and the dashboard (metric names against the vLLM stand-in's /metrics)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpufleet.vllm.plugins.action.monitoring_config import to_yaml
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.dashboard import (
    dashboard,
    dashboard_exprs,
    metric_names,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.rules import (
    AGENT_ALERTS,
    DEFAULT_ALERTS,
    alert_rules,
)

ROOT = Path(__file__).resolve().parents[4]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")


# --- rules ---------------------------------------------------------------------------------------------------------


def test_rule_overrides_and_agent_alerts():
    base = {r["alert"] for r in alert_rules()["groups"][0]["rules"]}
    assert base == set(DEFAULT_ALERTS) - set(AGENT_ALERTS)
    with_agent = alert_rules(agent=True, agent_metrics={"restarts": "my_restarts_total"})["groups"][0]["rules"]
    assert {r["alert"] for r in with_agent} == set(DEFAULT_ALERTS)
    restarts = next(r for r in with_agent if r["alert"] == "GpufleetDeploymentRestarts")
    assert restarts["expr"] == "increase(my_restarts_total[15m]) > 0"
    rules = alert_rules({"VllmKvCacheHigh": {"threshold": 0.8, "for": "1m"}, "VllmServerDown": {"enabled": False}})
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
        alert_rules(overrides)


@needs_promtool
def test_every_rule_expression_parses(tmp_path):
    path = tmp_path / "rules.yml"
    path.write_text(to_yaml(alert_rules(agent=True)))
    r = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(DEFAULT_ALERTS)} rules found" in r.stdout


@needs_promtool
def test_rules_fire_on_promtool_series(tmp_path):
    """promtool test rules: the alerts fire on the series they are about, and not on healthy ones."""
    overrides = {
        name: {"for": "1m"}
        for name in ("VllmServerDown", "VllmHealthFailing", "VllmKvCacheHigh", "VllmRequestQueueGrowing")
    }
    (tmp_path / "rules.yml").write_text(to_yaml(alert_rules(overrides, agent=True)))
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
    (tmp_path / "rules.yml").write_text(to_yaml(alert_rules(agent=True)))
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
    board = dashboard()
    exported = _standin_metric_names("0.10.2") | {"up"}
    used = set().union(*(metric_names(e) for e in dashboard_exprs(board)))
    assert {"vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket", "up"} <= used
    assert used - exported - VLLM_DOCUMENTED == set()
    rules = alert_rules()["groups"][0]["rules"]
    used_by_rules = set().union(*(metric_names(r["expr"]) for r in rules))
    assert used_by_rules - exported - VLLM_DOCUMENTED == set()
    # every vLLM metric name exists in the 0.10.2 stand-in (which exports vLLM 0.10's names)
    assert {m for m in used | used_by_rules if m.startswith("vllm:")} <= exported


def test_dashboard_structure():
    board = dashboard()
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
    exprs = [e.replace("$deployment", ".*").replace("$__rate_interval", "5m") for e in dashboard_exprs(dashboard())]
    rules = {"groups": [{"name": "d", "rules": [{"record": f"dash:e{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "d.yml").write_text(to_yaml(rules))
    r = subprocess.run(
        [PROMTOOL, "check", "rules", str(tmp_path / "d.yml")], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_deployment_failed_fires_while_the_agent_holds_it_stopped(tmp_path):
    (tmp_path / "rules.yml").write_text(to_yaml(alert_rules(agent=True)))
    series = (
        'gpufleet_agent_deployment_failed{deployment="chat-0",host="gpu-a",reason="crash_loop",failure_class="gpu_oom"}'
    )
    tests = {
        "rule_files": ["rules.yml"],
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": series, "values": "_ _ 1 1"}],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "GpufleetDeploymentFailed", "exp_alerts": []},
                    {
                        "eval_time": "3m",
                        "alertname": "GpufleetDeploymentFailed",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "deployment": "chat-0",
                                    "host": "gpu-a",
                                    "reason": "crash_loop",
                                    "failure_class": "gpu_oom",
                                },
                                "exp_annotations": {
                                    "summary": "chat-0 on gpu-a was stopped for good (crash_loop)",
                                    "description": "The node agent stopped chat-0 after its failures (crash_loop, "
                                    "gpu_oom); the converge reports it failed until its configuration changes or "
                                    "gpufleet_reset_failed=true.",
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
