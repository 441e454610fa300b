# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Why a vLLM server did not come up: a failure class and one line a person can act on, from its log tail.

``classify(log_lines, exit_code=None, timed_out=False)`` -> ``(failure_class, hint)``. Classes: gpu_oom,
kv_cache_too_small, no_gpu, hf_auth, model_not_found, port_conflict, ray_cluster_incomplete, ray_node_lost (a
multi-host replica, docs/ray.md), bad_args, timeout, unknown; ``smoke_failed``
(the server came up but its one smoke request failed) is decided by ``smoke_hint``, not from the log.
``mask(lines, secrets)`` replaces every secret value (and bearer tokens / hf_ tokens) by ``********``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable

MASK = "********"
TAIL_LINES = 300

FAILURE_CLASSES = (
    "gpu_oom",
    "kv_cache_too_small",
    "no_gpu",
    "hf_auth",
    "model_not_found",
    "port_conflict",
    "ray_cluster_incomplete",
    "ray_node_lost",
    "bad_args",
    "timeout",
    "smoke_failed",
    "unknown",
)

# (class, patterns, hint). Checked in this order: the first class with a matching line wins. hf_auth precedes
# model_not_found because huggingface_hub's "not found" text also mentions gated repos, and both end in vLLM's
# "Invalid repository ID" ValueError.
_RULES: list[tuple[str, list[str], str]] = [
    (
        "gpu_oom",
        [r"OutOfMemoryError", r"CUDA out of memory", r"CUDA error: out of memory", r"HIP out of memory"],
        "CUDA out of memory while loading; lower gpu_memory_utilization or max_model_len, or add GPUs "
        "(tensor_parallel_size)",
    ),
    (
        "kv_cache_too_small",
        [
            r"larger than the available KV cache memory",
            r"No available memory for the cache blocks",
            r"KV cache is needed",
            r"max seq len .* is larger than the maximum number of tokens that can be stored in KV cache",
        ],
        "not enough GPU memory left for the KV cache at this max_model_len; lower max_model_len, raise "
        "gpu_memory_utilization, or add GPUs",
    ),
    (
        "no_gpu",
        [
            r"Failed to infer device type",
            r"No CUDA GPUs are available",
            r"could not select device driver",
            r"Found no NVIDIA driver on your system",
            r"CUDA driver initialization failed",
            r"libcuda\.so.*cannot open shared object",
            r"unresolvable CDI devices",
        ],
        "the container sees no GPU; check the gpus option, the NVIDIA container toolkit (docker) or the CDI spec "
        "(podman, /etc/cdi)",
    ),
    (
        "hf_auth",
        [
            r"GatedRepoError",
            r"Cannot access gated repo",
            r"401 Client Error",
            r"403 Client Error",
            r"Access to model .* is restricted",
            r"Invalid (user token|credentials)",
        ],
        "the Hugging Face hub refused access; pass hf_token with a token that has accepted the model's licence, "
        "or sync the model to the host with gpufleet.vllm.model_sync",
    ),
    (
        "model_not_found",
        [
            r"Repository Not Found",
            r"RepositoryNotFoundError",
            r"Revision Not Found",
            r"Invalid repository ID or local directory",
            r"does not appear to have a file named config\.json",
            r"LocalEntryNotFoundError",
        ],
        "model not found; check model (hub id or a host path with config.json) and revision",
    ),
    (
        "port_conflict",
        [r"Address already in use", r"\[Errno 98\]", r"address already in use"],
        "the port is already in use on the host; pick another port or stop what listens there",
    ),
    (
        "ray_cluster_incomplete",
        [
            r"number of required GPUs exceeds the total number of available GPUs",
            r"Cannot provide a placement group of placement_group_specs",
            r"Failed to connect to Ray cluster",
        ],
        "the replica's Ray cluster has fewer GPUs than tensor_parallel_size x pipeline_parallel_size, or cannot be "
        "reached: check that every Ray worker of the replica joined (ray status in its head container; docs/ray.md)",
    ),
    (
        "ray_node_lost",
        [r"ActorDiedError: .*its node has died", r"has been marked dead because the detector has missed"],
        "a Ray node of this multi-host replica was lost (its host down, or its Ray worker container gone) and the "
        "engine died with it; bring the host back or move the replica (move_from_unreachable), then converge",
    ),
    (
        "bad_args",
        [
            r"error: unrecognized arguments",
            r"error: argument ",
            r"invalid choice",
            r"error: the following arguments are required",
            r"requires --",
            r"ValueError: With `vllm serve`, you should provide the model as a positional argument",
        ],
        "vLLM refused its arguments; check the engine options and extra_args against this vLLM version",
    ),
]
# vLLM refusing the value of one of the user's options (a ValueError before the engine starts): bad_args, with a hint
# computed from the numbers in the message. Checked before _RULES: these lines are specific.
_OPTION_ERRORS: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (
        r"User-specified max_model_len \((\d+)\) is greater than the derived max_model_len \((\w+)=(\d+)",
        lambda m: (
            f"max_model_len {m.group(1)} is more than the model's limit {m.group(3)} ({m.group(2)} in its "
            f"config.json); lower max_model_len to {m.group(3)} or less, or (only for a model with RoPE scaling that "
            "supports it) set env VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"
        ),
    ),
    (
        r"Total number of attention heads \((\d+)\) must be divisible by tensor parallel size \((\d+)\)",
        lambda m: (
            f"the model's {m.group(1)} attention heads do not split over tensor_parallel_size {m.group(2)}; "
            f"choose a tensor_parallel_size that divides {m.group(1)}"
        ),
    ),
    (
        r"max_num_batched_tokens \((\d+)\) is smaller than max_model_len \((\d+)\)",
        lambda m: (
            f"max_num_batched_tokens {m.group(1)} is less than max_model_len {m.group(2)}; raise "
            f"max_num_batched_tokens to {m.group(2)} or more, lower max_model_len, or enable chunked prefill"
        ),
    ),
    (
        r"GPU memory utilization must be (?:within|between) \(?0, 1\]?\.? Got (\S+?)\.?$",
        lambda m: f"gpu_memory_utilization {m.group(1)} is outside (0, 1]; use a fraction such as 0.9",
    ),
    (
        r"please set tensor_parallel_size \((\d+)\) to less than max local gpu count \((\d+)\)",
        lambda m: (
            f"tensor_parallel_size x pipeline_parallel_size = {m.group(1)} but the container sees "
            f"{m.group(2)} GPU(s); give as many gpus as tensor x pipeline parallel size, or lower them"
        ),
    ),
]
_HINTS = {rule[0]: rule[2] for rule in _RULES}
_HINTS["timeout"] = (
    "the server was not ready within wait_timeout; raise wait_timeout (first starts download and compile)"
)
_HINTS["unknown"] = "the server failed; read log_tail"
_HINTS["smoke_failed"] = (
    "the server answered /health and /v1/models but not one real request; read its answer and log_tail (a broken "
    "model revision, a bad chat template), choose the request (smoke_test: {endpoint, prompt}), or set "
    "smoke_test: false for an engine without any of these endpoints"
)

