"""plugins/module_utils/_monitoring/{targets,config,plan,files,run}.py and the action plugin: targets, scrape configs,
YAML rendering (on the controller, in two steps) and file writing (idempotence, check mode, diff, secrets). Rules and
the dashboard: test_monitoring_rules.py."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpufleet.vllm.plugins.action.monitoring_config import (
    from_host_vars,
    render_request,
    run_in_two_steps,
    to_yaml,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring import run as module_run
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.files import SECRET_DIFF
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.plan import HEADER, Plan, render
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.targets import (
    agent_targets,
    ray_targets,
    scrape_address,
    split_name,
    vllm_targets,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import spec as ray_spec

ROOT = Path(__file__).resolve().parents[4]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")
CANARY = "canary-monitoring-token-93b1"


def _info(*entries):
    return {"changed": False, "deployments": list(entries)}


def _dep(name, port, bind="0.0.0.0", **kw):
    return {
        "name": name,
        "endpoint": f"http://{bind}:{port}",
        "port": port,
        "model": "Qwen/Qwen3-0.6B",
        "gpus": ["0"],
        **kw,
    }


def _params(tmp_path, **kw):
    p = {
        "infos": {"gpu-a": _info(_dep("chat-0", 8000), _dep("chat-1", 8001, gpus=["1", "2"]))},
        "addresses": {"gpu-a": "10.1.0.5"},
        "targets_dir": str(tmp_path / "targets"),
        "rules_path": str(tmp_path / "rules" / "gpufleet.yml"),
        "config_path": str(tmp_path / "prometheus.yml"),
        "config_mode": "full",
        "dashboards_dir": str(tmp_path / "dashboards"),
        "job_name": "vllm",
        "health_probe": True,
        "alerts": {},
        "validate": True,
    }
    p.update(kw)
    return p


def run_config(params, check_mode=False):
    """The module's run as the action plugin drives it: the YAML rendered in between (here in process)."""
    return run_in_two_steps(lambda args: module_run.run_config(args, check_mode), params)


def _contents(plan: Plan) -> dict[str, str]:
    """Path -> content of every file of ``plan``, its YAML rendered as the action plugin renders it."""
    assert module_run.fill_yaml(plan, render_request(module_run.request(plan)))
    return {f.path: str(f.content) for f in plan.files}


# --- names and addresses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "split"),
    [("chat-1", ("chat", "1")), ("chat-12", ("chat", "12")), ("llama", ("llama", "0")), ("a-b-0", ("a-b", "0"))],
)
def test_split_name(name, split):
    assert split_name(name) == split


@pytest.mark.parametrize(
    ("endpoint", "address", "want"),
    [
        ("http://0.0.0.0:8000", "10.0.0.7", "10.0.0.7:8000"),
        ("http://0.0.0.0:8000", None, "127.0.0.1:8000"),
        ("http://127.0.0.1:8000", "127.0.0.1", "127.0.0.1:8000"),
        ("http://127.0.0.1:8000", None, "127.0.0.1:8000"),
        ("http://192.168.5.5:8000", "10.0.0.7", "192.168.5.5:8000"),
        ("http://0.0.0.0:8000", "fd00::7", "[fd00::7]:8000"),
    ],
)
def test_scrape_address(endpoint, address, want):
    assert scrape_address(endpoint, address) == (want, None)


def test_loopback_only_server_on_a_remote_host_is_skipped_with_a_reason():
    addr, reason = scrape_address("http://127.0.0.1:8000", "10.0.0.7")
    assert addr is None and "127.0.0.1 only" in reason


def test_targets_labels_jobs_and_skips():
    infos = {
        "gpu-b": _info(_dep("emb", 9000, model="/models/e5", gpus=[])),
        "gpu-a": _info(_dep("chat-1", 8001, gpus=["1", "2"]), _dep("chat-0", 8000), _dep("lo", 8002, bind="127.0.0.1")),
        "gpu-c": None,  # unreachable host: nothing to scrape
    }
    out = vllm_targets(infos, {"gpu-a": "10.0.0.1", "gpu-b": "10.0.0.2"})
    assert list(out.jobs) == ["vllm"]
    entries = out.jobs["vllm"].targets
    assert [e["targets"] for e in entries] == [["10.0.0.1:8000"], ["10.0.0.1:8001"], ["10.0.0.2:9000"]]
    assert entries[1]["labels"] == {
        "deployment": "chat",
        "replica": "1",
        "host": "gpu-a",
        "model": "Qwen/Qwen3-0.6B",
        "gpus": "1,2",
    }
    assert entries[2]["labels"]["deployment"] == "emb" and entries[2]["labels"]["gpus"] == ""
    assert out.skipped == [{"host": "gpu-a", "name": "lo", "reason": scrape_address(
        "http://127.0.0.1:8002", "10.0.0.1")[1]}]  # fmt: skip


