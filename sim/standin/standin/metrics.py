"""Prometheus text exposition with vLLM's metric names (V1 engine), per version."""

from __future__ import annotations

import threading
import time

from .tables import version_key

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0]  # fmt: skip
LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0]  # fmt: skip
TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0]  # fmt: skip
TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000]
FINISH_REASONS = ("stop", "length", "abort")


class Histogram:
    def __init__(self, buckets: list[float]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.sum += v
        self.count += 1
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1


class Metrics:
    def __init__(self, version: str, model_name: str, num_gpu_blocks: int = 36590, block_size: int = 16) -> None:
        self.v = version_key(version)
        self.model_name = model_name
        self.lock = threading.Lock()
        self.running = 0
        self.waiting = 0
        self.kv_usage = 0.0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.preemptions = 0
        self.success = dict.fromkeys(FINISH_REASONS, 0)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(LATENCY_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)
        self.queue = Histogram(LATENCY_BUCKETS)
        self.req_prompt = Histogram(TOKEN_BUCKETS)
        self.req_gen = Histogram(TOKEN_BUCKETS)
        self.num_gpu_blocks = num_gpu_blocks
        self.block_size = block_size
        self.created = time.time()

    def start(self) -> None:
        with self.lock:
            self.running += 1
            self.kv_usage = min(1.0, self.running * 0.01)

    def finish(self, prompt: int, gen: int, ttft: float, e2e: float, reason: str) -> None:
        with self.lock:
            self.running = max(0, self.running - 1)
            self.kv_usage = min(1.0, self.running * 0.01)
            self.prompt_tokens += prompt
            self.generation_tokens += gen
            self.prefix_queries += prompt
            self.success[reason] = self.success.get(reason, 0) + 1
            self.ttft.observe(ttft)
            self.e2e.observe(e2e)
            self.queue.observe(0.0)
            if gen > 1:
                self.tpot.observe(max(0.0, e2e - ttft) / (gen - 1))
            self.req_prompt.observe(prompt)
            self.req_gen.observe(gen)

    def render(self) -> str:
        labels = f'engine="0",model_name="{self.model_name}"' if self.v >= (0, 9) else f'model_name="{self.model_name}"'
        out: list[str] = []

        def head(name: str, typ: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {typ}")

        def gauge(name: str, help_: str, value: float) -> None:
            head(name, "gauge", help_)
            out.append(f"{name}{{{labels}}} {float(value)}")

        # prometheus_client's text format (vLLM's /metrics) names a counter's HELP/TYPE with its _total sample name.
        def counter(name: str, help_: str, value: float, extra: str = "") -> None:
            head(f"{name}_total", "counter", help_)
            out.append(f"{name}_total{{{extra}{labels}}} {float(value)}")

        def hist(name: str, help_: str, h: Histogram) -> None:
            head(name, "histogram", help_)
            for b, c in zip(h.buckets, h.counts, strict=True):
                out.append(f'{name}_bucket{{{labels},le="{float(b)}"}} {float(c)}')
            out.append(f'{name}_bucket{{{labels},le="+Inf"}} {float(h.count)}')
            out.append(f"{name}_count{{{labels}}} {float(h.count)}")
            out.append(f"{name}_sum{{{labels}}} {h.sum}")

        with self.lock:
            gauge("vllm:num_requests_running", "Number of requests in model execution batches.", self.running)
            gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", self.waiting)
            if self.v < (0, 11):
                gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", self.kv_usage)
            if self.v >= (0, 10):
                gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", self.kv_usage)
            pq = "vllm:prefix_cache_queries" if self.v >= (0, 10) else "vllm:gpu_prefix_cache_queries"
            ph = "vllm:prefix_cache_hits" if self.v >= (0, 10) else "vllm:gpu_prefix_cache_hits"
            counter(pq, "Prefix cache queries, in terms of number of queried tokens.", self.prefix_queries)
            counter(ph, "Prefix cache hits, in terms of number of cached tokens.", self.prefix_hits)
            counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", self.preemptions)
            counter("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens)
            counter("vllm:generation_tokens", "Number of generation tokens processed.", self.generation_tokens)
            head("vllm:request_success_total", "counter", "Count of successfully processed requests.")
            for reason, n in self.success.items():
                out.append(f'vllm:request_success_total{{finished_reason="{reason}",{labels}}} {float(n)}')
            hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", self.req_prompt)
            hist("vllm:request_generation_tokens", "Number of generation tokens processed.", self.req_gen)
            hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft)
            tpot = "vllm:inter_token_latency_seconds" if self.v >= (0, 11) else "vllm:time_per_output_token_seconds"
            hist(tpot, "Histogram of time per output token in seconds.", self.tpot)
            hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", self.e2e)
            hist("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", self.queue)
            head("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig")
            out.append(
                f'vllm:cache_config_info{{block_size="{self.block_size}",cache_dtype="auto",engine="0",'
                f'num_gpu_blocks="{self.num_gpu_blocks}"}} 1.0'
            )
            head("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.")
            out.append(f"process_start_time_seconds {self.created}")
        return "\n".join(out) + "\n"
