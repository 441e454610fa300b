"""module_utils/_engine/gpu_runtime.py: docker device-driver detection (fake /proc, fake daemon socket) and CDI specs."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine import gpu_runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.gpu_runtime import (
    HOOK,
    _scan_yaml,
    cdi_gpu_devices,
    container_readiness,
    docker_readiness,
    podman_readiness,
)

CDI_YAML = """\
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
  - name: "0"
    containerEdits:
      env: ["NVIDIA_VISIBLE_DEVICES=0"]
  - name: "1"
    containerEdits:
      env: ["NVIDIA_VISIBLE_DEVICES=1"]
  - name: all
    containerEdits:
      env: ["NVIDIA_VISIBLE_DEVICES=all"]
containerEdits:
  deviceNodes: [{path: /dev/nvidiactl}]
"""


class _Info(BaseHTTPRequestHandler):
    info: dict = {}

    def do_GET(self):
        body = json.dumps(self.info).encode() if self.path == "/info" else b"{}"
        self.send_response(200 if self.path == "/info" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_daemon(tmp_path):
    """A unix socket answering GET /info like dockerd; returns (docker_host, set_info)."""
    sock = tmp_path / "docker.sock"

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    handler = type("H", (_Info,), {"info": {"ServerVersion": "20.10.24", "Runtimes": {"runc": {}}}})
    server = Server(str(sock), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"unix://{sock}", lambda info: setattr(handler, "info", info)
    server.shutdown()
    server.server_close()


def _fake_proc(tmp_path: Path, dockerd_path: str | None, same_ns: bool = True) -> str:
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    os.symlink("mnt:[4026531841]", proc / "self" / "ns" / "mnt")
    pid = proc / "4242"
    (pid / "ns").mkdir(parents=True)
    (pid / "comm").write_text("dockerd\n")
    os.symlink("mnt:[4026531841]" if same_ns else "mnt:[4026532999]", pid / "ns" / "mnt")
    env = b"HOME=/root\0" + (f"PATH={dockerd_path}".encode() + b"\0" if dockerd_path is not None else b"")
    (pid / "environ").write_bytes(env)
    other = proc / "99"
    other.mkdir()
    (other / "comm").write_text("bash\n")
    return str(proc)


def _hook_dir(tmp_path: Path) -> Path:
    d = tmp_path / "toolkit"
    d.mkdir()
    hook = d / HOOK
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    return d


def test_docker_ready_when_the_hook_is_on_dockerds_path(tmp_path, fake_daemon):
    host = fake_daemon[0]
    proc = _fake_proc(tmp_path, f"/nonexistent:{_hook_dir(tmp_path)}")
    d = docker_readiness(host, proc=proc)
    assert d["reachable"] and d["server_version"] == "20.10.24"
    assert d["gpu_device_driver"] is True and d["gpu_ready"] is True and d["reason"] is None
    assert d["gpu_device_driver_evidence"].startswith(f"{HOOK} is on dockerd's PATH")


def test_docker_not_ready_without_the_hook_even_with_the_nvidia_runtime(tmp_path, fake_daemon, monkeypatch):
    host, set_info = fake_daemon
    set_info({"ServerVersion": "24.0.7", "Runtimes": {"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}}})
    monkeypatch.setenv("PATH", str(_hook_dir(tmp_path)))  # on OUR path does not count when dockerd's is readable
    d = docker_readiness(host, proc=_fake_proc(tmp_path, "/usr/local/sbin:/nonexistent"))
    assert d["nvidia_runtime"] is True and d["runtimes"] == ["nvidia", "runc"]
    assert d["gpu_device_driver"] is False and d["gpu_ready"] is False
    assert "was not on its PATH when it started (the nvidia runtime is configured" in d["reason"]
    assert "nvidia-container-toolkit" in d["reason"]


def test_docker_other_mount_namespace_is_not_ours_so_we_guess(tmp_path, fake_daemon, monkeypatch):
    host = fake_daemon[0]
    monkeypatch.setenv("PATH", str(_hook_dir(tmp_path)))
    d = docker_readiness(host, proc=_fake_proc(tmp_path, "/nonexistent", same_ns=False))
    assert d["gpu_device_driver"] is True
    assert d["gpu_device_driver_evidence"].startswith("guessed: dockerd's environment could not be read")


def test_docker_unreachable(tmp_path):
    d = docker_readiness(f"unix://{tmp_path}/nothing.sock", timeout=1)
    assert d["reachable"] is False and d["gpu_ready"] is False
    assert d["reason"].startswith(f"the docker daemon at unix://{tmp_path}/nothing.sock does not answer")
    assert "is dockerd installed and running?" in d["reason"]


def test_cdi_specs_yaml_json_and_broken(tmp_path):
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    run.mkdir()
    (etc / "nvidia.yaml").write_text(CDI_YAML)
    (run / "other.json").write_text(json.dumps({"kind": "vendor.com/fpga", "devices": [{"name": "0"}]}))
    (run / "more.json").write_text(json.dumps({"kind": "nvidia.com/gpu", "devices": [{"name": "2"}, {"name": "0"}]}))
    (run / "broken.json").write_text("{nope")
    files, devices, problems = cdi_gpu_devices([str(etc), str(run)])
    assert devices == ["nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=all", "nvidia.com/gpu=2"]
    assert str(etc / "nvidia.yaml") in files and str(run / "other.json") in files
    assert len(problems) == 1 and problems[0].startswith(f"{run / 'broken.json'}: cannot be read")


def test_scan_yaml_matches_pyyaml():
    yaml = pytest.importorskip("yaml")
    assert gpu_runtime._cdi_devices_of(_scan_yaml(CDI_YAML)) == gpu_runtime._cdi_devices_of(yaml.safe_load(CDI_YAML))


def test_podman_ready_and_stale_spec_note(tmp_path, monkeypatch):
    (tmp_path / "nvidia.yaml").write_text(CDI_YAML)
    monkeypatch.setattr(gpu_runtime.shutil, "which", lambda name: f"/usr/bin/{name}")
    p = podman_readiness([str(tmp_path)], gpu_count=4)
    assert p["gpu_ready"] is True and p["installed"] is True
    assert "the CDI spec lists 2 GPUs but 4 were found" in p["reason"]
    assert podman_readiness([str(tmp_path)], gpu_count=2)["reason"] is None


def test_podman_without_spec_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_runtime.shutil, "which", lambda name: f"/usr/bin/{name}")
    p = podman_readiness([str(tmp_path)])
    assert p["gpu_ready"] is False and "nvidia-ctk cdi generate" in p["reason"]
    monkeypatch.setattr(gpu_runtime.shutil, "which", lambda name: None)
    assert podman_readiness([str(tmp_path)])["reason"].startswith("podman is not installed")


def test_container_readiness_summary_says_why_not(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_runtime.shutil, "which", lambda name: None)
    r = container_readiness(f"unix://{tmp_path}/none.sock", [str(tmp_path)], timeout=1)
    assert r["ready"] is False
    assert r["summary"].startswith("this host cannot run GPU containers: docker: the docker daemon at")
    assert "; podman: podman is not installed" in r["summary"]