def test_api_key_servers_go_to_an_auth_job_with_a_credentials_file():
    infos = {"gpu-a": _info(_dep("chat-0", 8000, api_key=True), _dep("open-0", 8001), _dep("own-0", 8002))}
    out = vllm_targets(
        infos, {}, credentials_file="/etc/prometheus/vllm.token", credentials_files={"own": "/etc/prometheus/own"}
    )
    assert sorted(out.jobs) == ["vllm", "vllm-auth", "vllm-auth-own"]
    assert out.jobs["vllm-auth"].credentials_file == "/etc/prometheus/vllm.token"
    assert out.jobs["vllm-auth-own"].credentials_file == "/etc/prometheus/own"
    assert [e["labels"]["deployment"] for e in out.jobs["vllm"].targets] == ["open"]


def test_api_key_server_needs_no_credentials_file():
    # vLLM's api_key guards /v1 only: /metrics and /health are scraped without it (issue #16)
    out = vllm_targets({"h": _info(_dep("chat-0", 8000, api_key=True))}, {})
    assert list(out.jobs) == ["vllm"] and out.jobs["vllm"].targets[0]["labels"]["deployment"] == "chat"


def test_bad_infos_and_job_name():
    with pytest.raises(GpufleetError, match="registered result"):
        vllm_targets({"h": "nonsense"}, {})
    with pytest.raises(GpufleetError, match="job_name"):
        vllm_targets({}, {}, job_name="a b")


def test_agent_targets():
    assert agent_targets(["b", "a"], {"a": "10.0.0.1"}, 9464) == [
        {"targets": ["10.0.0.1:9464"], "labels": {"host": "a"}},
        {"targets": ["b:9464"], "labels": {"host": "b"}},
    ]
    with pytest.raises(GpufleetError, match="node_agent_port"):
        agent_targets(["a"], {}, 70000)


# --- scrape configs and rendering ------------------------------------------------------------------------------------


def test_render_full_config_references_target_files_rules_and_credentials_file_never_the_secret(tmp_path):
    p = _params(
        tmp_path,
        infos={"gpu-a": _info(_dep("chat-0", 8000, api_key=True), _dep("open-0", 8001))},
        credentials_file=str(tmp_path / "token"),
        api_key=CANARY,
        node_agent_port=9464,
    )
    plan = render(p)
    by_path = _contents(plan)
    assert all(by_path[f.path].startswith(HEADER) for f in plan.files if f.kind in ("rules", "config_full"))
    cfg = yaml.safe_load(by_path[p["config_path"]])
    assert cfg["rule_files"] == [p["rules_path"]]
    jobs = {c["job_name"]: c for c in cfg["scrape_configs"]}
    assert sorted(jobs) == ["gpufleet-agent", "vllm", "vllm-auth", "vllm-auth-health", "vllm-health"]
    assert jobs["vllm-health"]["metrics_path"] == "/health"
    assert jobs["vllm"]["file_sd_configs"] == jobs["vllm-health"]["file_sd_configs"]
    assert jobs["vllm"]["file_sd_configs"][0]["files"] == [f"{p['targets_dir']}/vllm.json"]
    # no scrape config sends the inference API key: /metrics and /health do not need it (issue #16)
    assert not any("authorization" in job for job in jobs.values())
    assert jobs["vllm"]["relabel_configs"] == [{"target_label": "gpufleet_probe", "replacement": "metrics"}]
    assert by_path[p["credentials_file"]] == CANARY
    for path, content in by_path.items():
        if path != p["credentials_file"]:
            assert CANARY not in content, path
    assert CANARY not in json.dumps({k: v for k, v in dataclasses.asdict(plan).items() if k != "files"})
    sd = json.loads(by_path[f"{p['targets_dir']}/vllm-auth.json"])
    assert sd == [{"targets": ["10.1.0.5:8000"], "labels": sd[0]["labels"]}]


