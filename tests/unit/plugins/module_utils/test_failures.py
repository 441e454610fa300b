from __future__ import annotations

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures

CASES = {
    "gpu_oom": [
        "(EngineCore_0 pid=10) ERROR core.py:718 EngineCore failed to start.",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of 79 GiB",
        "RuntimeError: Engine core initialization failed. See root cause above.",
    ],
    "kv_cache_too_small": [
        "ValueError: To serve at least one request with the models's max seq len (32768), (64.00 GiB KV cache is "
        "needed, which is larger than the available KV cache memory (2.00 GiB). Try increasing `gpu_memory_utilization`"
    ],
    "no_gpu": [
        "INFO __init__.py:241 No platform detected, vLLM is running on UnspecifiedPlatform",
        "RuntimeError: Failed to infer device type, please set the environment variable `VLLM_LOGGING_LEVEL=DEBUG`",
    ],
    "hf_auth": [
        "huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-abc)",
        "Cannot access gated repo for url https://huggingface.co/meta-llama/x/resolve/main/config.json.",
        "ValueError: Invalid repository ID or local directory specified: 'meta-llama/x'.",
    ],
    "model_not_found": [
        "huggingface_hub.errors.RepositoryNotFoundError: 404 Client Error. (Request ID: Root=1-abc)",
        "Repository Not Found for url: https://huggingface.co/api/models/nope/x/revision/main.",
        "If you are trying to access a private or gated repo, make sure you are authenticated.",
        "ValueError: Invalid repository ID or local directory specified: 'nope/x'.",
    ],
    "port_conflict": ["OSError: [Errno 98] Address already in use"],
    # Ray (multi-host replicas): the lines vLLM's Ray executor logged in tests/integration/test_ray.py
    "ray_cluster_incomplete": [
        "(EngineCore_0 pid=101) ValueError: The number of required GPUs exceeds the total number of available GPUs "
        "in the placement group. Required: 6, available in the Ray cluster: 4.",
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
    ],
    "ray_node_lost": [
        "(raylet) The node with node id: 27c89d75 and address: 10.213.37.12 and node name: 10.213.37.12 has been "
        "marked dead because the detector has missed too many heartbeats from it.",
        "(EngineCore_0 pid=432) ERROR core.py:710 ray.exceptions.ActorDiedError: The actor died unexpectedly before "
        "finishing this task. The actor died because its node has died. Node Id: 27c89d75",
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above)",
    ],
    "bad_args": [
        "usage: vllm serve [model_tag] [options]",
        "vllm serve: error: unrecognized arguments: --no-such-flag",
    ],
}


@pytest.mark.parametrize("cls", sorted(CASES))
def test_classify_each_class(cls):
    got, hint = failures.classify(CASES[cls], exit_code=1)
    assert got == cls
    assert hint.startswith(f"{cls}: ") and "\n" not in hint and len(hint) < 300


def test_gated_text_in_not_found_error_is_not_auth():
    assert failures.classify(CASES["model_not_found"])[0] == "model_not_found"


def test_timeout_unknown_and_exit_code_2():
    assert failures.classify(["INFO loading"], timed_out=True)[0] == "timeout"
    assert failures.classify(["argparse said no"], exit_code=2)[0] == "bad_args"
    cls, hint = failures.classify(["INFO x", "RuntimeError: CUDA error: an illegal memory access"], exit_code=1)
    assert cls == "unknown" and "illegal memory access" in hint and "exit code 1" in hint


def test_only_tail_is_read():
    lines = ["OSError: [Errno 98] Address already in use"] + ["INFO fine"] * failures.TAIL_LINES
    assert failures.classify(lines)[0] == "unknown"


def test_mask_secrets_and_token_shapes():
    lines = [
        "args: {'api_key': 'canary-1234567'} token=abcdefgh",
        "Authorization: Bearer sk-verysecretvalue",
        "downloading with hf_abcdefghijklmnopqrstuvwxyz",
        "nothing here",
    ]
    out = failures.mask(lines, ["canary-1234567", None, ""])
    text = "\n".join(out)
    for s in ("canary-1234567", "abcdefgh", "sk-verysecretvalue", "hf_abcdefghijklmnopqrstuvwxyz"):
        assert s not in text
    assert out[3] == "nothing here" and failures.MASK in out[0]
