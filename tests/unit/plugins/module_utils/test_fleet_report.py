"""fleet_report's status report: vLLM's /metrics read with prometheus_client's parser (module_utils/_fleet/status.py)."""

from __future__ import annotations

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import status as fr_status


def test_metrics_label_values_with_braces_commas_and_escaped_quotes():
    """Label values are free text (model names, finish reasons): a '}' or ',' or an escaped quote inside one does not
    hide the sample."""
    text = "\n".join(
        [
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
            'vllm:request_success_total{finished_reason="stop",model_name="org/m}x"} 3.0',
            'vllm:request_success_total{finished_reason="length",model_name="a,b=\\"c\\""} 2.0',
            'vllm:request_success_total{model_name="back\\\\slash\\nnewline"} 1.0 1700000000000',
            'vllm:generation_tokens_total{model_name="{}"} 500.0',
            'vllm:num_requests_waiting{model_name="q\\"}, x=\\"y"} 4.0',
        ]
    )
    assert fr_status.parse_metrics(text) == {"requests": 6.0, "generation_tokens": 500.0, "waiting": 4.0}


def test_metrics_bad_lines_are_skipped_and_the_rest_counts():
    text = "\n".join(
        [
            'vllm:request_success_total{model_name="m"} 3.0',
            'vllm:request_success_total{model_name="m"',  # a scrape cut off mid-line
            "vllm:num_requests_running not-a-number",
            'vllm:num_requests_running{model_name="m"} NaN',
            'vllm:num_requests_running{model_name="m"} 2',
            'vllm:request_success_total_created{model_name="m"} 1.7e9',  # another metric, same prefix
            "other_metric 9",
        ]
    )
    assert fr_status.parse_metrics(text) == {"requests": 3.0, "running": 2.0}


@pytest.mark.parametrize("text", [None, "", "# only comments\n"])
def test_no_metrics(text):
    assert fr_status.parse_metrics(text) == {}


def test_status_shows_unhealthy_gpus_on_their_rows_and_below_the_table():
    hot = "temperature 95 C is above max_temperature_c (85 C)"
    infos = {
        "gpu-a": {
            "deployments": [
                {"name": "chat-0", "gpus": ["1"], "state": "running"},
                {"name": "tp-0", "gpus": ["GPU-0"], "state": "running"},
            ],
            "gpus": [
                {"index": 0, "uuid": "GPU-0", "healthy": True, "health_issues": []},
                {"index": 1, "uuid": "GPU-1", "healthy": False, "health_issues": [hot]},
            ],
        },
        "gpu-b": {"deployments": []},  # no gpus gathered: nothing to say
    }
    report = fr_status.status_report(infos, generated_at=0)
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["chat-0"]["gpu_issues"] == [f"GPU 1: {hot}"] and rows["tp-0"]["gpu_issues"] == []
    assert report["unhealthy_gpus"] == [{"host": "gpu-a", "index": 1, "uuid": "GPU-1", "issues": [hot]}]
    assert fr_status.status_table(report)[-1] == f"unhealthy GPU: gpu-a GPU 1 (GPU-1): {hot}"