def test_unreachable_hosts_keep_their_targets(tmp_path):
    infos = {
        "gpu-a": _info(_dep("chat-0", 8000)),
        "gpu-b": _info(_dep("chat-1", 8000), _dep("key-0", 8001, api_key=True)),
    }
    p = _params(tmp_path, infos=infos, addresses={"gpu-a": "10.0.0.1", "gpu-b": "10.0.0.2"}, validate=False)
    p.update(from_hosts=["gpu-a", "gpu-b"], credentials_file="/etc/t", node_agent_port=9464)
    run_config(p)
    before = {f.name: f.read_text() for f in (tmp_path / "targets").iterdir()}
    # gpu-b does not answer this time: its entries stay; chat-0 moved ports on gpu-a
    down = {**p, "infos": {"gpu-a": _info(_dep("chat-0", 8005))}}
    r = run_config(down)
    assert sorted((k["host"], k["deployment"], k["job"]) for k in r["kept"]) == [
        ("gpu-b", "chat", "vllm"),
        ("gpu-b", "key", "vllm-auth"),
    ]
    assert [e["targets"] for e in r["targets"]["vllm"]] == [["10.0.0.1:8005"], ["10.0.0.2:8000"]]
    assert r["targets"]["vllm-auth"] == json.loads(before["vllm-auth.json"])
    assert [e["labels"]["host"] for e in r["targets"]["gpufleet-agent"]] == ["gpu-a", "gpu-b"]
    # without keep_unreachable they go
    gone = run_config({**down, "keep_unreachable": False})
    assert gone["kept"] == [] and [e["labels"]["host"] for e in gone["targets"]["vllm"]] == ["gpu-a"]


def _ray_node(host, role, base, gpus):
    """A Ray node as vllm_deployment_info lists it (``ray_nodes``, _container/info.ray_nodes)."""
    return {
        "deployment": "big",
        "replica": 0,
        "role": role,
        "port": base,
        "gpus": gpus,
        "host": host,
        "container_name": f"gpufleet-big-0-ray-{role}",
        "state": "running",
        "name": "big-0",
        "ray_role": role,
        "ray_port": base,
    }


def _ray_infos(base=6419):
    """big-0 over gpu-a (head, beside its server and a single-host replica) and gpu-b (worker)."""
    return {
        "gpu-a": {
            **_info(_dep("big-0", 8300), _dep("chat-0", 8000)),
            "ray_nodes": [_ray_node("gpu-a", "head", base, ["0", "1"])],
        },
        "gpu-b": {**_info(), "ray_nodes": [_ray_node("gpu-b", "worker", base, ["2", "3"])]},
    }


def test_ray_targets_scrape_each_node_on_the_metrics_export_port_it_is_started_with():
    out = ray_targets(_ray_infos(), {"gpu-a": "10.0.0.1", "gpu-b": "fd00::2"})
    # the port ray start is given (--metrics-export-port) inside the replica's block, at each host's address
    for role in ("head", "worker"):
        argv = ray_spec.start_argv(role, 6419, 2, "10.0.0.1", "10.0.0.1")
        assert "--metrics-export-port=6424" in argv
    assert out == [
        {
            "targets": ["10.0.0.1:6424"],
            "labels": {"deployment": "big", "replica": "0", "host": "gpu-a", "ray_role": "head", "gpus": "0,1"},
        },
        {
            "targets": ["[fd00::2]:6424"],
            "labels": {"deployment": "big", "replica": "0", "host": "gpu-b", "ray_role": "worker", "gpus": "2,3"},
        },
    ]
    # single-host replicas (chat-0, and big-0's server itself) have no Ray node: no entry; no address: the name
    assert [e["targets"] for e in ray_targets({"gpu-b": _ray_infos()["gpu-b"]}, {})] == [["gpu-b:6424"]]
    assert ray_targets({"gpu-a": _info(_dep("chat-0", 8000))}) == []


