"""A deployment's model with ``sources`` (issue #19 item 3): the schema validates the order and the keys each source
needs, the plan carries them to model_sync (and into the plan digest only when set), placement and fleet_apply
serve what model_sync installed and report which source served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import summary as fr_summary
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.apply import apply_host, validated
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.payload import fleet_plan
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import validate_deployments
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import metadata
from ansible_collections.gpufleet.vllm.plugins.modules.fleet_apply import ARGUMENT_SPEC

ORDER = {
    "sources": ["local", "hf_cache", "s3", "hub"],
    "path": "/srv/ckpt/chat/",
    "repo_id": "org/chat",
    "revision": "v1",
    "s3_url": "s3://models/chat",
    "endpoint_url": "https://acct.r2.cloudflarestorage.com",
    "region": "auto",
    "hf_cache_dir": "/var/cache/hf/hub",
}


def model_of(model: Any) -> dict[str, Any]:
    return validate_deployments([{"name": "chat", "model": model}])[0]["model"]


def problems_of(model: Any) -> list[str]:
    with pytest.raises(GpufleetError) as info:
        validate_deployments([{"name": "chat", "model": model}])
    return info.value.details["problems"]


def test_an_order_is_normalized_with_every_key_and_validates_to_itself():
    out = model_of(ORDER)
    assert out == {
        "source": "ordered",
        "sources": ["local", "hf_cache", "s3", "hf"],  # hub is model_sync's alias of hf
        "path": "/srv/ckpt/chat",
        "repo_id": "org/chat",
        "revision": "v1",
        "url": None,
        "checksum": None,
        "s3_url": "s3://models/chat",
        "endpoint_url": "https://acct.r2.cloudflarestorage.com",
        "region": "auto",
        "hf_cache_dir": "/var/cache/hf/hub",
    }
    assert model_of(out) == out


@pytest.mark.parametrize("model", ["s3://models/chat", {"s3_url": "s3://models/chat"}])
def test_an_s3_url_alone_is_the_order_s3(model):
    out = model_of(model)
    assert out["source"] == "ordered" and out["sources"] == ["s3"] and out["s3_url"] == "s3://models/chat"


def test_models_without_sources_keep_their_shape():
    assert model_of("org/chat") == {
        "source": "hf",
        "repo_id": "org/chat",
        "revision": "main",
        "path": None,
        "url": None,
    }


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({**ORDER, "sources": []}, "chat: model.sources: must be a non-empty list such as [local, hf_cache, s3, hub]"),
        ({**ORDER, "sources": ["local", "ftp"]}, "chat: model.sources: 'ftp' is not one of local, hf_cache, s3, hub"),
        ({**ORDER, "sources": ["hub", "hf"]}, "chat: model.sources: names 'hf' twice (hub and hf are the same"),
        ({"sources": ["s3", "hub"], "repo_id": "org/chat"}, "chat: model.s3_url: is required by source s3 in sources"),
        ({"sources": ["local"], "path": "/p", "s3_url": "s3://bkt/x"}, "chat: model.s3_url: is used by no source"),
        ({"sources": ["hub"], "repo_id": "org/c", "hf_cache_dir": "/c"}, "chat: model.hf_cache_dir: is used by no"),
        ({"sources": ["s3"], "s3_url": "http://b/x"}, "chat: model.s3_url: s3_url 'http://b/x' must look like s3://"),
        ({"sources": ["s3"], "s3_url": "s3://B_ad/x"}, "chat: model.s3_url: s3_url 's3://B_ad/x': 'B_ad' is not"),
        ({"sources": ["s3"], "s3_url": "s3://bkt/x", "region": "Not A Region"}, "chat: model.region: must be a region"),
        ({"sources": ["hf_cache"], "repo_id": "org/c", "hf_cache_dir": "rel"}, "chat: model.hf_cache_dir: must be"),
        ({"sources": ["local"], "path": "rel/p"}, "chat: model.path: must be an absolute path on the host"),
        ({"sources": ["url"], "url": "https://x/m", "checksum": "md5:1"}, "chat: model.checksum: must be sha256:"),
        ({**ORDER, "colour": "red"}, "chat: model: unknown key(s) colour; allowed: sources, repo_id"),
    ],
)
def test_each_mistake_is_one_clear_problem(model, expected):
    problems = problems_of(model)
    assert any(p.startswith(expected) for p in problems), problems


def test_the_endpoint_may_not_carry_a_secret():
    problems = problems_of({"sources": ["s3"], "s3_url": "s3://bkt/x", "endpoint_url": "https://k:s@r2.example"})
    assert len(problems) == 1 and problems[0].startswith("chat: model.endpoint_url:") and "k:s" not in problems[0]


A100 = 81920


def host(**info: Any) -> dict[str, Any]:
    gpus = [{"index": i, "uuid": f"GPU-{i}", "memory_total_mib": A100, "memory_free_mib": A100} for i in range(2)]
    return {"reachable": True, "gpus": gpus, "models_root": "/var/lib/models", **info}


def test_the_plan_hands_the_order_to_model_sync_and_serves_its_install():
    plan = fleet_plan({"a": host(allowed_model_dirs=["/srv/ckpt"]), "b": host()}, [{"name": "chat", "model": ORDER}])
    specs = {s["host"]: s for h in plan["hosts"].values() for s in h}
    assert set(specs) == {"a"} or set(specs) == {"b"}
    spec = next(iter(specs.values()))
    sync = spec["model_sync"]
    assert "source" not in sync and sync["repo_id"] == "org/chat" and sync["revision"] == "v1"
    assert {k: sync[k] for k in ("s3_url", "endpoint_url", "region", "hf_cache_dir")} == {
        k: ORDER[k] for k in ("s3_url", "endpoint_url", "region", "hf_cache_dir")
    }
    assert spec["model_path"] == "/var/lib/models/chat" and spec["container"]["model"] == "/var/lib/models/chat"
    # local is tried only where gpufleet_allowed_model_dirs hold the path (model_sync refuses it elsewhere)
    if spec["host"] == "a":
        assert sync["sources"] == ["local", "hf_cache", "s3", "hf"] and sync["src"] == "/srv/ckpt/chat"
    else:
        assert sync["sources"] == ["hf_cache", "s3", "hf"] and "src" not in sync
    # model_sync's own argument spec and checks accept what the plan hands it
    from ansible_collections.gpufleet.vllm.plugins.module_utils._model import sync as model_sync

    params = validated("model_sync", model_sync.argument_spec(), sync, model_sync.REQUIRED_IF)
    model_sync.check_params(params)


def test_a_local_only_order_is_placed_where_the_path_is_allowed():
    model = {"sources": ["local"], "path": "/srv/ckpt/chat"}
    plan = fleet_plan({"a": host(allowed_model_dirs=["/srv/ckpt"]), "b": host(allowed_model_dirs=["/x"])},
                      [{"name": "chat", "model": model, "replicas": 2, "placement": "spread"}])  # fmt: skip
    assert {a["host"] for a in plan["assignments"]} == {"a"}


def test_the_digest_changes_only_when_sources_are_set():
    plain = fleet_plan({"a": host()}, [{"name": "chat", "model": "org/chat"}])["hosts"]["a"][0]
    same = fleet_plan({"a": host()}, [{"name": "chat", "model": {"repo_id": "org/chat"}}])["hosts"]["a"][0]
    assert plain["digest"] == same["digest"] and "sources" not in plain["model_sync"]
    hub_only = {"sources": ["hub"], "repo_id": "org/chat"}
    ordered = fleet_plan({"a": host()}, [{"name": "chat", "model": hub_only}])["hosts"]["a"][0]
    assert ordered["digest"] != plain["digest"]
    other = fleet_plan({"a": host()}, [{"name": "chat", "model": {**hub_only, "sources": ["hf_cache", "hub"]}}])
    assert other["hosts"]["a"][0]["digest"] != ordered["digest"], "another order rolls the replicas"


def test_recorded_sizes_match_an_ordered_model_by_any_of_its_sources():
    model = model_of(ORDER)
    from_s3 = {"weight_bytes": 7, "source": "s3", "s3_url": "s3://models/chat"}
    from_cache = {"weight_bytes": 8, "source": "hf", "repo_id": "org/chat", "revision": "v1"}
    other = {"weight_bytes": 9, "source": "s3", "s3_url": "s3://models/other"}
    assert metadata.recorded_size("chat", model, [("a", {"chat": from_s3})]) == (7, "a")
    assert metadata.recorded_size("chat", model, [("a", {"chat": from_cache})]) == (8, "a")
    assert metadata.recorded_size("chat", model, [("a", {"chat": other})]) is None


def _checkpoint(root: Path) -> Path:
    d = root / "ckpt" / "chat"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (d / "tokenizer.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return d


def test_fleet_apply_reports_the_source_that_served(tmp_path: Path, fake_runtime: Any) -> None:
    ckpt = _checkpoint(tmp_path)
    root = tmp_path / "root"
    model = {"sources": ["hf_cache", "local"], "path": str(ckpt), "repo_id": "org/chat",
             "hf_cache_dir": str(tmp_path / "empty-cache")}  # fmt: skip
    hosts = {"h": host(models_root=str(root), allowed_model_dirs=[str(tmp_path / "ckpt")])}
    plan = fleet_plan(hosts, [{"name": "chat", "model": model}])
    (spec,) = plan["hosts"]["h"]
    spec["model_sync"]["require_tokenizer"] = False
    spec["container"].update(hf_cache_dir=str(tmp_path / "hf"), compile_cache_dir=str(tmp_path / "cc"))
    p = validated("fleet_apply", ARGUMENT_SPEC,
                  {"replicas": [spec], "address": "10.0.0.7", "manifest_dir": str(tmp_path / "manifests")})  # fmt: skip
    out, errors = apply_host(p, runtime=fake_runtime)
    assert errors == []
    (rec,) = out["records"]
    assert rec["model_source"] == "local" and rec["changed"] is True
    (container,) = fake_runtime.c.values()
    served = [m for m in json.dumps(container, default=str).split('"') if m.startswith(str(root / "chat") + "/")]
    assert served, "the container serves the revision model_sync installed under the models root"
    summary = fr_summary.converge_summary({"hosts": {"h": [spec]}, "remove": {}}, {"h": out["records"]})
    assert summary["deployments"]["chat"]["replicas"][0]["model_source"] == "local"
    # nothing served: the record says none, the hint lists what each source said
    spec["model_sync"]["sources"] = ["hf_cache"]
    p = validated("fleet_apply", ARGUMENT_SPEC,
                  {"replicas": [spec], "address": "10.0.0.7", "manifest_dir": str(tmp_path / "manifests")})  # fmt: skip
    out, errors = apply_host(p, runtime=fake_runtime)
    (rec,) = out["records"]
    assert rec["failed"] and rec["failed_step"] == "model_sync" and rec["model_source"] is None
    assert "HF cache" in rec["hint"]


CANARY = "s3-secret-canary-7f3a"
CREDS = {"aws_access_key_id": "AKIDCANARY", "aws_secret_access_key": CANARY}


def test_s3_credentials_are_a_secret_checked_without_showing_it():
    dep = validate_deployments([{"name": "chat", "model": "s3://models/chat", "s3_credentials": CREDS}])[0]
    assert dep["s3_credentials"] == CREDS
    with pytest.raises(GpufleetError) as info:
        validate_deployments(
            [
                {"name": "a", "model": "s3://models/a", "s3_credentials": {"aws_secret_access_key": CANARY}},
                {"name": "b", "model": "org/b", "s3_credentials": CREDS},
                {"name": "c", "model": "s3://models/c", "s3_credentials": {**CREDS, "aws_session_token": 7}},
                {"name": "d", "model": "s3://models/d", "s3_credentials": CANARY},
            ]
        )
    problems = info.value.details["problems"]
    assert problems == [
        "a: s3_credentials.aws_access_key_id: is required (use a vault variable)",
        "b: s3_credentials: only applies to a model with s3 in its sources (model.s3_url)",
        "c: s3_credentials.aws_session_token: must be a non-empty string (use a vault variable), got a int",
        "d: s3_credentials: must be a mapping with aws_access_key_id and aws_secret_access_key (+ aws_session_token): "
        "vault variables, got a str",
    ]
    assert CANARY not in str(info.value)


def test_s3_credentials_reach_model_sync_only(tmp_path: Path, fake_runtime: Any, monkeypatch) -> None:
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import apply as fleet_apply
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import deployment_secrets

    deps = [{"name": "chat", "model": {"sources": ["hf_cache", "s3"], "repo_id": "org/chat",
                                        "s3_url": "s3://models/chat"}, "s3_credentials": CREDS}]  # fmt: skip
    secrets = deployment_secrets(deps)
    assert secrets == {"chat": {"s3_credentials": CREDS}}
    plan = fleet_plan({"h": host(models_root=str(tmp_path / "root"))}, deps)
    (spec,) = plan["hosts"]["h"]
    assert CANARY not in json.dumps(plan, default=str)
    seen: list[dict] = []

    def fake_sync(params: dict, check_mode: bool = False) -> dict:
        seen.append(dict(params))
        raise GpufleetError("no source could serve model chat", failure_class="no_source")

    monkeypatch.setattr(fleet_apply, "sync", fake_sync)
    p = validated("fleet_apply", ARGUMENT_SPEC, {"replicas": [spec], "secrets": secrets,
                                                 "manifest_dir": str(tmp_path / "manifests")})  # fmt: skip
    out, errors = apply_host(p, runtime=fake_runtime)
    (params,) = seen
    assert params["aws_access_key_id"] == "AKIDCANARY" and params["aws_secret_access_key"] == CANARY
    assert out["records"][0]["failed_step"] == "model_sync" and CANARY not in json.dumps([out, errors], default=str)
    # the container never gets them (vllm_container has no such option): a served model would not either
    assert "s3_credentials" not in fleet_apply.HostApply(p, False, None, fake_runtime)._container_args(spec, "img")
