# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The longest context a model allows, from its config.json, as vLLM derives it (``_get_and_verify_max_len``): the
smallest of the length keys it knows, times the RoPE scaling factor. Used to refuse a ``max_model_len`` vLLM would
refuse after minutes of start-up, before anything is created.

Conservative: when the config has no length key, or is unreadable, nothing is refused (vLLM decides); a RoPE scaling
factor only ever raises the limit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

# vLLM's possible_keys, in its order.
LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
ALLOW_LONG_ENV = "VLLM_ALLOW_LONG_MAX_MODEL_LEN"


def derived_max_len(config: Mapping[str, Any]) -> tuple[int, str] | None:
    """(limit, the key it came from) for a model's config.json dict, or None when it names no length."""
    found: list[tuple[float, str]] = []
    for cfg in (config, config.get("text_config")):
        if not isinstance(cfg, Mapping):
            continue
        for key in LENGTH_KEYS:
            value = cfg.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                found.append((float(value), key))
        if found:
            break
    if not found:
        return None
    limit, key = min(found)
    rope = config.get("rope_scaling") or (config.get("text_config") or {}).get("rope_scaling")
    if isinstance(rope, Mapping):
        factor = rope.get("factor")
        if isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 1:
            original = rope.get("original_max_position_embeddings")
            base = float(original) if isinstance(original, (int, float)) and original > 0 else limit
            limit = max(limit, base * factor)
    return int(limit), key


def max_model_len_problem(params: Mapping[str, Any], env: Mapping[str, str] | None = None) -> str | None:
    """Why vLLM would refuse ``max_model_len`` for a model whose weights are on this host (``model`` an absolute
    path with config.json), or None (fits, not set, not a local model, or the env allows longer)."""
    want = params.get("max_model_len")
    model = params.get("model")
    if not isinstance(want, int) or isinstance(want, bool) or want <= 0 or not isinstance(model, str):
        return None
    if not model.startswith("/"):
        return None
    if str((env or {}).get(ALLOW_LONG_ENV, "")).strip().lower() in ("1", "true"):
        return None
    try:
        with open(os.path.join(model, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(config, Mapping):
        return None
    derived = derived_max_len(config)
    if derived is None or want <= derived[0]:
        return None
    limit, key = derived
    return (
        f"max_model_len {want} is more than the model's limit {limit} ({key} in {model}/config.json): vLLM would "
        f"refuse to start; lower max_model_len to {limit} or less (or leave it unset), or, only for a model whose "
        f"RoPE scaling supports it, set env {ALLOW_LONG_ENV}=1"
    )
