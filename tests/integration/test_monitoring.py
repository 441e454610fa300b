"""Role gpufleet.vllm.monitoring / module monitoring_config against a real vLLM stand-in and a real Prometheus.

A stand-in server is started with `ansible localhost -m gpufleet.vllm.vllm_container` on the main dockerd, the
playbook playbooks/monitoring.yml renders the files for it (check mode first, then for real, then again: changed=0),
the apt `prometheus` binary runs on that configuration, and its HTTP API must show the target up (both /metrics and
/health), vllm: metrics scraped, every dashboard expression answered, and VllmServerDown pending or firing once the
server is stopped. A changed alert threshold is reloaded through Prometheus' /-/reload.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.dashboard import dashboard_exprs
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.targets import split_name
from fixtures.container import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "monitoring"
PROMETHEUS = shutil.which("prometheus")


def test_defaults_and_argument_specs_in_step():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    options = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    for key, spec in options.items():
        if "default" in spec:
            assert spec["default"] == defaults[key], key


@pytest.fixture
def server(ansible_run, standin_images, standin_model_dir):
    """A running stand-in vLLM 0.10.2 (deployment mon-<hex>, replica 0) on 127.0.0.1, removed afterwards."""
    name = f"mon-x{uuid.uuid4().hex[:8]}-0"
    spec = {
        "name": name,
        "image": standin_images["0.10.2"],
        "model": str(standin_model_dir),
        "gpus": ["0"],
        "port": free_port(18500, 18599),
        "host": "127.0.0.1",
        "wait_timeout": 60,
        "stop_timeout": 2,
    }
    r = ansible_run.run("vllm_container", spec)
    assert r["_rc"] == 0 and r["ready"], r["_output"][-3000:]
    yield spec
    subprocess.run(["docker", "rm", "-f", f"gpufleet-{name}"], capture_output=True, check=False)


LOCAL = {"localhost": {"ansible_connection": "local", "ansible_host": "127.0.0.1"}}


def _playbook(ansible_env, tmp_path, extra_vars, *flags, hosts=None):
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {"gpu_hosts": {"hosts": hosts or LOCAL}}}}))
    ev = tmp_path / "vars.json"
    ev.write_text(json.dumps(extra_vars))
    cmd = ["ansible-playbook", "-i", str(inv), str(ROOT / "playbooks" / "monitoring.yml"), "-e", f"@{ev}", *flags]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env, timeout=300, check=False)
    out = r.stdout + r.stderr
    recap = re.search(r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert recap, out[-4000:]
    return r.returncode, int(recap.group(2)), out


class Prometheus:
    def __init__(self, config: Path, tmp_path: Path) -> None:
        self.port = free_port(18500, 18599)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp_path / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.until(lambda: requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200, 180, "ready")

    def until(self, check, timeout: float, what: str):
        """Wait for ``check()`` to be truthy: ``timeout`` only turns a hang into a failure (a busy machine scrapes,
        evaluates rules and answers late, never wrongly), so it is minutes, not the few seconds it takes here."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = check()
                if last:
                    return last
            except requests.RequestException as err:
                last = err
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}")
            time.sleep(0.3)
        raise AssertionError(f"prometheus: {what} not seen within {timeout}s (last: {last!r})")

    def api(self, path: str, **params):
        body = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (apt-get install prometheus)")
