"""LoRA adapters from the hub (issue #19 item 4): model_sync's lora_modules against the fake hub, installed beside
the model in <models_root>/<model>/loras/<name>/<commit>, a no-op when unchanged, a new revision for a new commit,
and what vllm_container makes of {name, repo_id, revision} (the installed path: in the argv, the read-only mounts
and so the config hash)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cspec
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import lora

pytestmark = pytest.mark.integration


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _container_params(model: str, loras: list[dict]) -> dict:
    return {"name": "c", "model": model, "port": 8000, "lora_modules": loras, "hf_cache_dir": None,
            "compile_cache_dir": None, "mounts": [], "env": {}, "secret_env": {}}  # fmt: skip


def test_lora_from_the_hub_beside_the_model(fake_hub, model_sync, tmp_path):
    base, sql = f"org/base-{_uid()}", f"org/sql-lora-{_uid()}"
    base_sha = fake_hub.make_repo(base, shards=1)
    a1 = fake_hub.make_adapter_repo(sql, seed=1)
    args = {"name": "m", "source": "hf", "repo_id": base, "models_root": str(tmp_path), "hf_endpoint": fake_hub.url,
            "lora_modules": [{"name": "sql", "repo_id": sql}]}  # fmt: skip
    run = model_sync.ansible(args)
    r = run.result
    assert not run.failed, run.output
    assert r["changed"] and r["revision_id"] == base_sha
    (lo,) = r["lora_modules"]
    assert lo["path"] == str(tmp_path / "m" / "loras" / "sql" / a1) and lo["commit"] == a1 and lo["changed"]
    assert (Path(lo["path"]) / "adapter_config.json").is_file()
    assert (Path(lo["path"]) / "adapter_model.safetensors").is_file()

    again = model_sync.direct(args, tmp_path / "w").result
    assert again["changed"] is False and again["lora_modules"][0]["changed"] is False

    # vllm_container: {name, repo_id, revision} -> the installed revision, mounted read-only, in the hash
    params = lora.resolve_params(_container_params(r["path"], [{"name": "sql", "repo_id": sql, "revision": "main"}]))
    assert params["lora_modules"] == [{"name": "sql", "path": lo["path"]}]
    assert (lo["path"], lo["path"], "ro") in cspec.mounts_of(params)
    assert f"sql={lo['path']}" in cspec.build_argv(params)
    h1 = cspec.config_hash(cspec.normalized_spec(params, "sha256:img")[0])

    # a new adapter commit: a new revision beside the old one, a new path, a new config hash
    a2 = fake_hub.make_adapter_repo(sql, seed=2)
    new = model_sync.direct(args, tmp_path / "w").result
    assert new["changed"] and new["lora_modules"][0]["commit"] == a2 and new["revision_id"] == base_sha
    assert Path(lo["path"]).is_dir()  # the old revision stays while a container may use it
    params2 = lora.resolve_params(_container_params(r["path"], [{"name": "sql", "repo_id": sql}]))
    assert params2["lora_modules"][0]["path"].endswith(a2)
    assert cspec.config_hash(cspec.normalized_spec(params2, "sha256:img")[0]) != h1
    # pinned to the old commit: still installed, found by its commit
    old = lora.resolve_params(_container_params(r["path"], [{"name": "sql", "repo_id": sql, "revision": a1}]))
    assert old["lora_modules"][0]["path"] == lo["path"]


def test_lora_not_an_adapter_or_not_synced(fake_hub, model_sync, tmp_path):
    base, notlora = f"org/base-{_uid()}", f"org/plain-{_uid()}"
    fake_hub.make_repo(base, shards=1)
    fake_hub.commit_files(notlora, {"README.md": b"no adapter here\n"})
    args = {"name": "m", "source": "hf", "repo_id": base, "models_root": str(tmp_path), "hf_endpoint": fake_hub.url,
            "lora_modules": [{"name": "x", "repo_id": notlora}]}  # fmt: skip
    r = model_sync.direct(args, tmp_path / "w").result
    assert r["failed"] and r["failure_class"] == "invalid_model" and "adapter_config.json is missing" in r["msg"], r
    assert not (tmp_path / "m" / "loras" / "x").exists() or not list((tmp_path / "m" / "loras" / "x").iterdir())
    dup = model_sync.direct({**args, "lora_modules": [{"name": "x", "repo_id": notlora}] * 2}, tmp_path / "w").result
    assert dup["failed"] and "given twice" in dup["msg"]
    with pytest.raises(GpufleetError) as err:
        lora.resolve_params(_container_params(str(tmp_path / "m" / "abc"), [{"name": "y", "repo_id": "org/y"}]))
    assert err.value.details["failure_class"] == "lora_missing" and "run gpufleet.vllm.model_sync" in err.value.msg


def test_a_fleet_deployment_with_hub_adapters(fake_hub, fake_runtime, tmp_path):
    """The fleet's path (plan -> fleet_apply on one host, the in-memory engine): the adapter is synced beside the hub
    model with it, the container serves the installed revision (argv, read-only mount); a second apply is a no-op."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.apply import apply_host, validated
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.payload import fleet_plan
    from ansible_collections.gpufleet.vllm.plugins.modules.fleet_apply import ARGUMENT_SPEC

    base, sql = f"org/base-{_uid()}", f"org/sql-lora-{_uid()}"
    base_sha = fake_hub.make_repo(base, shards=1)
    a1 = fake_hub.make_adapter_repo(sql, seed=1)
    gpus = [{"index": 0, "uuid": "GPU-0", "memory_total_mib": 81920, "memory_free_mib": 81920}]
    hosts = {"h": {"reachable": True, "gpus": gpus, "models_root": str(tmp_path / "models")}}
    dep = {"name": "m", "model": base, "vllm_version": "0.10.2", "model_size_bytes": 10**6,
           "lora_modules": [{"name": "sql", "repo_id": sql}]}  # fmt: skip
    (spec,) = fleet_plan(hosts, [dep])["hosts"]["h"]
    spec["container"].update(hf_cache_dir=str(tmp_path / "hf"), compile_cache_dir=str(tmp_path / "cc"))
    created = []
    create = fake_runtime.create
    fake_runtime.create = lambda s: created.append(s) or create(s)
    args = {"replicas": [spec], "manifest_dir": str(tmp_path / "manifests"), "hf_endpoint": fake_hub.url}
    out, errors = apply_host(validated("fleet_apply", ARGUMENT_SPEC, args), runtime=fake_runtime)
    assert errors == [] and out["records"][0]["changed"], out
    installed = str(tmp_path / "models" / "m" / "loras" / "sql" / a1)
    assert (Path(installed) / "adapter_config.json").is_file()
    (c,) = created
    assert f"sql={installed}" in c.command and (installed, installed, "ro") in c.mounts
    assert str(tmp_path / "models" / "m" / base_sha) in c.command  # the model's revision beside it
    again, errors = apply_host(validated("fleet_apply", ARGUMENT_SPEC, args), runtime=fake_runtime)
    assert errors == [] and again["changed"] is False and len(created) == 1
