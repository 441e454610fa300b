"""Shim package of the gpufleet vLLM stand-in: `python3 -m vllm.entrypoints.openai.api_server` and `vllm`."""

import os as _os

__version__ = _os.environ.get("VLLM_VERSION", "0.0.0")
