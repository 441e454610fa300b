# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vLLM's ``/metrics``: the one reader of its counters, over prometheus_client's own text parser.

The status report, the usage report (``_fleet/status.py``, ``_fleet/usage.py``), the node agent's idle pause
(``_agent/idle.py``) and the rollout's drain (``_fleet/drain.py``) all want the same thing: a few vLLM metrics,
summed over their label sets (one per model, engine, finish reason). Each sample line is parsed on its own, so label
values may hold ``}``, ``,`` and escaped quotes, and a line the parser rejects (a scrape cut off mid-line) is skipped
while the others still count. prometheus-client is a requirement of the controller and of the hosts
(requirements.txt, requirements-host.txt).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

REQUEST_SUCCESS = "vllm:request_success_total"  # finished requests, every finish reason
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"


def _parser() -> Callable[[str], Iterable[Any]]:
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as e:
        raise GpufleetError(
            "reading vLLM's /metrics needs prometheus-client (pip install prometheus-client; it is in "
            f"requirements.txt and requirements-host.txt): {e}"
        ) from e
    return text_string_to_metric_families


def sums(text: str | None, names: Iterable[str]) -> dict[str, float]:
    """For each of ``names`` present in the Prometheus text ``text``, the sum of its finite samples over all label
    sets; a name with no sample is left out."""
    wanted = tuple(dict.fromkeys(names))
    out: dict[str, float] = {}
    if not text or not wanted:
        return out
    parse = _parser()
    for raw in text.splitlines():
        line = raw.strip()
        # Comments (HELP/TYPE) never change a sample's name in the text format: sample lines parse on their own.
        if not line or line.startswith("#") or not line.startswith(wanted):
            continue
        try:
            samples = [s for family in parse(line + "\n") for s in family.samples]
        except ValueError:
            continue
        for sample in samples:
            if sample.name in wanted and math.isfinite(sample.value):
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out
