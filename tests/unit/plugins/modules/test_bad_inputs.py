"""Issue #16: bad input to any module (model_sync aside) is ONE clear error - what is wrong and how to fix it - before
anything on the host changes: no traceback, the engine's containers and the file tree exactly as before.

Each case runs the module's own main() (fleet_plan: its schema, the action plugin's first step) against the in-memory
engine (tests/fixtures/fake_runtime.py) with one running deployment ``chat`` and a manifest directory holding
``chat.json`` and, beside it, a ``victim.json`` that no input may reach.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import info as info_utils
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import apply as fleet_apply_utils
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import validate_deployments
from ansible_collections.gpufleet.vllm.plugins.modules import (
    fleet_apply,
    fleet_report,
    gpu_facts,
    monitoring_config,
    vllm_container,
    vllm_deployment_info,
    vllm_image,
)
from fixtures.module_args import patch_module_args

SECRET = "sk-bad-input-CANARY-77"
MODULES = {
    "vllm_container": vllm_container,
    "vllm_image": vllm_image,
    "gpu_facts": gpu_facts,
    "vllm_deployment_info": vllm_deployment_info,
    "fleet_apply": fleet_apply,
    "monitoring_config": monitoring_config,
    "fleet_report": fleet_report,
}
# A fix is named in every message: one of these words (with the specific fragments each case asserts); Ansible's
# own type/choice messages ("unable to convert to int", "mutually exclusive") name the fix by what they expect.
FIX_WORDS = re.compile(
    r"\b(use|give|set|pick|choose|remove|lower|raise|must|one of|expected|required|leave|put|fix"
    r"|unable to convert to|mutually exclusive)\b",
    re.I,
)


def C(module: str, args: dict[str, Any], *fragments: str) -> Any:
    return pytest.param(module, args, fragments, id=f"{module}:{json.dumps(args, sort_keys=True)[:70]}")


def container(**kw: Any) -> dict[str, Any]:
    base = {"name": "chat", "image": "vllm/vllm-openai:v0.10.2", "model": "TMP/model", "gpus": ["0"]}
    base.update(kw)
    return base


def replica(**container_kw: Any) -> dict[str, Any]:
    return {
        "name": "chat",
        "deployment": "chat",
        "replica": 0,
        "host": "h",
        "port": 8000,
        "image": "vllm/vllm-openai:v0.10.2",
        "model_sync": {"name": "chat", "source": "local", "src": "TMP/model", "models_root": "TMP/root"},
        "container": container(**container_kw),
    }


def dep(**kw: Any) -> dict[str, Any]:
    base = {"name": "chat", "model": "/models/chat"}
    base.update(kw)
    return base


CONTAINER_CASES = [
    C("vllm_container", container(port=0), "port: 0 must be in [1, 65535]", "pick a free TCP port"),
    C("vllm_container", container(port=70000), "port: 70000 must be in [1, 65535]"),
    C("vllm_container", container(port=-1), "port: -1 must be in [1, 65535]"),
    C("vllm_container", container(port="eighty"), "port", "int"),
    C("vllm_container", container(tensor_parallel_size=0), "tensor_parallel_size: 0 must be >= 1"),
    C("vllm_container", container(pipeline_parallel_size=0), "pipeline_parallel_size: 0 must be >= 1"),
    C("vllm_container", container(gpu_memory_utilization=0), "gpu_memory_utilization: 0.0 must be in (0, 1]"),
    C("vllm_container", container(gpu_memory_utilization=-0.2), "gpu_memory_utilization: -0.2", "e.g. 0.9"),
    C("vllm_container", container(gpu_memory_utilization=1.5), "gpu_memory_utilization: 1.5 must be in (0, 1]"),
    C("vllm_container", container(max_model_len=0), "max_model_len: 0 must be >= 1", "leave it unset"),
    C("vllm_container", container(max_num_seqs=0), "max_num_seqs: 0 must be >= 1"),
    C("vllm_container", container(max_num_batched_tokens=-5), "max_num_batched_tokens: -5 must be >= 1"),
    C("vllm_container", container(swap_space=-1), "swap_space: -1.0 must be >= 0"),
    C("vllm_container", container(cpu_offload_gb=-2), "cpu_offload_gb: -2.0 must be >= 0"),
    C("vllm_container", container(max_lora_rank=0), "max_lora_rank: 0 must be >= 1"),
    C("vllm_container", container(max_loras=0), "max_loras: 0 must be >= 1"),
    C("vllm_container", container(wait_timeout=0), "wait_timeout: 0 must be >= 1"),
    C("vllm_container", container(stop_timeout=-1), "stop_timeout: -1 must be >= 0"),
    C("vllm_container", container(env={"BAD-NAME": "x"}), "env: variable name 'BAD-NAME' is not valid", "letters"),
    C("vllm_container", container(env={"A=B": "x"}), "env: variable name 'A=B' is not valid"),
    C("vllm_container", container(env={"MY TOKEN": "x"}), "env: variable name 'MY TOKEN' is not valid"),
    C("vllm_container", container(env={"": "x"}), "env: variable name '' is not valid"),
    C("vllm_container", container(secret_env={"MY TOKEN": SECRET}), "secret_env: variable name 'MY TOKEN'"),
    C("vllm_container", container(env={"9LIVES": "x"}), "env: variable name '9LIVES'"),
    C("vllm_container", container(env={"VLLM_API_KEY": SECRET}), "env: VLLM_API_KEY holds a secret", "api_key"),
    C("vllm_container", container(env={"HF_TOKEN": SECRET}), "env: HF_TOKEN holds a secret", "hf_token"),
    C("vllm_container", container(hf_cache_dir="cache"), "hf_cache_dir: 'cache' is not an absolute path"),
    C("vllm_container", container(compile_cache_dir="./cc"), "compile_cache_dir: './cc' is not an absolute path"),
    C("vllm_container", container(manifest_dir="manifests"), "manifest_dir: 'manifests' is not an absolute path"),
    C(
        "vllm_container",
        container(lora_modules=[{"name": "sql", "path": "loras/sql"}]),
        "lora_modules[0].path: 'loras/sql' is not an absolute path",
    ),
    C("vllm_container", container(extra_args=["--api-key", SECRET]), "--api-key carries a secret", "api_key option"),
    C("vllm_container", container(extra_args=[f"--api_key={SECRET}"]), "--api-key carries a secret"),
    C("vllm_container", container(extra_args=["--hf-token", SECRET]), "--hf-token carries a secret", "hf_token"),
    C("vllm_container", container(extra_args=["--api-k", SECRET]), "--api-key carries a secret"),
    C("vllm_container", container(name="../victim"), "name '../victim' is not a valid deployment name", "letters"),
    C("vllm_container", {"name": "../victim", "state": "absent", "manifest_dir": "TMP/manifests"}, "../victim"),
    C("vllm_container", {"name": "a/b", "state": "absent"}, "name 'a/b' is not a valid deployment name"),
    C("vllm_container", container(name="-chat"), "name '-chat' is not a valid deployment name"),
    C("vllm_container", container(name="chat space"), "name 'chat space' is not a valid deployment name"),
    C("vllm_container", container(name="x" * 200), "is not a valid deployment name", "at most 128"),
    C("vllm_container", container(gpus=["zero"]), "gpus: 'zero' is neither a GPU index nor a GPU-/MIG- UUID"),
    C("vllm_container", container(gpus=["all", "0"]), "'all' cannot be combined"),
    C("vllm_container", container(mounts=["data:/data"]), "mounts: 'data:/data' is not SRC:DEST[:ro|rw]"),
    C("vllm_container", container(state="running"), "state", "one of"),
    C("vllm_container", container(runtime="lxc"), "runtime", "one of"),
    C("vllm_container", container(dtype="int3"), "dtype", "one of"),
    C("vllm_container", container(serve_for="soon"), "serve_for"),
    C("vllm_container", {"name": "chat", "model": "TMP/model"}, "give image and model together"),
    C("vllm_container", container(extra_args=["--no-such-flag"]), "bad_args", "--no-such-flag"),
    C("vllm_container", container(max_model_len=4096), "max_model_len 4096 is more than the model's limit 2048"),
    C("vllm_container", container(sleep_mode=True, host="10.0.0.5"), "dev endpoints", "leave host unset"),
]
IMAGE_CASES = [
    C("vllm_image", {"version": "0.10.2", "timeout": 0}, "timeout: 0 must be >= 1"),
    C("vllm_image", {"version": "0.10.2", "release_cache_ttl": -1}, "release_cache_ttl: -1 must be >= 0"),
    C("vllm_image", {"version": "0.10.2", "pull": "sometimes"}, "pull", "one of"),
    C("vllm_image", {"image": "Bad Image:tag"}, "image"),
    C("vllm_image", {"version": "0.10.2", "runtime": "rkt"}, "runtime", "one of"),
    C("vllm_image", {"version": "0.10.2", "extra_pip_packages": ["requests; rm -rf /"]}, "extra_pip_packages"),
    C("vllm_image", {"version": "0.10.2", "plugins": ["relative/plugin"]}, "plugins", "absolute"),
    C("vllm_image", {"version": "0.10.2", "release_cache": "cache.json"}, "release_cache", "absolute"),
]
GPU_CASES = [
    C("gpu_facts", {"timeout": 0}, "timeout: 0.0 must be > 0"),
    C("gpu_facts", {"timeout": -3}, "timeout: -3.0 must be > 0"),
    C("gpu_facts", {"min_gpus": -1}, "min_gpus: -1 must be >= 0"),
    C("gpu_facts", {"max_utilization_pct": 150}, "max_utilization_pct: 150 must be in [0, 100]"),
    C("gpu_facts", {"min_free_memory_mib": -1}, "min_free_memory_mib: -1 must be >= 0"),
    C("gpu_facts", {"max_temperature_c": -5}, "max_temperature_c: -5 must be in [0, 150]"),
    C("gpu_facts", {"source": "cuda"}, "source", "one of"),
    C("gpu_facts", {"cdi_spec_dirs": ["cdi"]}, "cdi_spec_dirs", "absolute"),
]
INFO_CASES = [
    C("vllm_deployment_info", {"name": "a", "names": ["b"]}, "mutually exclusive"),
    C("vllm_deployment_info", {"runtime": "lxc"}, "runtime", "one of"),
    C("vllm_deployment_info", {"name": "../x"}, "name '../x' is not a valid deployment name"),
    C("vllm_deployment_info", {"names": ["ok", "a/b"]}, "names: 'a/b' is not a valid deployment name"),
    C("vllm_deployment_info", {"probe": "sometimes"}, "probe", "bool"),
]
APPLY_CASES = [
    C("fleet_apply", {"replicas": [replica(port=0)]}, "chat: vllm_container: port: 0 must be in [1, 65535]"),
    C("fleet_apply", {"replicas": [replica(env={"A=B": "1"})]}, "env: variable name 'A=B'"),
    C("fleet_apply", {"replicas": [replica(extra_args=["--api-key", SECRET])]}, "--api-key carries a secret"),
    C("fleet_apply", {"replicas": [replica(gpu_memory_utilization=2)]}, "gpu_memory_utilization: 2.0"),
    C("fleet_apply", {"replicas": [replica(max_model_len="many")]}, "max_model_len", "int"),
    C("fleet_apply", {"replicas": [replica(name="../x")]}, "not a valid deployment name"),
    C("fleet_apply", {"removals": [{"name": "../victim"}]}, "removal name '../victim' is not a valid deployment name"),
    C("fleet_apply", {"removals": [{"name": ""}]}, "removal name is required"),
    C("fleet_apply", {"replicas": [replica()], "wait_timeout": 0}, "wait_timeout: 0 must be >= 1"),
    C("fleet_apply", {"replicas": [replica()], "manifest_dir": "rel"}, "manifest_dir: 'rel' is not an absolute path"),
    C("fleet_apply", {"state": "melted"}, "state", "one of"),
    C("fleet_apply", {"replicas": "chat"}, "replicas", "unable to convert to dict"),
]
MONITORING_CASES = [
    C("monitoring_config", {"targets_dir": "targets"}, "targets_dir: 'targets' is not an absolute path"),
    C("monitoring_config", {"targets_dir": "TMP/t", "scrape_interval": "soon"}, "scrape_interval: 'soon'", "e.g. 30s"),
    C("monitoring_config", {"targets_dir": "TMP/t", "node_agent_port": 0}, "node_agent_port: 0 must be in [1, 65535]"),
    C("monitoring_config", {"targets_dir": "TMP/t", "node_agent_port": 70000}, "node_agent_port: 70000"),
    C("monitoring_config", {"targets_dir": "TMP/t", "reload_timeout": 0}, "reload_timeout: 0 must be >= 1"),
    C("monitoring_config", {"targets_dir": "TMP/t", "config_path": "prom.yml"}, "config_path: 'prom.yml'"),
    C("monitoring_config", {"targets_dir": "TMP/t", "config_mode": "half"}, "config_mode", "one of"),
    C("monitoring_config", {"targets_dir": "TMP/t", "job_name": "bad job"}, "job_name"),
    C("monitoring_config", {}, "targets_dir", "required"),
]
REPORT_CASES = [
    C("fleet_report", {"kind": "weekly"}, "kind", "one of"),
    C("fleet_report", {}, "kind", "required"),
    C("fleet_report", {"kind": "converge", "plan": "not a plan"}, "plan", "dict"),
    C("fleet_report", {"kind": "converge", "dest": "report.json"}, "dest", "absolute"),
]
ALL_CASES = CONTAINER_CASES + IMAGE_CASES + GPU_CASES + INFO_CASES + APPLY_CASES + MONITORING_CASES + REPORT_CASES


def _fill(value: Any, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.replace("TMP", str(tmp))
    if isinstance(value, list):
        return [_fill(v, tmp) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, tmp) for k, v in value.items()}
    return value


def _tree(root: Path) -> dict[str, str]:
    """Every directory and file under root with its content hash; the converge locks (state_dir/locks, one small
    file per deployment name, held only while a run converges it) are not state and are left out."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "locks"]
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture
def bed(tmp_path: Path, fake_runtime: Any, fake_gpus: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    fake_gpus("2x-a100-80gb")
    root = tmp_path / "host"
    model = root / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 2048})
    )
    (model / "tokenizer.json").write_text("{}")
    manifests = root / "manifests"
    manifests.mkdir()
    (manifests / "chat.json").write_text("{}")
    (root / "victim.json").write_text('{"keep": true}')
    fake_runtime.c["c1"] = {
        "name": "gpufleet-chat",
        "status": "running",
        "labels": {"gpufleet.managed": "true", "gpufleet.deployment": "chat"},
        "env": {},
    }
    for mod in (vllm_container, vllm_image):
        monkeypatch.setattr(mod, "get_runtime", lambda *a, **kw: fake_runtime)
    monkeypatch.setattr(fleet_apply_utils, "get_runtime", lambda *a, **kw: fake_runtime)
    monkeypatch.setattr(info_utils, "get_runtime", lambda *a, **kw: fake_runtime)
    monkeypatch.chdir(root)  # a relative path would land in the snapshot
    return {"root": root, "rt": fake_runtime}