def test_render_adds_the_ray_job_only_with_ray_nodes_and_keeps_an_unreachable_hosts_nodes(tmp_path):
    p = _params(tmp_path, infos=_ray_infos(), addresses={"gpu-a": "10.0.0.1", "gpu-b": "10.0.0.2"}, validate=False)
    p["from_hosts"] = ["gpu-a", "gpu-b"]
    # off by default: a minimal Ray (the vLLM images') serves no metrics, its nodes would only show down
    assert "gpufleet-ray" not in render(p).targets
    assert [c["job_name"] for c in render(p).scrape_configs] == ["vllm", "vllm-health"]
    p["ray_metrics"] = True
    r = run_config(p)
    assert [e["targets"] for e in r["targets"]["gpufleet-ray"]] == [["10.0.0.1:6424"], ["10.0.0.2:6424"]]
    assert [e["labels"]["host"] for e in r["targets"]["vllm"]] == ["gpu-a", "gpu-a"]  # the servers as before
    cfg = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    (job,) = [c for c in cfg["scrape_configs"] if c["job_name"] == "gpufleet-ray"]
    # Ray's own metrics: no gpufleet_probe label, so no vLLM alert (VllmServerDown) selects the Ray nodes
    assert (
        job["file_sd_configs"] == [{"files": [f"{p['targets_dir']}/gpufleet-ray.json"]}]
        and "relabel_configs" not in job
    )
    written = json.loads((tmp_path / "targets" / "gpufleet-ray.json").read_text())
    assert written == r["targets"]["gpufleet-ray"]
    # gpu-b does not answer: its worker stays scraped (and shows down) as its servers would
    down = run_config({**p, "infos": {"gpu-a": _ray_infos()["gpu-a"]}})
    assert [(k["host"], k["job"]) for k in down["kept"]] == [("gpu-b", "gpufleet-ray")]
    assert down["targets"]["gpufleet-ray"] == written
    # no multi-host replica: no Ray job at all
    plan = render(_params(tmp_path, infos={"gpu-a": _info(_dep("chat-0", 8000))}))
    assert "gpufleet-ray" not in plan.targets
    assert [c["job_name"] for c in plan.scrape_configs] == ["vllm", "vllm-health"]


def test_fragment_mode_has_only_scrape_configs(tmp_path):
    plan = render(_params(tmp_path, config_mode="fragment", rules_path=None, dashboards_dir=None))
    cfg = yaml.safe_load(_contents(plan)[plan.files[-1].path])
    assert list(cfg) == ["scrape_configs"] and [f.kind for f in plan.files] == ["targets", "config_fragment"]


def test_extra_scrape_configs_must_have_unique_job_names(tmp_path):
    with pytest.raises(GpufleetError, match="used twice"):
        render(_params(tmp_path, extra_scrape_configs=[{"job_name": "vllm", "static_configs": []}]))


@pytest.mark.parametrize(
    "data",
    [
        {"a": "yes", "b": "15s", "c": ["", "x: y", 'q"uote', "{{ $labels.x }}", "null", "#x"], "d": {}, "e": []},
        {"n": [1, 2.5, True, None], "nested": [{"k": [{"x": 1}]}, [1, [2]]], "unicode": "Qwen/模型"},
    ],
)
def test_to_yaml_round_trips(data):
    assert yaml.safe_load(to_yaml(data)) == data


def test_to_yaml_takes_ansibles_subclasses_and_does_not_fold_long_lines():
    class Tagged(str):  # what templating may hand over
        pass

    class Doc(dict):
        pass

    expr = "max by (deployment, replica, host, instance) (vllm:num_requests_waiting) > 10 " * 3
    text = to_yaml(Doc({Tagged("expr"): Tagged(expr), "n": [Tagged("x"), 1, True]}))
    assert yaml.safe_load(text) == {"expr": expr, "n": ["x", 1, True]}
    assert len(text.splitlines()) == 5


def test_module_asks_the_action_plugin_to_render_its_yaml_and_checks_the_answer(tmp_path):
    """First run: a render request (the documents, a digest) and nothing written; the rendered texts of another
    run's documents are refused; without YAML files one run writes everything."""
    p = _params(tmp_path, validate=False)
    first = module_run.run_config(p)
    req = first[module_run.RENDER_REQUEST]
    assert first["changed"] is False and not tmp_path.joinpath("targets").exists()
    assert sorted(req["documents"]) == sorted([p["rules_path"], p["config_path"]])
    stale = module_run.run_config(_params(tmp_path, validate=False, scrape_interval="30s"))[module_run.RENDER_REQUEST]
    with pytest.raises(GpufleetError, match="run again"):
        module_run.run_config({**p, "rendered": render_request(stale)})
    assert not tmp_path.joinpath("targets").exists()
    done = module_run.run_config({**p, "rendered": render_request(req)})
    assert done["changed"] and module_run.RENDER_REQUEST not in done
    assert yaml.safe_load(Path(p["config_path"]).read_text()) == req["documents"][p["config_path"]]
    only_targets = _params(tmp_path / "t", rules_path=None, config_path=None, dashboards_dir=None, validate=False)
    one = module_run.run_config(only_targets)
    assert one["changed"] and [f["kind"] for f in one["files"]] == ["targets"]


