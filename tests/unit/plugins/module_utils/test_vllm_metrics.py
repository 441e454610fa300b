"""The one reader of vLLM's /metrics (_vllm/metrics.py): sums over label sets, by prometheus_client's parser, line by
line, so a torn scrape or an odd label value costs only its own line."""

from __future__ import annotations

from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import metrics

TEXT = """# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="a"} 3.0
vllm:request_success_total{finished_reason="length",model_name="a \\"}, odd"} 2.0
vllm:num_requests_running{model_name="a"} 1.0
vllm:num_requests_running{model_name="b"} 2.0
vllm:num_requests_waiting{model_name="a"} NaN
vllm:num_requests_waiting_by_reason{reason="x"} 7.0
vllm:generation_tokens_total{model_name="a"} 40
vllm:prompt_tokens_total{model_name="a"""


def test_sums_over_label_sets_and_skips_what_does_not_parse() -> None:
    got = metrics.sums(TEXT, (metrics.REQUEST_SUCCESS, metrics.RUNNING, metrics.WAITING, metrics.PROMPT_TOKENS))
    # WAITING: only a NaN sample (left out); PROMPT_TOKENS: a line cut off mid-scrape (skipped); a longer name that
    # starts with a wanted one is not counted.
    assert got == {metrics.REQUEST_SUCCESS: 5.0, metrics.RUNNING: 3.0}
    assert metrics.sums(TEXT, [metrics.GENERATION_TOKENS]) == {metrics.GENERATION_TOKENS: 40.0}
    assert metrics.sums("", [metrics.RUNNING]) == {} and metrics.sums(None, [metrics.RUNNING]) == {}
    assert metrics.sums(TEXT, []) == {}