def _run(module: Any, args: dict[str, Any], capsys: Any) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit) as exc:
        module.main()
    out = capsys.readouterr().out
    result = json.loads(out)
    result["rc"] = exc.value.code
    result["raw"] = out
    return result


def test_at_least_80_cases_over_every_module():
    modules = {case.values[0] for case in ALL_CASES}
    assert len(ALL_CASES) >= 80
    assert modules == set(MODULES)  # + fleet_plan's schema below


@pytest.mark.parametrize("module, args, fragments", ALL_CASES)
def test_bad_input_is_one_clear_error_and_changes_nothing(module, args, fragments, bed, capsys):
    root, rt = bed["root"], bed["rt"]
    args = _fill(args, root)
    if module in ("vllm_container",):
        args.setdefault("manifest_dir", str(root / "manifests"))
        args.setdefault("hf_cache_dir", str(root / "hf"))
        args.setdefault("compile_cache_dir", str(root / "cc"))
    if module == "fleet_apply":
        args.setdefault("manifest_dir", str(root / "manifests"))
        for r in args.get("replicas") or []:
            if isinstance(r, dict):
                r["container"].setdefault("hf_cache_dir", str(root / "hf"))
                r["container"].setdefault("compile_cache_dir", str(root / "cc"))
    before_engine = json.dumps(rt.c, sort_keys=True)
    before_tree = _tree(root.parent)
    result = _run(MODULES[module], args, capsys)
    assert result["rc"] == 1 and result.get("failed") is True, result
    msg = result["msg"]
    assert "Traceback" not in result["raw"] and "exception" not in result
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    assert FIX_WORDS.search(msg), msg
    assert SECRET not in result["raw"]
    assert json.dumps(rt.c, sort_keys=True) == before_engine
    assert rt.calls == []
    assert _tree(root.parent) == before_tree


