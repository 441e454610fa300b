"""fleet_apply: one host's part of the plan in one run, against the in-memory engine (tests/fixtures/fake_runtime.py)
and real model directories: records, no-op, rollout stop at the first failing container, failed model sync, removals,
secrets, check mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import summary as fr_summary
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.apply import apply_host, gather_host, validated
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import deployment_secrets
from ansible_collections.gpufleet.vllm.plugins.modules.fleet_apply import ARGUMENT_SPEC

CANARY = "apply-canary-4d2e9b"


def model_dir(root: Path, name: str, config: bool = True) -> Path:
    d = root / "models" / name
    d.mkdir(parents=True)
    if config:
        (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (d / "tokenizer.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return d


def replica(tmp: Path, deployment: str, index: int, port: int, **container: Any) -> dict[str, Any]:
    path = str(tmp / "models" / deployment)
    name = f"{deployment}-{index}"
    return {
        "name": name,
        "deployment": deployment,
        "replica": index,
        "host": "h",
        "port": port,
        "image": "vllm/vllm-openai:v0.10.2",
        "vllm_version": None,
        "model_path": path,
        "model_sync": {
            "name": deployment,
            "source": "local",
            "src": path,
            "allowed_dirs": [str(tmp / "models")],
            "link": True,
            "models_root": str(tmp / "root"),
            "require_tokenizer": False,
        },
        "container": {
            "name": name,
            "state": "started",
            "model": path,
            "port": port,
            "host": "0.0.0.0",
            "hf_cache_dir": str(tmp / "hf"),
            "compile_cache_dir": str(tmp / "cc"),
            **container,
        },
    }


def params(tmp: Path, replicas: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return validated(
        "fleet_apply",
        ARGUMENT_SPEC,
        {"replicas": replicas, "address": "10.0.0.7", "manifest_dir": str(tmp / "manifests"), **kw},
    )


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    model_dir(tmp_path, "chat")
    model_dir(tmp_path, "emb")
    return tmp_path


def test_first_apply_then_noop(tmp: Path, fake_runtime: Any) -> None:
    reps = [replica(tmp, "chat", 0, 8000), replica(tmp, "chat", 1, 8001), replica(tmp, "emb", 0, 8100)]
    out, errors = apply_host(params(tmp, reps), runtime=fake_runtime)
    assert errors == [] and out["changed"] is True and out["failed_count"] == 0
    assert [(r["kind"], r["name"], r["changed"]) for r in out["records"]] == [
        ("replica", "chat-0", True),
        ("replica", "chat-1", True),
        ("replica", "emb-0", True),
    ]
    assert out["records"][0]["endpoint"] == "http://10.0.0.7:8000"
    assert sorted(c["name"] for c in fake_runtime.c.values()) == [
        "gpufleet-chat-0",
        "gpufleet-chat-1",
        "gpufleet-emb-0",
    ]
    headers = [d["before_header"] for d in out["diff"]]
    assert headers == [
        f"{w} (before)" for w in ("model chat", "model emb", "gpufleet-chat-0", "gpufleet-chat-1", "gpufleet-emb-0")
    ]
    calls = list(fake_runtime.calls)
    again, errors = apply_host(params(tmp, reps), runtime=fake_runtime)
    assert errors == [] and again["changed"] is False and fake_runtime.calls == calls
    assert all(r["changed"] is False and r["failed"] is False for r in again["records"])
    assert again["diff"] == []


def test_check_mode_touches_nothing(tmp: Path, fake_runtime: Any) -> None:
    out, errors = apply_host(params(tmp, [replica(tmp, "chat", 0, 8000)]), check_mode=True, runtime=fake_runtime)
    assert errors == [] and out["changed"] is True and out["records"][0]["changed"] is True
    assert fake_runtime.calls == [] and not (tmp / "manifests").exists()


def test_first_failing_container_stops_the_host_and_is_rolled_back(tmp: Path, fake_runtime: Any) -> None:
    reps = [replica(tmp, "chat", 0, 8000), replica(tmp, "chat", 1, 8001), replica(tmp, "emb", 0, 8100)]
    apply_host(params(tmp, reps), runtime=fake_runtime)
    reps[1]["container"]["env"] = {"FAIL": "1"}
    reps[2]["container"]["max_model_len"] = 4096
    out, errors = apply_host(params(tmp, reps), runtime=fake_runtime)
    recs = {r["name"]: r for r in out["records"]}
    assert recs["chat-0"]["failed"] is False and recs["chat-0"]["changed"] is False
    assert recs["chat-1"]["failed"] is True and recs["chat-1"]["failure_class"] == "gpu_oom"
    assert recs["chat-1"]["failed_step"] == "vllm_container" and recs["chat-1"]["rolled_back"] is True
    assert "emb-0" not in recs  # not run: the host's rollout stopped at chat-1
    assert len(errors) == 1 and errors[0].startswith("chat-1: gpu_oom")
    # The old chat-1 serves again; emb-0 kept its old spec.
    running = {c["name"]: c for c in fake_runtime.c.values() if c["status"] == "running"}
    assert "gpufleet-chat-1" in running and "FAIL" not in running["gpufleet-chat-1"]["env"]
    summary = fr_summary.converge_summary({"hosts": {"h": reps}, "remove": {}}, {"h": out["records"]})
    rows = {r["name"]: r["status"] for r in summary["deployments"]["chat"]["replicas"]}
    assert rows == {"chat-0": "ok", "chat-1": "failed"}
    assert summary["deployments"]["emb"]["replicas"][0]["status"] == "not_run"
    assert summary["failed_hosts"] == {"h": ["chat-1"]}


def test_failed_model_sync_fails_its_replicas_only(tmp: Path, fake_runtime: Any) -> None:
    model_dir(tmp, "broken", config=False)
    reps = [replica(tmp, "broken", 0, 8000), replica(tmp, "emb", 0, 8100)]
    out, errors = apply_host(params(tmp, reps), runtime=fake_runtime)
    recs = {r["name"]: r for r in out["records"]}
    assert recs["broken-0"]["failed"] and recs["broken-0"]["failed_step"] == "model_sync"
    assert "config.json" in recs["broken-0"]["hint"]
    assert recs["emb-0"]["failed"] is False and recs["emb-0"]["changed"] is True
    assert [c["name"] for c in fake_runtime.c.values()] == ["gpufleet-emb-0"]
    assert len(errors) == 1 and errors[0].startswith("broken-0:")


def test_removals_first_and_secrets_reach_only_the_container(tmp: Path, fake_runtime: Any) -> None:
    apply_host(params(tmp, [replica(tmp, "emb", 0, 8100)]), runtime=fake_runtime)
    deployments = [
        {"name": "chat", "api_key": CANARY + "-key", "secret_env": {"CANARY": CANARY}},
        {"name": "emb", "env": {"A": "1"}},
    ]
    secrets = deployment_secrets(deployments)
    assert secrets == {"chat": {"api_key": CANARY + "-key", "secret_env": {"CANARY": CANARY}}}
    p = params(tmp, [replica(tmp, "chat", 0, 8000)], removals=[{"name": "emb-0"}], secrets=secrets)
    out, errors = apply_host(p, runtime=fake_runtime)
    assert errors == []
    assert [(r["kind"], r["name"], r["changed"]) for r in out["records"]] == [
        ("remove", "emb-0", True),
        ("replica", "chat-0", True),
    ]
    (chat,) = fake_runtime.c.values()
    assert chat["name"] == "gpufleet-chat-0" and chat["env"]["CANARY"] == CANARY
    assert CANARY not in json.dumps(out["records"]) + json.dumps(out["diff"], default=str)
    assert CANARY not in json.dumps(chat["labels"])
    assert CANARY not in (tmp / "manifests" / "chat-0.json").read_text()


def test_a_bad_step_argument_is_one_error_naming_the_replica(tmp: Path, fake_runtime: Any) -> None:
    rep = replica(tmp, "chat", 0, 8000, max_model_len="many")
    out, errors = apply_host(params(tmp, [rep]), runtime=fake_runtime)
    assert out["records"][0]["failed"] and errors[0].startswith("chat-0: vllm_container:")
    assert "max_model_len" in errors[0] and fake_runtime.calls == []
    with pytest.raises(GpufleetError, match="replicas"):
        validated("fleet_apply", ARGUMENT_SPEC, {"replicas": "x"})


def test_gathered_lists_what_the_apply_left(tmp: Path, fake_runtime: Any) -> None:
    p = params(tmp, [replica(tmp, "chat", 0, 8000), replica(tmp, "emb", 0, 8100)])
    assert gather_host(p, runtime=fake_runtime)["deployments"] == []
    apply_host(p, runtime=fake_runtime)
    calls = list(fake_runtime.calls)
    got = gather_host(p, runtime=fake_runtime)
    assert [(d["name"], d["state"], d["port"]) for d in got["deployments"]] == [
        ("chat-0", "running", 8000),
        ("emb-0", "running", 8100),
    ]
    assert "gpus" in got and got["gpu_source"] in ("nvml", "nvidia_smi", "none")
    assert fake_runtime.calls == calls  # read-only
    # What model_sync recorded under models_root: the plan's VRAM estimate for deployments that give no size.
    sizes = gather_host({**p, "models_root": str(tmp / "root")}, runtime=fake_runtime)["model_sizes"]
    assert sorted(sizes) == ["chat", "emb"] and sizes["chat"]["source"] == "local"
    assert sizes["chat"]["src"] == str(tmp / "models" / "chat") and sizes["chat"]["weight_bytes"] > 0
    # A replica guard of an earlier run (role deployments stops it): its configuration's existence, asked for only.
    assert "replica_guard_config_exists" not in got
    guard = tmp / "replica-guard" / "haproxy.cfg"
    assert (
        gather_host({**p, "replica_guard_config": str(guard)}, runtime=fake_runtime)["replica_guard_config_exists"]
        is False
    )
    guard.parent.mkdir()
    guard.write_text("global\n")
    assert (
        gather_host({**p, "replica_guard_config": str(guard)}, runtime=fake_runtime)["replica_guard_config_exists"]
        is True
    )


def test_the_revision_model_sync_installed_is_served_and_hashed():
    """Issue #15: hub and URL models are served from the revision directory model_sync returned; every model's
    revision id becomes the container's model_revision (a local checkpoint stays served where it is)."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.apply import with_revision

    sync_res = {"path": "/m/chat/" + "a" * 40, "revision_id": "a" * 40}
    hub = with_revision({"model": "/m/chat"}, {"model_sync": {"source": "hf"}}, sync_res)
    assert hub == {"model": "/m/chat/" + "a" * 40, "model_revision": "a" * 40}
    local = with_revision(
        {"model": "/ckpt/x"}, {"model_sync": {"source": "local"}}, {"path": "/m/x/local-1", "revision_id": "local-1"}
    )
    assert local == {"model": "/ckpt/x", "model_revision": "local-1"}
    flat = with_revision(
        {"model": "/m/chat"}, {"model_sync": {"source": "hf"}}, {"path": "/m/chat", "revision_id": None}
    )
    assert flat == {"model": "/m/chat"}  # a flat install of an older release: served and hashed as before


