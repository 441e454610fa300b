"""Deployment fields smoke_test, keep_revisions and a URL model's checksum: validated by the schema, carried by the
plan to vllm_container and model_sync (whose options they are), none of them rolling a replica when it changes."""

from __future__ import annotations

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import schema
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.payload import fleet_plan
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import sync as model_sync

SUM = "sha256:" + "AB" * 32


def hosts():
    return {"a": {"gpus": [{"index": 0, "memory_total_mib": 81920}], "reachable": True}}


def dep(**fields):
    return {"name": "chat", "model": "org/chat", **fields}


def one(**fields):
    return schema.validate_deployments([dep(**fields)])[0]


def problems_of(**fields) -> list[str]:
    with pytest.raises(GpufleetError) as info:
        schema.validate_deployments([dep(**fields)])
    return info.value.details["problems"]


def spec_of(**fields):
    out = fleet_plan(hosts(), [dep(**fields)])
    return out["hosts"]["a"][0]


def test_defaults_and_values():
    d = one()
    assert d["smoke_test"] is True and d["keep_revisions"] == 2
    d = one(smoke_test=False, keep_revisions=5)
    assert d["smoke_test"] is False and d["keep_revisions"] == 5
    assert one(smoke_test="no")["smoke_test"] is False  # YAML-ish strings, as the other bool fields
    assert one(keep_revisions="3")["keep_revisions"] == 3  # templated values arrive as strings
    assert schema.KEEP_REVISIONS_MAX == model_sync.MAX_KEEP  # the schema refuses what model_sync would


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"smoke_test": "maybe"}, "chat: smoke_test: must be true, false or a mapping with endpoint and/or prompt, got 'maybe'"),
        ({"smoke_test": {"endpoint": "complete"}}, "chat: smoke_test.endpoint: must be one of auto, completions, chat, embeddings, got 'complete'"),
        ({"smoke_test": {"prompt": ""}}, "chat: smoke_test.prompt: must be a non-empty string of at most 4096 characters, got '0 characters'"),
        ({"smoke_test": {"prompt": "x" * 4097}}, "chat: smoke_test.prompt: must be a non-empty string of at most 4096 characters, got '4097 characters'"),
        ({"smoke_test": {"prompt": 42}}, "chat: smoke_test.prompt: must be a non-empty string of at most 4096 characters, got 42"),
        ({"smoke_test": {"endpoint": "chat", "max_tokens": 5}}, "chat: smoke_test.max_tokens: unknown key (smoke_test takes endpoint and prompt), got 5"),
        ({"keep_revisions": 0}, "chat: keep_revisions: must be an integer in 1..100, got 0"),
        ({"keep_revisions": 101}, "chat: keep_revisions: must be an integer in 1..100, got 101"),
        ({"keep_revisions": True}, "chat: keep_revisions: must be an integer in 1..100, got True"),
        ({"keep_revisions": "two"}, "chat: keep_revisions: must be an integer in 1..100, got 'two'"),
        ({"model": {"url": "https://x/m.gguf", "checksum": "md5:1"}}, "chat: model.checksum: must be sha256:<64 hex digits>, got 'md5:1'"),
        ({"model": {"url": "https://x/m.gguf", "checksum": ""}}, "chat: model.checksum: must be sha256:<64 hex digits>, got ''"),
        ({"model": {"repo_id": "org/chat", "checksum": SUM}}, "chat: model.checksum: only applies to url models"),
        ({"engine_options": {"smoke_test": False}}, "chat: engine_options.smoke_test: is set by the deployment field smoke_test"),
    ],
)  # fmt: skip
def test_bad_values_name_the_field(fields, problem):
    assert problem in problems_of(**fields)


def test_checksum_normalized_and_only_when_given():
    d = one(model={"url": "https://x/m.gguf", "checksum": f" {SUM} "})
    assert d["model"]["checksum"] == "sha256:" + "ab" * 32
    assert "checksum" not in one(model="https://x/m.gguf")["model"]  # digests of existing URL models unchanged
    assert schema.validate_deployments([d]) == [d]  # normalized input validates to itself


def test_plan_carries_them_to_model_sync_and_vllm_container():
    spec = spec_of(model={"url": "https://x/m.gguf", "checksum": SUM}, keep_revisions=4, smoke_test=False)
    assert spec["model_sync"]["checksum"] == "sha256:" + "ab" * 32
    assert spec["model_sync"]["keep_revisions"] == 4
    assert spec["container"]["smoke_test"] is False
    spec = spec_of()
    assert spec["model_sync"]["keep_revisions"] == 2 and "checksum" not in spec["model_sync"]
    assert spec["container"]["smoke_test"] is True


def test_the_plan_args_pass_the_modules_own_argument_specs():
    """fleet_apply validates each step against the module's own argument spec: the new keys must be options there."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container.spec import argument_spec

    spec = spec_of(model={"url": "https://x/m.gguf", "checksum": SUM}, keep_revisions=4, smoke_test=False)
    res = ArgumentSpecValidator(model_sync.argument_spec()).validate(spec["model_sync"])
    assert not res.error_messages, res.error_messages
    assert res.validated_parameters["keep_revisions"] == 4
    assert "smoke_test" in argument_spec()


def test_gate_and_keep_revisions_never_roll_a_checksum_does():
    base = spec_of(model={"url": "https://x/m.gguf"})["digest"]
    assert spec_of(model={"url": "https://x/m.gguf"}, smoke_test=False, keep_revisions=9)["digest"] == base
    assert spec_of(model={"url": "https://x/m.gguf", "checksum": SUM})["digest"] != base  # other weights: roll


def test_smoke_test_mapping_chooses_the_request_and_rolls_nothing():
    """smoke_test: {endpoint, prompt}: the gate is on, with that request (vllm_container's smoke_request), carried
    by the plan after the digest: choosing another request never rolls a replica."""
    d = one(smoke_test={"endpoint": "chat", "prompt": "Bonjour"})
    assert d["smoke_test"] == {"endpoint": "chat", "prompt": "Bonjour"}
    assert schema.validate_deployments([d]) == [d]  # normalized input validates to itself
    assert one(smoke_test={"endpoint": "auto"})["smoke_test"] is True  # only the defaults: plain on
    spec = spec_of(smoke_test={"endpoint": "chat", "prompt": "Bonjour"})
    assert spec["container"]["smoke_test"] is True
    assert spec["container"]["smoke_request"] == {"endpoint": "chat", "prompt": "Bonjour"}
    assert spec["digest"] == spec_of()["digest"] == spec_of(smoke_test={"prompt": "Hi"})["digest"]
    assert "smoke_request" not in spec_of()["container"]
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container.spec import argument_spec

    container_spec = {k: v for k, v in argument_spec().items() if k in ("smoke_test", "smoke_request")}
    res = ArgumentSpecValidator(container_spec).validate({k: spec["container"][k] for k in container_spec})
    assert not res.error_messages and res.validated_parameters["smoke_request"]["endpoint"] == "chat"