def test_the_module_runs_without_pyyaml(tmp_path):
    """The monitoring host may lack PyYAML: the module's imports do not need it (the action plugin renders)."""
    code = (
        "import sys; sys.modules['yaml'] = None\n"
        "from ansible_collections.gpufleet.vllm.plugins.modules import monitoring_config\n"
        "from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.run import run_config\n"
        f"r = run_config({{'targets_dir': {str(tmp_path)!r}, 'infos': {{}}, 'validate': False}})\n"
        "assert r['changed'] and 'yaml' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / ".build" / "collections")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env)
    assert proc.returncode == 0, proc.stderr


def test_adding_a_deployment_changes_only_a_target_file(tmp_path):
    before = _contents(render(_params(tmp_path)))
    infos = {"gpu-a": _info(_dep("chat-0", 8000), _dep("chat-1", 8001, gpus=["1", "2"]), _dep("new-0", 8100))}
    after = _contents(render(_params(tmp_path, infos=infos)))
    assert [p for p in after if after[p] != before.get(p)] == [str(tmp_path / "targets" / "vllm.json")]


# --- writing -------------------------------------------------------------------------------------------------------


@needs_promtool
def test_apply_is_idempotent_check_mode_writes_nothing_and_diff_hides_the_secret(tmp_path):
    p = _params(
        tmp_path,
        infos={"gpu-a": _info(_dep("chat-0", 8000, api_key=True))},
        credentials_file=str(tmp_path / "token"),
        api_key=CANARY,
    )
    pred = run_config(p, check_mode=True)
    assert pred["changed"] and pred["reload_needed"] and not list(tmp_path.iterdir())
    assert all(f["changed"] for f in pred["files"])
    first = run_config(p)
    assert first["changed"] and first["promtool"] == PROMTOOL
    assert set(first["validated"]) == {p["rules_path"], p["config_path"]}
    assert (tmp_path / "token").read_text() == CANARY and oct((tmp_path / "token").stat().st_mode & 0o777) == "0o640"
    assert CANARY not in json.dumps(first)
    assert any(d["before"] == d["after"] == SECRET_DIFF for d in first["diff"])
    again = run_config(p)
    assert again["changed"] is False and again["reload_needed"] is False and again["diff"] == []
    assert run_config(p, check_mode=True)["changed"] is False
    # a file put back to another mode is fixed, content untouched and no reload
    os.chmod(p["config_path"], 0o600)
    fixed = run_config(p)
    assert fixed["changed"] and not fixed["reload_needed"]
    assert [f["path"] for f in fixed["files"] if f["changed"]] == [p["config_path"]]


@needs_promtool
def test_promtool_refusal_fails_and_replaces_nothing(tmp_path):
    p = _params(tmp_path)
    run_config(p)
    before = Path(p["config_path"]).read_text()
    bad = _params(
        tmp_path, extra_scrape_configs=[{"job_name": "x", "static_configs": [{"targets": ["a:1"]}], "bogus": 1}]
    )
    with pytest.raises(GpufleetError, match="promtool check config refused") as err:
        run_config(bad)
    assert "bogus" in str(err.value)
    assert Path(p["config_path"]).read_text() == before


def test_without_promtool_nothing_is_validated(tmp_path):
    r = run_config(_params(tmp_path, validate=False))
    assert r["changed"] and r["validated"] == [] and r["promtool"] is None


def test_missing_promtool_given_explicitly_is_an_error(tmp_path):
    with pytest.raises(GpufleetError, match="not found"):
        run_config(_params(tmp_path, promtool="/nonexistent/promtool"))


def test_reload_url_errors_are_clear(tmp_path):
    with pytest.raises(GpufleetError, match="did not answer"):
        run_config(_params(tmp_path, validate=False, reload_url="http://127.0.0.1:1/-/reload", reload_timeout=2))


def test_action_plugin_fills_infos_and_addresses_from_host_vars():
    hostvars = {
        "gpu-a": {"gpufleet_monitoring_info": _info(_dep("chat-0", 8000)), "ansible_host": "10.0.0.1"},
        "gpu-b": {"gpufleet_monitoring_info": {"failed": True, "msg": "x"}},
        "gpu-c": {},
        "gpu-d": {"gpufleet_monitoring_info": {"unreachable": True, "changed": False, "msg": "ssh: refused"}},
        "gpu-e": {"gpufleet_monitoring_info": {"skipped": True, "changed": False}},
    }
    hosts = ["gpu-a", "gpu-b", "gpu-c", "gpu-d", "gpu-e"]
    out = from_host_vars({"from_hosts": hosts, "infos": {"gpu-c": []}}, hostvars)
    assert sorted(out["infos"]) == ["gpu-a", "gpu-c"]
    assert out["addresses"] == {"gpu-a": "10.0.0.1", **{h: h for h in hosts[1:]}}