def test_a_derived_image_is_built_from_the_resolved_one_and_served(tmp: Path, fake_runtime: Any) -> None:
    plugin = tmp / "plug.py"
    plugin.write_text("X = 1\n")
    build = {"extra_pip_packages": ["vllm-plugin-x==1.0"], "plugins": [str(plugin)], "pip_no_index": True}
    reps = [replica(tmp, "chat", 0, 8000), {**replica(tmp, "emb", 0, 8100), "image_build": build}]
    created: dict[str, str] = {}
    create = fake_runtime.create

    def recording(spec: Any) -> str:
        created[spec.name] = spec.image
        return create(spec)

    fake_runtime.create = recording
    out, errors = apply_host(params(tmp, reps), runtime=fake_runtime)
    assert errors == [] and out["failed_count"] == 0
    assert created["gpufleet-chat-0"] == "vllm/vllm-openai:v0.10.2"
    assert created["gpufleet-emb-0"].startswith("gpufleet/vllm-openai:v0.10.2-")  # content-hashed derived tag
    # A plugin file missing on the host fails that replica at the image step, the other replica still runs.
    missing = {**build, "plugins": [str(tmp / "gone.py")]}
    reps[1] = {**reps[1], "image_build": missing}
    out, errors = apply_host(params(tmp, reps), runtime=fake_runtime)
    rec = next(r for r in out["records"] if r["name"] == "emb-0")
    assert rec["failed"] and rec["failed_step"] == "vllm_image" and "gone.py" in rec["hint"]
    assert len(errors) == 1