def test_prometheus_scrapes_the_server_and_alerts_when_it_stops(ansible_env, ansible_run, server, tmp_path):
    deployment, replica = split_name(server["name"])
    base = tmp_path / "prom"
    evars = {
        "gpufleet_monitoring_names": [server["name"]],
        "monitoring_prometheus_dir": str(base),
        "monitoring_dashboards_dir": str(tmp_path / "dashboards"),
        "monitoring_scrape_interval": "1s",
        "monitoring_evaluation_interval": "1s",
        "monitoring_alerts": {"VllmServerDown": {"for": "2s"}},
    }
    # check mode + diff: predicts changes, writes nothing
    rc, changed, out = _playbook(ansible_env, tmp_path, evars, "--check", "--diff")
    assert rc == 0 and changed >= 1, out[-4000:]
    assert not base.exists()
    assert "+++ after: " + str(base / "gpufleet" / "vllm.json") in out
    # real run, then a no-op
    rc, changed, out = _playbook(ansible_env, tmp_path, evars)
    assert rc == 0 and changed >= 1, out[-4000:]
    rc, changed, out = _playbook(ansible_env, tmp_path, evars)
    assert rc == 0 and changed == 0, out[-4000:]

    targets = json.loads((base / "gpufleet" / "vllm.json").read_text())
    assert targets == [
        {
            "targets": [f"127.0.0.1:{server['port']}"],
            "labels": {
                "deployment": deployment,
                "replica": replica,
                "host": "localhost",
                "model": server["model"],
                "gpus": "0",
            },
        }
    ]
    board = json.loads((tmp_path / "dashboards" / "gpufleet-vllm.json").read_text())

    prom = Prometheus(base / "prometheus.yml", tmp_path)
    try:
        sel = f'deployment="{deployment}"'

        def both_up():
            active = prom.api("targets")["activeTargets"]
            mine = {
                t["labels"].get("gpufleet_probe"): t["health"]
                for t in active
                if t["labels"].get("deployment") == deployment
            }
            return mine == {"metrics": "up", "health": "up"} and mine

        prom.until(both_up, 180, "the /metrics and /health targets up")
        # a request, so that the histograms have observations
        requests.post(
            f"http://127.0.0.1:{server['port']}/v1/completions",
            json={"model": server["model"], "prompt": "hi", "max_tokens": 4},
            timeout=10,
        ).raise_for_status()
        scraped = prom.until(
            lambda: prom.api("query", query=f"vllm:generation_tokens_total{{{sel}}} > 0")["result"],
            180,
            "vllm:generation_tokens_total scraped",
        )
        assert scraped[0]["metric"]["replica"] == replica and scraped[0]["metric"]["host"] == "localhost"
        kv = prom.api("query", query=f"vllm:kv_cache_usage_perc{{{sel}}}")["result"]
        assert kv and kv[0]["metric"]["model_name"] == server["model"]
        # every dashboard expression runs on the real Prometheus and has data for this deployment
        for expr in dashboard_exprs(board):
            q = expr.replace("$deployment", deployment).replace("$__rate_interval", "1m")
            assert prom.until(lambda q=q: prom.api("query", query=q)["result"], 120, q)[0]["metric"]["deployment"] == (
                deployment
            )
        rules = prom.api("rules")["groups"]
        assert {r["name"] for g in rules for r in g["rules"]} >= {"VllmServerDown", "VllmKvCacheHigh"}
        assert all(r["health"] == "ok" for g in rules for r in g["rules"])
        assert not [a for a in prom.api("alerts")["alerts"] if a["labels"].get("deployment") == deployment]

        # a restart of the server process: VllmServerRestarted (process_start_time_seconds changed)
        restart = ansible_run.run("vllm_container", {"name": server["name"], "state": "restarted", "stop_timeout": 2})
        assert restart["_rc"] == 0, restart["_output"][-3000:]

        def alerts(name):
            return [
                a
                for a in prom.api("alerts")["alerts"]
                if a["labels"]["alertname"] == name and a["labels"].get("deployment") == deployment
            ]

        restarted = prom.until(lambda: alerts("VllmServerRestarted"), 180, "VllmServerRestarted after a restart")
        assert restarted[0]["state"] == "firing" and restarted[0]["labels"]["replica"] == replica

        # the server stops: VllmServerDown goes pending, then firing
        stop = ansible_run.run("vllm_container", {"name": server["name"], "state": "stopped", "stop_timeout": 2})
        assert stop["_rc"] == 0, stop["_output"][-3000:]

        def down_alert():
            return alerts("VllmServerDown")

        alert = prom.until(down_alert, 180, "VllmServerDown for the stopped server")[0]
        assert alert["state"] in ("pending", "firing")
        assert alert["labels"]["replica"] == replica and alert["labels"]["host"] == "localhost"
        prom.until(lambda: down_alert()[0]["state"] == "firing", 180, "VllmServerDown firing")

        # a changed threshold rewrites the rules; with monitoring_reload=http the role reloads Prometheus
        evars2 = {
            **evars,
            "monitoring_alerts": {"VllmServerDown": {"for": "2s"}, "VllmKvCacheHigh": {"threshold": 0.5}},
            "monitoring_reload": "http",
            "monitoring_reload_url": f"{prom.url}/-/reload",
        }
        rc, changed, out = _playbook(ansible_env, tmp_path, evars2)
        assert rc == 0 and changed == 1, out[-4000:]

        def reloaded():
            rules = prom.api("rules")["groups"]
            return any(
                r["name"] == "VllmKvCacheHigh" and r["query"].endswith("> 0.5") for g in rules for r in g["rules"]
            )

        prom.until(reloaded, 120, "the new VllmKvCacheHigh threshold after /-/reload")
    finally:
        prom.stop()


