from __future__ import annotations

from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import (
    CreateSpec,
    ImageInfo,
    state_from_inspect,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.podman import create_args


def test_state_from_docker_and_podman_inspect():
    docker = {"Id": "abc", "Name": "/gpufleet-x", "RestartCount": 2, "Image": "sha256:1",
              "State": {"Status": "exited", "Running": False, "ExitCode": 1, "OOMKilled": True},
              "Config": {"Labels": {"gpufleet.managed": "true"}, "Image": "img"}}  # fmt: skip
    st = state_from_inspect(docker)
    assert (st.name, st.status, st.running, st.exit_code, st.restart_count, st.oom_killed) == (
        "gpufleet-x", "exited", False, 1, 2, True)  # fmt: skip
    podman = {"Id": "d", "Name": "gpufleet-y", "State": {"Status": "configured", "Running": False}, "Config": {}}
    assert state_from_inspect(podman).status == "created"
    paused = {"Id": "p", "Name": "z", "State": {"Status": "paused", "Running": True, "Paused": True}, "Config": {}}
    assert not state_from_inspect(paused).running


def test_image_info_version_and_digest():
    img = ImageInfo(id="sha256:1", env={"VLLM_VERSION": "0.8.5"}, repo_digests=["r/x@sha256:ab"])
    assert img.vllm_version == "0.8.5" and img.digest == "sha256:ab"
    assert ImageInfo(id="x", labels={"org.opencontainers.image.version": "0.10.2"}).vllm_version == "0.10.2"


def test_podman_create_args_cdi_and_no_secret_values():
    spec = CreateSpec(name="gpufleet-x", image="img", command=["/m", "--port", "1"],
                      env={"VLLM_API_KEY": "canary-1", "A": "b"}, mounts=[("/m", "/m", "ro")], gpus=["0", "GPU-u"],
                      network="bridge", ipc="host", shm_size=None, restart_policy="unless-stopped",
                      labels={"gpufleet.managed": "true"}, port=1, host="127.0.0.1")  # fmt: skip
    args = create_args(spec)
    assert "canary-1" not in " ".join(args)
    assert args[args.index("--env") + 1] == "A"
    assert "nvidia.com/gpu=0" in args and "nvidia.com/gpu=GPU-u" in args
    assert "127.0.0.1:1:1" in args
    assert args[-4:] == ["img", "/m", "--port", "1"]


def _serve_once(tmp_path, response: bytes, unix: bool):
    import socket
    import threading

    if unix:
        path = str(tmp_path / "s.sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        target = path
    else:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        target = ("127.0.0.1", srv.getsockname()[1])
    srv.listen(1)
    seen = {}

    def handle():
        conn, _addr = srv.accept()
        seen["request"] = conn.recv(65536)
        conn.sendall(response)
        conn.close()
        srv.close()

    threading.Thread(target=handle, daemon=True).start()
    return target, seen


def test_raw_http_content_length_and_chunked(tmp_path):
    from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import raw_http

    target, seen = _serve_once(tmp_path, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra", unix=True)
    assert raw_http(target, "GET", "/v1.41/containers/x/json") == (200, b"{}")
    assert seen["request"].startswith(b"GET /v1.41/containers/x/json HTTP/1.1\r\n")
    chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nfound\r\n0\r\n\r\n"
    target, seen = _serve_once(tmp_path, chunked, unix=False)
    assert raw_http(target, "POST", "/sleep?level=1", {"Authorization": "Bearer k"}) == (404, b"not found")
    assert b"Authorization: Bearer k\r\n" in seen["request"] and b"Content-Length: 0\r\n" in seen["request"]


def test_docker_inspect_image_over_the_socket(tmp_path):
    import pytest
    from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.docker import DockerRuntime
    from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

    target, seen = _serve_once(tmp_path, b'HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{"Id":"sha:1"}', unix=True)
    assert DockerRuntime(f"unix://{target}").inspect_image("r/x:1") == {"Id": "sha:1"}
    assert seen["request"].startswith(b"GET /images/r/x:1/json HTTP/1.1\r\n")
    (tmp_path / "s.sock").unlink()
    target, _seen = _serve_once(tmp_path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", unix=True)
    assert DockerRuntime(target).inspect_image("r/x:2") is None  # a bare socket path works too
    with pytest.raises(GpufleetError) as e:
        DockerRuntime(f"unix://{tmp_path}/none.sock").inspect_image("r/x:1")
    assert e.value.details["failure_class"] == "engine_unreachable"


def test_podman_adapter_finds_its_api_service_only_for_image_operations(tmp_path, monkeypatch):
    from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.factory import get_runtime

    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/podman")
    target, seen = _serve_once(tmp_path, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK", unix=True)
    rt = get_runtime("podman", podman_socket=f"unix://{target}", timeout=5)
    assert rt.name == "podman" and rt._images is None and "request" not in seen
    assert rt.images.url == f"unix://{target}" and seen["request"].startswith(b"GET /_ping HTTP/1.1\r\n")


def test_engine_api_version_comes_from_the_daemon(tmp_path, monkeypatch):
    """Newer dockerd releases refuse old client API versions. Reads go unversioned (the daemon's own version, no
    GET /version round trip on a no-op); the version for the SDK (writes) is asked with GET /version once and then
    used for every path (DOCKER_API_VERSION overrides)."""
    import socket
    import threading

    from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.docker import API_VERSION, _FastReader

    monkeypatch.delenv("DOCKER_API_VERSION", raising=False)
    path = str(tmp_path / "d.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    requests: list[bytes] = []

    def handle() -> None:
        for _n in range(3):
            conn, _addr = srv.accept()
            req = conn.recv(65536)
            requests.append(req)
            body = b'{"ApiVersion":"1.52","MinAPIVersion":"1.44"}' if req.startswith(b"GET /version ") else b"{}"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            conn.close()
        srv.close()

    threading.Thread(target=handle, daemon=True).start()
    reader = _FastReader(path, timeout=5)
    assert reader.get("/containers/x/json") == (200, {})
    assert requests[0].startswith(b"GET /containers/x/json HTTP/1.1\r\n")
    assert reader.version == "1.52"
    assert requests[1].startswith(b"GET /version HTTP/1.1\r\n")
    assert reader.get("/containers/x/json") == (200, {})
    assert requests[2].startswith(b"GET /v1.52/containers/x/json HTTP/1.1\r\n")
    assert API_VERSION == "1.41"  # only the fallback when the daemon does not say

    monkeypatch.setenv("DOCKER_API_VERSION", "1.44")
    assert _FastReader(path).version == "1.44"


def test_image_from_inspect_docker_and_podman_shapes():
    from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import image_from_inspect

    docker = {
        "Id": "sha256:ab",
        "RepoDigests": ["r/x@sha256:cd"],
        "Config": {"Entrypoint": ["vllm", "serve"], "Env": ["VLLM_VERSION=0.10.2", "PATH=/bin"], "Labels": {"a": "1"}},
    }
    img = image_from_inspect(docker)
    assert (img.id, img.entrypoint, img.env["VLLM_VERSION"], img.labels, img.repo_digests) == (
        "sha256:ab",
        ["vllm", "serve"],
        "0.10.2",
        {"a": "1"},
        ["r/x@sha256:cd"],
    )
    podman = {"Id": "ab", "Labels": {"b": "2"}, "Config": {"Env": ["X=1=2"]}}
    img = image_from_inspect(podman)
    assert (img.id, img.labels, img.env, img.entrypoint) == ("sha256:ab", {"b": "2"}, {"X": "1=2"}, [])