_ERRORISH = r"(Error|Exception|error:|ERROR|Traceback|FATAL)"
_TOKEN_PATTERNS = [
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}",
    r"\bhf_[A-Za-z0-9]{20,}\b",
    # key: value, key=value, 'key': 'value' and vLLM's argparse dumps 'api_key': ['K'] / api_key=['K', 'L']: every
    # quoted item of a list is masked, whatever its length.
    r"(?i)((?:api[_-]?keys?|token|password|secret)['\"]?\s*[=:]\s*\[)[^\]]*",
    r"(?i)((?:api[_-]?keys?|token|password|secret)['\"]?\s*[=:]\s*['\"]?)(?!None\b|\[)[^\s'\",}]{1,}",
    # a secret flag on a logged command line: --api-key K, --hf-token=K
    r"(?i)(--(?:api[_-]key|hf[_-]token)(?:=|\s+)['\"]?)[^\s'\",]+",
]


# Compiled on first use (functools.cache): a no-op converge imports this module but never classifies or masks.
@functools.cache
def _rules() -> list[tuple[str, list[re.Pattern[str]], str]]:
    return [(cls, [re.compile(p) for p in pats], hint) for cls, pats, hint in _RULES]


@functools.cache
def _option_errors() -> list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]]:
    return [(re.compile(p), fn) for p, fn in _OPTION_ERRORS]


@functools.cache
def _tokens() -> list[re.Pattern[str]]:
    return [re.compile(p) for p in _TOKEN_PATTERNS]


def hint_for(failure_class: str) -> str:
    return _HINTS.get(failure_class, _HINTS["unknown"])


def _last_error_line(lines: list[str]) -> str | None:
    for line in reversed(lines):
        s = line.strip()
        if s and re.search(_ERRORISH, s) and not s.startswith("File ") and not s.startswith("Traceback"):
            return s[:300]
    return None


def classify(log_lines: Iterable[str], exit_code: int | None = None, timed_out: bool = False) -> tuple[str, str]:
    """Failure class and a one-line hint ``"<class>: <what happened>; <what to do>"`` from the log tail."""
    lines = [ln for chunk in log_lines for ln in str(chunk).splitlines()][-TAIL_LINES:]
    for pat, hint_fn in _option_errors():
        for line in lines:
            m = pat.search(line)
            if m:
                return "bad_args", f"bad_args: vLLM refused an option: {hint_fn(m)}"
    for cls, pats, hint in _rules():
        for line in lines:
            if any(p.search(line) for p in pats):
                return cls, f"{cls}: {hint}"
    if exit_code == 2:
        return "bad_args", f"bad_args: {_HINTS['bad_args']}"
    if timed_out:
        return "timeout", f"timeout: {_HINTS['timeout']}"
    last = _last_error_line(lines)
    detail = f" (last error: {last})" if last else ""
    code = f" with exit code {exit_code}" if exit_code not in (None, 0) else ""
    return "unknown", f"unknown: the server stopped{code}{detail}; read log_tail"


def smoke_hint(endpoint: str, status: int, answer: str | bytes, secrets: Iterable[str | None] = ()) -> str:
    """The hint of a failed smoke request: what was asked, what the server answered (secrets masked, at most 300
    characters of it), what to do."""
    if isinstance(answer, bytes):
        answer = answer.decode("utf-8", "replace")
    text = " ".join(mask([answer], secrets)[0].split())[:300]
    got = f"answered {status}: {text}" if status else "did not answer"
    return f"smoke_failed: POST {endpoint} (max_tokens 1) {got}; {_HINTS['smoke_failed']}"


def mask(lines: Iterable[str], secrets: Iterable[str | None] = ()) -> list[str]:
    """Lines with every secret value and anything token-shaped replaced by ``********``."""
    values = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)
    out = []
    for line in lines:
        for v in values:
            line = line.replace(v, MASK)
        for pat in _tokens():
            line = pat.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, line)
        out.append(line)
    return out


def tail(text: str | bytes, n: int = TAIL_LINES) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text.splitlines()[-n:]