def test_module_writes_the_token_to_the_credentials_file_only(ansible_run, tmp_path):
    """monitoring_config through `ansible`: the API key ends in the credentials file (0640), the configuration names
    the file, the output never shows the key, promtool's full check passes, and a second run changes nothing."""
    canary = "canary-mon-apikey-51c2"
    args = {
        "infos": {"gpu-a": {"deployments": [{"name": "chat-0", "endpoint": "http://0.0.0.0:8000", "gpus": ["0"]}]}},
        "addresses": {"gpu-a": "10.9.0.1"},
        "targets_dir": str(tmp_path / "targets"),
        "rules_path": str(tmp_path / "rules.yml"),
        "config_path": str(tmp_path / "prometheus.yml"),
        "credentials_files": {"chat": str(tmp_path / "chat.token")},
        "credentials_file": str(tmp_path / "chat.token"),
        "api_key": canary,
    }
    r = ansible_run.run("monitoring_config", args, diff=True)
    assert r["_rc"] == 0 and r["changed"], r["_output"][-3000:]
    assert canary not in r["_output"]
    assert (tmp_path / "chat.token").read_text() == canary
    assert oct((tmp_path / "chat.token").stat().st_mode & 0o777) == "0o640"
    config = (tmp_path / "prometheus.yml").read_text()
    # vLLM's api_key guards /v1 only: no scrape config sends it to /metrics or /health (issue #16)
    assert canary not in config and "authorization" not in config and "credentials_file" not in config
    assert set(r["validated"]) == {args["rules_path"], args["config_path"]}
    assert list(r["targets"]) == ["vllm", "vllm-auth-chat"] and r["targets"]["vllm"] == []
    again = ansible_run.run("monitoring_config", args)
    assert again["_rc"] == 0 and again["changed"] is False


def test_playbook_keeps_the_targets_of_an_unreachable_host(ansible_env, ansible_run, tmp_path):
    """A GPU host that does not answer keeps its entries in the target files (its servers then alert as down)."""
    targets_dir = tmp_path / "prom" / "gpufleet"
    seed = {
        "infos": {"down-host": {"deployments": [{"name": "mon-kept-0", "endpoint": "http://0.0.0.0:18598"}]}},
        "addresses": {"down-host": "10.0.0.9"},
        "targets_dir": str(targets_dir),
    }
    assert ansible_run.run("monitoring_config", seed)["_rc"] == 0
    kept = json.loads((targets_dir / "vllm.json").read_text())
    assert kept[0]["targets"] == ["10.0.0.9:18598"]
    hosts = {
        **LOCAL,
        # nothing listens on port 1: unreachable at once
        "down-host": {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 1},
    }
    evars = {
        "gpufleet_monitoring_names": ["mon-none"],
        "monitoring_prometheus_dir": str(tmp_path / "prom"),
        "monitoring_dashboards_dir": "",
    }
    rc, _changed, out = _playbook(ansible_env, tmp_path, evars, hosts=hosts)
    assert rc == 4  # ansible-playbook: some host unreachable
    assert re.search(r"localhost\s+:.*failed=0", out) and re.search(r"down-host\s+:.*unreachable=1", out), out[-4000:]
    assert "No gpufleet_monitoring_info for down-host" in out
    assert json.loads((targets_dir / "vllm.json").read_text()) == kept
    # told to drop them, they go
    rc, _changed, out = _playbook(ansible_env, tmp_path, {**evars, "monitoring_keep_unreachable": False}, hosts=hosts)
    assert rc == 4 and re.search(r"localhost\s+:.*failed=0", out)
    assert json.loads((targets_dir / "vllm.json").read_text()) == [], out[-4000:]
