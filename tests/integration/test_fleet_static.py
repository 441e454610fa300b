"""Static checks of the fleet part (no test bed needed): the role's files kept in step with each other and with
vllm_container, the inventories validate, the playbooks parse, and the pure report functions
(plugins/module_utils/_fleet/report.py) behave."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import redeploy as fr_redeploy
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import report as fr
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import status as fr_status
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import summary as fr_summary
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import validate_deployments

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "deployments"
SECRETS = {"api_key", "hf_token", "secret_env"}


def vllm_container_options() -> set[str]:
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as container_spec

    return set(container_spec.argument_spec())


def test_redeploy_takes_secrets_from_the_declared_deployment_only() -> None:
    (task,) = [
        t for t in yaml.safe_load((ROLE / "tasks" / "redeploy.yml").read_text()) if "gpufleet.vllm.vllm_container" in t
    ]
    args = task["gpufleet.vllm.vllm_container"]
    assert args["from_manifest"] == "{{ _deployments_redeploy.manifest }}"
    for key in SECRETS:  # never from the manifest (it has none) nor from the overrides
        assert "_deployments_secrets" in args[key]


def test_engine_options_allowlist_names_real_options() -> None:
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import engine_option_names

    allowed = engine_option_names()
    assert set(allowed) <= vllm_container_options()
    # Placement-owned and secret options are not engine options.
    assert not set(allowed) & (SECRETS | {"name", "state", "runtime", "image", "model", "port", "gpus"})


def test_defaults_and_argument_specs_in_step() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    documented = {k for spec in specs.values() for k in spec.get("options", {})}
    assert set(defaults) == documented
    for spec in specs.values():
        for key, opt in spec.get("options", {}).items():
            if "default" in opt:
                assert opt["default"] == defaults[key], key
    # Every tasks file an entry point names exists.
    for entry in specs:
        assert (ROLE / "tasks" / f"{entry}.yml").exists(), entry


@pytest.mark.parametrize("inventory", ["sim", "example"])
def test_inventory_deployments_validate(inventory: str) -> None:
    files = sorted((ROOT / "inventories" / inventory / "group_vars").rglob("*.yml"))
    deployments = None
    for f in files:
        text = f.read_text()
        if text.startswith("$ANSIBLE_VAULT"):
            continue
        data = yaml.safe_load(text) or {}
        deployments = data.get("gpufleet_deployments", deployments)
    assert deployments, f"inventories/{inventory} declares no gpufleet_deployments"
    # Templated paths are checked as the absolute paths they render to.
    rendered = yaml.safe_load(yaml.safe_dump(deployments).replace("{{ gpufleet_sim_root }}", str(ROOT)))
    names = [d["name"] for d in validate_deployments(rendered)]
    assert len(names) == len(deployments)


def test_example_vault_is_encrypted() -> None:
    vault = ROOT / "inventories" / "example" / "group_vars" / "gpu_hosts" / "vault.yml"
    assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")


@pytest.mark.parametrize("playbook", ["converge", "status", "stop", "redeploy"])
def test_playbook_syntax(playbook: str, ansible_env: dict[str, str]) -> None:
    proc = subprocess.run(
        ["ansible-playbook", "--syntax-check", "-i", "localhost,", str(ROOT / "playbooks" / f"{playbook}.yml")],
        env=ansible_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _plan() -> dict:
    spec = {
        "deployment": "chat",
        "replica": 0,
        "name": "chat-0",
        "host": "gpu-a",
        "gpus": [0],
        "gpu_uuids": ["GPU-a0"],
        "port": 8000,
        "action": "create",
        "image": None,
        "vllm_version": "0.10.2",
        "container": {"name": "chat-0"},
    }
    spec1 = dict(spec, replica=1, name="chat-1", host="gpu-b", container={"name": "chat-1"})
    spec2 = dict(spec, replica=2, name="chat-2", host="gpu-c", container={"name": "chat-2"})
    return {
        "hosts": {"gpu-a": [spec], "gpu-b": [spec1], "gpu-c": [spec2]},
        "remove": {"gpu-a": [{"name": "old-0", "deployment": "old", "replica": 0, "reason": "state: absent"}]},
        "undeclared": [],
    }


def _rec(name: str, **kw: object) -> dict:
    """A fleet_apply record (module_utils/_fleet/apply.py builds them; tests/unit/.../test_fleet_apply.py runs it)."""
    rec = {"kind": "replica", "name": name, "changed": False, "failed": False, "failure_class": None}
    rec.update(failed_step=None, hint=None, rolled_back=None, phase="ready", endpoint=None)
    rec.update(kw)
    return rec


def test_converge_summary_from_host_records() -> None:
    plan = _plan()
    results = {
        "gpu-a": [
            {"kind": "remove", "name": "old-0", "changed": True, "failed": False, "failure_class": None, "hint": None},
            _rec(
                "chat-0",
                failed=True,
                changed=True,
                failed_step="vllm_container",
                failure_class="gpu_oom",
                hint="gpu_oom: CUDA out of memory",
                rolled_back=True,
            ),
        ],
        "gpu-b": [
            _rec(
                "chat-1",
                failed=True,
                failed_step="model_sync",
                failure_class="model_sync_failed",
                hint="no config.json",
            )
        ],
        "gpu-c": None,  # its batch never ran
    }
    summary = fr_summary.converge_summary(plan, results, unreachable=[])
    rows = {r["name"]: r for r in summary["deployments"]["chat"]["replicas"]}
    assert rows["chat-0"]["status"] == "failed" and rows["chat-0"]["failure_class"] == "gpu_oom"
    assert rows["chat-0"]["rolled_back"] is True and rows["chat-0"]["failed_step"] == "vllm_container"
    assert rows["chat-1"]["status"] == "failed" and rows["chat-1"]["failed_step"] == "model_sync"
    assert rows["chat-1"]["hint"] == "no config.json"
    assert rows["chat-2"]["status"] == "not_run"
    assert summary["removed"][0]["status"] == "removed"
    assert summary["ok"] is False and summary["deployments"]["chat"]["status"] == "failed"
    assert summary["failed_hosts"] == {"gpu-a": ["chat-0"], "gpu-b": ["chat-1"]}
    table = fr_summary.converge_table(summary)
    assert table[0].split() == ["DEPLOYMENT", "REPLICA", "HOST", "GPUS", "ENDPOINT", "ACTION", "STATUS", "FAILURE"]
    assert any(line.startswith("FAILED:") for line in table)
    assert any("chat replica 0 on gpu-a: gpu_oom" in line for line in table)


def test_converge_summary_ok_and_unreachable() -> None:
    plan = _plan()
    plan["remove"] = {}
    ok = {h: [_rec(f"chat-{i}", endpoint=f"http://10.0.0.{i}:8000")] for i, h in enumerate(["gpu-a", "gpu-b"])}
    summary = fr_summary.converge_summary(plan, ok, unreachable=["gpu-c"])
    rows = {r["name"]: r for r in summary["deployments"]["chat"]["replicas"]}
    assert rows["chat-0"]["status"] == "ok" and rows["chat-0"]["endpoint"] == "http://10.0.0.0:8000"
    assert rows["chat-2"]["status"] == "unreachable"
    assert summary["unreachable_hosts"] == ["gpu-c"] and summary["ok"] is False
    summary = fr_summary.converge_summary(
        {**plan, "hosts": {k: v for k, v in plan["hosts"].items() if k != "gpu-c"}}, ok
    )
    assert summary["ok"] is True and summary["counts"]["ok"] == 2


def test_converge_summary_from_registered_apply_results() -> None:
    plan = _plan()
    plan["remove"] = {}
    results = {
        "gpu-a": {"changed": False, "records": [_rec("chat-0", endpoint="http://10.0.0.1:8000")], "failed_count": 0},
        "gpu-b": {
            "failed": True,
            "msg": "chat-1: vllm_container: value of port must be an integer\nmore",
            "records": [],
        },
        "gpu-c": {"skipped": True},
    }
    summary = fr_summary.converge_summary(plan, results)
    rows = {r["name"]: r["status"] for r in summary["deployments"]["chat"]["replicas"]}
    assert rows == {"chat-0": "ok", "chat-1": "not_run", "chat-2": "not_run"}
    assert summary["failed_hosts"] == {
        "gpu-b": ["the apply (chat-1: vllm_container: value of port must be an integer)"]
    }
    assert summary["ok"] is False and summary["counts"]["failed"] == 1


def test_report_reads_host_vars_of_from_hosts() -> None:
    from ansible_collections.gpufleet.vllm.plugins.action.fleet_report import from_host_vars

    hostvars = {"gpu-a": {"gpufleet_host_results": [_rec("chat-0")]}, "gpu-b": {"gpufleet_host_results": None}}
    params = {"kind": "converge", "results": {"gpu-c": []}, "from_hosts": ["gpu-a", "gpu-b", "gpu-c"]}
    assert from_host_vars(params, hostvars)["results"] == {"gpu-a": [_rec("chat-0")], "gpu-b": None, "gpu-c": []}
    hostvars = {"gpu-a": {"gpufleet_status_info": {"deployments": []}, "ansible_host": "10.0.0.1"}}
    out = from_host_vars({"kind": "status", "from_hosts": ["gpu-a"]}, hostvars)
    assert out["infos"] == {"gpu-a": {"deployments": []}} and out["addresses"] == {"gpu-a": "10.0.0.1"}
    # The role registers deployments_*; the gpufleet_* names of hand-written playbooks are read when those are unset.
    hostvars = {
        "gpu-a": {"deployments_host_results": [_rec("chat-0")], "gpufleet_host_results": [_rec("old-0")]},
        "gpu-b": {"gpufleet_host_results": [_rec("chat-1")]},
    }
    params = {"kind": "converge", "from_hosts": ["gpu-a", "gpu-b"]}
    assert from_host_vars(params, hostvars)["results"] == {"gpu-a": [_rec("chat-0")], "gpu-b": [_rec("chat-1")]}
    assert out["metrics"] == {"gpu-a": None}


def test_parse_metrics_and_status_report() -> None:
    text = "\n".join(
        [
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            'vllm:request_success_total{finished_reason="stop",model_name="m"} 3.0',
            'vllm:request_success_total{finished_reason="length",model_name="m"} 2.0',
            'vllm:generation_tokens_total{model_name="m"} 500.0',
            'vllm:num_requests_running{model_name="m"} 1.0',
        ]
    )
    assert fr_status.parse_metrics(text) == {"requests": 5.0, "generation_tokens": 500.0, "running": 1.0}
    infos = {
        "gpu-a": {
            "deployments": [
                {
                    "name": "chat-0",
                    "state": "running",
                    "phase": "ready",
                    "uptime_s": 100.0,
                    "endpoint": "http://127.0.0.1:8000",
                    "model": "/m/tiny",
                    "gpus": ["0"],
                }
            ]
        }
    }
    report = fr_status.status_report(infos, {"gpu-a": {"chat-0": text}}, addresses={"gpu-a": "10.0.0.1"})
    row = report["rows"][0]
    assert (row["deployment"], row["requests"], row["tokens_per_s"]) == ("chat", 5, 5.0)
    assert row["endpoint"] == "http://10.0.0.1:8000"
    table = fr_status.status_table(report)
    assert "TOK/S" in table[0] and re.search(r"chat-0\s+tiny\s+0\s+running", table[2])


def test_manifest_params_and_deployment() -> None:
    manifest = {
        "manifest_version": 1,
        "name": "chat-0",
        "model": "/m",
        "image": "vllm/vllm-openai:v0.10.2",
        "engine_args": {"max_model_len": 1024},
        "gpus": [{"id": "1"}],
        "port": 8000,
        "env_keys": ["A"],
    }
    params = fr_redeploy.manifest_params(manifest)
    assert params["gpus"] == ["1"] and params["max_model_len"] == 1024 and params["port"] == 8000
    out = fr.run_report({"kind": "manifest", "manifest": manifest, "manifest_path": None})
    assert out["deployment"] == "chat" and out["manifest"] == manifest
    assert fr_redeploy.deployment_of("tp-model") == "tp-model"
    with pytest.raises(GpufleetError, match="manifest_version"):
        fr_redeploy.manifest_params({"name": "x"})


def _module_options(names: set[str], env: dict[str, str]) -> dict[str, set[str]]:
    import json

    proc = subprocess.run(
        ["ansible-doc", "--json", "-t", "module", *sorted(f"gpufleet.vllm.{n}" for n in names)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    docs = json.loads(proc.stdout)
    return {k.split(".")[-1]: set(v["doc"].get("options") or {}) for k, v in docs.items()}


def test_role_and_playbooks_use_only_existing_module_options(ansible_env: dict[str, str]) -> None:
    """Every gpufleet.vllm.* call in the role names options the module documents (catches renamed options)."""
    calls: list[tuple[str, str, set[str]]] = []
    for path in sorted((ROLE / "tasks").glob("*.yml")):
        for task in yaml.safe_load(path.read_text()) or []:
            for key, args in task.items():
                if key.startswith("gpufleet.vllm.") and isinstance(args, (dict, type(None))):
                    calls.append((path.name, key.split(".")[-1], set(args or {})))
    assert {call[1] for call in calls} >= {
        "fleet_plan",
        "vllm_deployment_info",
        "fleet_apply",
        "fleet_report",
    }
    options = _module_options({call[1] for call in calls}, ansible_env)
    for path, module, used in calls:
        assert used <= options[module], f"{path}: {module} has no option(s) {sorted(used - options[module])}"