def test_check_mode_with_a_derived_image_to_build(tmp: Path, fake_runtime: Any) -> None:
    """Check mode on a host without the derived image: the replica would be created once it is built (no failure
    for the image vllm_container would not find)."""
    plugin = tmp / "plug.py"
    plugin.write_text("X = 1\n")
    inspect = fake_runtime.inspect_image
    fake_runtime.inspect_image = lambda ref: None if ref.startswith("gpufleet/") else inspect(ref)
    rep = {**replica(tmp, "emb", 0, 8100), "image_build": {"extra_pip_packages": ["x==1"], "plugins": [str(plugin)]}}
    out, errors = apply_host(params(tmp, [rep]), check_mode=True, runtime=fake_runtime)
    (rec,) = out["records"]
    assert errors == [] and rec["changed"] is True and rec["failed"] is False and "pulled first" in rec["hint"]
    assert fake_runtime.calls == []


def test_image_registry_makes_derived_images_built_once_and_pulled(
    tmp: Path, fake_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With image_registry, vllm_image gets the registry's derived repository and push (the others pull it)."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import apply as fleet_apply

    seen: list[dict[str, Any]] = []
    real = fleet_apply.ensure_image

    def recording(p: dict[str, Any], check_mode: bool, factory: Any) -> Any:
        seen.append(p)
        return real(p, check_mode, factory)

    monkeypatch.setattr(fleet_apply, "ensure_image", recording)
    plugin = tmp / "plug.py"
    plugin.write_text("X = 1\n")
    reps = [replica(tmp, "chat", 0, 8000), {**replica(tmp, "emb", 0, 8100), "image_build": {"plugins": [str(plugin)]}}]
    out, errors = apply_host(params(tmp, reps, image_registry="reg.local:5000/"), runtime=fake_runtime)
    assert errors == [] and out["failed_count"] == 0
    plain, derived = seen
    assert (plain["push"], plain["derived_repository"]) == (False, "gpufleet/vllm-openai")
    assert (derived["push"], derived["derived_repository"]) == (True, "reg.local:5000/gpufleet/vllm-openai")