PLAN_CASES = [
    ({"engine_options": {"max_model_len": "many"}}, "max_model_len"),
    ({"engine_options": {"max_model_len": 0}}, "max_model_len: 0 must be >= 1"),
    ({"engine_options": {"enforce_eager": "maybe"}}, "enforce_eager"),
    ({"engine_options": {"swap_space": -1}}, "swap_space: -1.0 must be >= 0"),
    ({"engine_options": {"hf_cache_dir": "cache"}}, "hf_cache_dir: 'cache' is not an absolute path"),
    ({"engine_options": {"env": {"A": "1"}}}, "engine_options.env: is set by the deployment field env"),
    ({"engine_options": {"extra_args": ["--x"]}}, "engine_options.extra_args: is set by the deployment field"),
    ({"engine_options": {"wait_timeout": 10}}, "engine_options.wait_timeout: is set by the role variable"),
    ({"engine_options": {"port": 8000}}, "engine_options.port: is set by the deployment field port"),
    ({"engine_options": "fast"}, "engine_options: must be a mapping"),
    ({"extra_args": ["--api-key", SECRET]}, "--api-key carries a secret"),
    ({"env": {"BAD-NAME": "1"}}, "env.BAD-NAME"),
    ({"port": 0}, "port: must be an integer in 1..65535"),
    ({"tensor_parallel_size": 0}, "tensor_parallel_size: must be an integer >= 1"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization: must be a number in (0, 1]"),
    ({"name": "../victim"}, "name: is required: letters, digits"),
    ({"engine_options": {"sleep_mode": True, "host": "10.1.1.1"}}, "would open vLLM's dev endpoints"),
]


@pytest.mark.parametrize("fields, fragment", PLAN_CASES, ids=[json.dumps(c[0])[:60] for c in PLAN_CASES])
def test_fleet_plan_schema_refuses_bad_deployments_with_one_error(fields, fragment):
    with pytest.raises(GpufleetError) as err:
        validate_deployments([dep(**fields)])
    msg = str(err.value)
    assert fragment in msg and SECRET not in msg
    assert FIX_WORDS.search(msg) or "must" in msg


def test_a_second_converge_of_the_same_name_is_refused_while_the_first_runs(bed, capsys):
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container.lock import converge_lock

    root, rt = bed["root"], bed["rt"]
    args = _fill(container(manifest_dir="TMP/manifests", hf_cache_dir="TMP/hf", compile_cache_dir="TMP/cc"), root)
    before = json.dumps(rt.c, sort_keys=True)
    with converge_lock(str(root), "chat"):  # the first run (flock: a second open file conflicts, even in-process)
        result = _run(vllm_container, args, capsys)
    assert result["rc"] == 1 and result["failure_class"] == "locked"
    assert "another converge of chat is running on this host" in result["msg"] and "run again" in result["msg"]
    assert json.dumps(rt.c, sort_keys=True) == before and rt.calls == []
