"""The real-parser test is opt-in: it builds a ~1.5 GB venv per vLLM version (see docs/vllm-flags.md).

Run it with ``GPUFLEET_REALPARSER=1 .venv/bin/pytest tests/realparser``; without the variable nothing here is
collected, so ``pytest tests`` stays fast and offline.
"""

from __future__ import annotations

import os

if os.environ.get("GPUFLEET_REALPARSER") != "1":
    collect_ignore_glob = ["test_*.py"]
