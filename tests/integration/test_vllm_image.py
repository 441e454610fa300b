"""gpufleet.vllm.vllm_image on the real dockerd and podman, against real loopback registries (sim/registry).

Registry images are `127.0.0.1:5000/vllm/vllm-openai:<tag>` (stand-ins + pip). Tests remove only the local copies
of those registry references and the derived images they build (under a per-test derived_repository).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _engine(runtime: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([runtime, *args], capture_output=True, text=True, check=check, timeout=300)


def _image_id(runtime: str, ref: str) -> str | None:
    r = _engine(runtime, "image", "inspect", "--format", "{{.Id}}", ref)
    if r.returncode != 0:
        return None
    i = r.stdout.strip()
    return i if i.startswith("sha256:") else f"sha256:{i}"


def _rmi(runtime: str, *refs: str) -> None:
    for ref in refs:
        _engine(runtime, "rmi", ref)


@pytest.fixture
def derived_repo(request):
    """A derived_repository of this test's own; its images are removed afterwards (docker and podman)."""
    repo = f"gpufleet-test/derived-{uuid.uuid4().hex[:8]}"
    yield repo
    for runtime, fmt in (("docker", "{{.Repository}}:{{.Tag}}"), ("podman", "{{.Repository}}:{{.Tag}}")):
        r = _engine(runtime, "images", "--format", fmt)
        for line in r.stdout.splitlines():
            if repo in line:
                _rmi(runtime, line.strip())


# --- version resolution against the registry


def test_pinned_version_pulls_when_missing_then_noop(registry, run_image_module):
    ref = f"{registry['repo']}:v0.8.5"
    _rmi("docker", ref)
    args = {"version": "0.8.5", "repository": registry["repo"]}
    first = run_image_module(args, diff=True)
    assert first.get("failed") is not True, first.get("msg")
    assert first["changed"] is True
    assert first["image"] == ref and first["vllm_tag"] == "v0.8.5" and first["vllm_version"] == "0.8.5"
    assert first["image_id"] == _image_id("docker", ref)
    assert any(d.startswith(f"{registry['repo']}@sha256:") for d in first["repo_digests"])
    assert first["diff"]["before"]["image_id"] is None and first["diff"]["after"]["image_id"] == first["image_id"]
    again = run_image_module({**args, "version": "v0.8.5"})
    assert again["changed"] is False and again["actions"] == []
    assert again["image_id"] == first["image_id"]


def test_check_mode_reports_pull_and_pulls_nothing(registry, run_image_module):
    ref = f"{registry['repo']}:v0.33.0"
    _rmi("docker", ref)
    r = run_image_module({"version": "0.33.0", "repository": registry["repo"]}, check=True)
    assert r["changed"] is True
    assert r["actions"] == [f"pull {ref}"]
    assert r["image_id"] is None
    assert _image_id("docker", ref) is None


def test_latest_resolves_through_release_endpoint_and_cache(registry, run_image_module, release_server, tmp_path):
    cache = tmp_path / "releases.json"
    release_server.tag = "v0.33.0"
    args = {
        "version": "latest",
        "repository": registry["repo"],
        "release_api_url": release_server.url,
        "release_cache": str(cache),
    }
    r = run_image_module(args)
    assert r.get("failed") is not True, r.get("msg")
    assert r["vllm_tag"] == "v0.33.0" and r["image"] == f"{registry['repo']}:v0.33.0"
    assert release_server.hits == 1
    assert json.loads(cache.read_text())[release_server.url]["tag"] == "v0.33.0"
    # Within the hour: answered from the cache, even when the endpoint now says otherwise.
    release_server.tag = "v0.10.2"
    r = run_image_module({**args, "version": ""})
    assert r["vllm_tag"] == "v0.33.0" and release_server.hits == 1
    # Expired: looked up again.
    data = json.loads(cache.read_text())
    data[release_server.url]["fetched"] = time.time() - 3601
    cache.write_text(json.dumps(data))
    r = run_image_module(args)
    assert r["vllm_tag"] == "v0.10.2" and release_server.hits == 2


def test_latest_offline_falls_back_to_latest_tag_and_says_so(registry, run_image_module, release_server, tmp_path):
    release_server.close()  # nothing listens there any more
    r = run_image_module(
        {
            "repository": registry["repo"],
            "release_api_url": release_server.url,
            "release_cache": str(tmp_path / "c.json"),
        }
    )
    assert r.get("failed") is not True, r.get("msg")
    assert r["vllm_tag"] == "latest" and r["image"] == f"{registry['repo']}:latest"
    assert any("could not look up the newest vLLM release" in w and "'latest' tag" in w for w in r["warnings"])


def test_nightly_and_commit_tags(registry, run_image_module):
    r = run_image_module({"version": "nightly", "repository": registry["repo"]})
    assert r.get("failed") is not True, r.get("msg")
    assert r["image"] == f"{registry['repo']}:nightly"
    commit = "0123456789ABCDEF0123456789abcdef01234567"
    r = run_image_module({"version": commit, "repository": registry["repo"]})
    assert r["failed"] is True and r["failure_class"] == "not_found"
    assert f"nightly-{commit.lower()}" in r["msg"]


def test_bad_version_fails_before_any_pull(registry, run_image_module):
    r = run_image_module({"version": "0.10", "repository": "127.0.0.1:5009/nothing/here"})
    assert r["failed"] is True and r["failure_class"] == "bad_version"
    assert "'0.10' is not a vLLM version" in r["msg"]


def test_image_overrides_version(registry, run_image_module):
    ref = f"{registry['repo']}:v0.10.2"
    r = run_image_module({"image": ref, "version": "0.8.5", "repository": "example.invalid/x"})
    assert r.get("failed") is not True, r.get("msg")
    assert r["image"] == ref and r["vllm_tag"] == "v0.10.2"


# --- pull policies


def test_pull_never_fails_when_absent(registry, run_image_module):
    ref = f"{registry['repo']}:v0.33.0"
    _rmi("docker", ref)
    r = run_image_module({"version": "0.33.0", "repository": registry["repo"], "pull": "never"})
    assert r["failed"] is True and r["failure_class"] == "not_present"
    assert ref in r["msg"] and "pull is never" in r["msg"]
    assert _image_id("docker", ref) is None


def test_pull_always_changes_only_when_the_id_changes(registry, run_image_module):
    repo = f"{registry['open']}/gpufleet-test/pull-always"
    tag = uuid.uuid4().hex[:8]
    ref = f"{repo}:{tag}"

    def push(source: str) -> None:
        _engine("docker", "pull", source, check=True)
        _engine("docker", "tag", source, ref, check=True)
        _engine("docker", "push", ref, check=True)

    try:
        push(f"{registry['repo']}:v0.8.5")
        r1 = run_image_module({"image": ref, "pull": "always"})
        assert r1["changed"] is False  # it was already here (we pushed it from here): same id
        r2 = run_image_module({"image": ref, "pull": "always"})
        assert r2["changed"] is False and r2["image_id"] == r1["image_id"]
        push(f"{registry['repo']}:v0.10.2")  # the registry's tag now points elsewhere ...
        _engine("docker", "tag", f"{registry['repo']}:v0.8.5", ref, check=True)  # ... the local tag does not
        r3 = run_image_module({"image": ref, "pull": "always"}, diff=True)
        assert r3["changed"] is True
        assert r3["image_id"] == _image_id("docker", f"{registry['repo']}:v0.10.2") != r1["image_id"]
        assert r3["diff"]["before"]["image_id"] == r1["image_id"]
        assert r3["diff"]["after"]["image_id"] == r3["image_id"]
        r4 = run_image_module({"image": ref, "pull": "missing"})
        assert r4["changed"] is False
    finally:
        _rmi("docker", ref)
        digests = _engine("docker", "images", "--digests", "--format", "{{.Repository}}@{{.Digest}}", repo).stdout
        _rmi("docker", *[d for d in digests.split() if "@sha256:" in d])


# --- pull progress (issue #19 item 6)


def _unique_image(registry, tmp_path: Path) -> tuple[str, int]:
    """A one-layer image of 1 MB of random bytes pushed to the open registry and absent here: (ref, layer bytes)."""
    ref = f"{registry['open']}/gpufleet-test/pull-progress:{uuid.uuid4().hex[:8]}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "blob").write_bytes(os.urandom(1_000_000))
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY blob /blob\n")
    _engine("docker", "build", "-q", "-t", ref, str(tmp_path), check=True)
    _engine("docker", "push", ref, check=True)
    size = json.loads(_engine("docker", "manifest", "inspect", "--insecure", ref).stdout or "{}")
    _rmi("docker", ref)
    layers = size.get("layers") or []
    assert len(layers) == 1, size
    return ref, int(layers[0]["size"])


@pytest.mark.podman
def test_pull_reports_bytes_and_layers(registry, run_image_module, podman_socket, tmp_path):
    """docker: the final bytes (the layer's compressed size as the registry serves it) and layers in pull_progress,
    the progress file gone afterwards; podman 4.3 (its Docker-compatible service): layers only."""
    ref, layer_bytes = _unique_image(registry, tmp_path / "ctx")
    progress_dir = tmp_path / "pulls"
    try:
        r = run_image_module({"image": ref, "progress_dir": str(progress_dir)})
        assert r.get("failed") is not True, r.get("msg")
        p = r["pull_progress"]
        assert (p["phase"], p["layers_done"], p["layers_total"], p["bytes_known"]) == ("done", 1, 1, True), p
        assert p["bytes_done"] == p["bytes_total"] == layer_bytes  # the layer's size in the registry's manifest
        assert not progress_dir.exists() or list(progress_dir.iterdir()) == []
        rp = run_image_module({"image": ref, "runtime": "podman", "podman_socket": podman_socket})
        assert rp.get("failed") is not True, rp.get("msg")
        pp = rp["pull_progress"]
        assert (pp["phase"], pp["layers_done"]) == ("done", pp["layers_total"]) and pp["layers_total"] >= 1, pp
        assert not pp["bytes_known"] or pp["bytes_done"] == pp["bytes_total"]
    finally:
        _rmi("docker", ref)
        _rmi("podman", ref)


# --- registry errors


def test_tag_not_found(registry, run_image_module):
    r = run_image_module({"version": "0.1.0", "repository": registry["repo"]})
    assert r["failed"] is True and r["failure_class"] == "not_found"
    assert f"{registry['repo']}:v0.1.0" in r["msg"]


def test_registry_down(registry, run_image_module):
    r = run_image_module({"version": "0.10.2", "repository": "127.0.0.1:5009/vllm/vllm-openai"})
    assert r["failed"] is True and r["failure_class"] == "registry_unreachable"
    assert "127.0.0.1:5009/vllm/vllm-openai:v0.10.2" in r["msg"]


def test_unauthorized_and_authorized_pull(registry, run_image_module, ansible_env):
    ref = f"{registry['auth_repo']}:v0.10.2"
    _rmi("docker", ref)
    args = {"version": "0.10.2", "repository": registry["auth_repo"]}
    r = run_image_module(args)
    assert r["failed"] is True and r["failure_class"] == "unauthorized", r["msg"]
    bad = "wrong-password-7f3e"
    # Through ansible-playbook: neither the result nor what the controller prints shows the password.
    r = run_image_module({**args, "registry_username": registry["user"], "registry_password": bad}, cli=True)
    assert r["failed"] is True and r["failure_class"] == "unauthorized", r["msg"]
    assert bad not in json.dumps(r) and bad not in r["_stdout"]
    r = run_image_module({**args, "registry_username": registry["user"], "registry_password": registry["password"]})
    assert r.get("failed") is not True, r.get("msg")
    assert r["changed"] is True and r["image_id"] == _image_id("docker", ref)
    assert registry["password"] not in json.dumps(r)
    _rmi("docker", ref)


# --- derived images


def _derived_args(registry, wheelhouse, derived_repo, packages):
    return {
        "version": "0.10.2",
        "repository": registry["repo"],
        "extra_pip_packages": packages,
        "plugins": [str(wheelhouse["plugin_whl"]), str(wheelhouse["plugin_py"])],
        "pip_find_links": [str(wheelhouse["index"])],
        "pip_no_index": True,
        "derived_repository": derived_repo,
    }


def _labels(runtime: str, ref: str) -> dict:
    r = _engine(runtime, "image", "inspect", "--format", "{{json .Config.Labels}}", ref, check=True)
    return json.loads(r.stdout)


def test_derived_build_then_noop_then_new_tag_on_package_change(registry, run_image_module, wheelhouse, derived_repo):
    args = _derived_args(registry, wheelhouse, derived_repo, ["gpufleet-testpkg==1.0"])
    check = run_image_module(args, check=True)
    assert check["changed"] is True and check["derived"] is True
    built = run_image_module(args, diff=True)
    assert built.get("failed") is not True, built.get("msg")
    assert built["changed"] is True and built["derived"] is True
    assert built["image"].startswith(f"{derived_repo}:v0.10.2-")
    assert check["image"] == built["image"]  # check mode predicted the same tag (base was present)
    assert built["packages"] == ["gpufleet-testpkg==1.0"]
    assert built["base_image"] == f"{registry['repo']}:v0.10.2"
    assert built["image_id"] == _image_id("docker", built["image"])
    labels = _labels("docker", built["image"])
    assert labels["gpufleet.image.base"] == built["base_image"]
    assert labels["gpufleet.image.base-id"] == built["base_image_id"]
    assert json.loads(labels["gpufleet.image.packages"]) == ["gpufleet-testpkg==1.0"]
    assert labels["org.opencontainers.image.version"] == "0.10.2"  # the base's labels are kept
    out = _engine(
        "docker",
        "run",
        "--rm",
        "--entrypoint",
        "python3",
        built["image"],
        "-c",
        "import gpufleet_testpkg, gpufleet_plugin, my_tool_parser; print(gpufleet_testpkg.VERSION, my_tool_parser.PARSER)",
    )
    assert out.stdout.split() == ["1.0", "gpufleet-test-parser"], out.stderr

    again = run_image_module(args)
    assert again["changed"] is False and again["actions"] == []
    assert again["image"] == built["image"] and again["image_id"] == built["image_id"]

    changed = run_image_module(_derived_args(registry, wheelhouse, derived_repo, ["gpufleet-testpkg==2.0"]))
    assert changed["changed"] is True and changed["image"] != built["image"]
    assert json.loads(_labels("docker", changed["image"])["gpufleet.image.packages"]) == ["gpufleet-testpkg==2.0"]


def test_push_builds_once_then_another_host_pulls(registry, run_image_module, wheelhouse, derived_repo):
    """push with a registry derived_repository (fleet_apply's image_registry): built and pushed once; a host without
    it (here: the local copy removed) pulls the same content-hashed tag instead of building it."""
    args = _derived_args(registry, wheelhouse, f"{registry['open']}/{derived_repo}", ["gpufleet-testpkg==1.0"])
    args["push"] = True
    built = run_image_module(args)
    assert built.get("failed") is not True, built.get("msg")
    assert built["pushed"] is True and "build_log_tail" in built
    tag, image_id = built["image"], built["image_id"]
    _rmi("docker", tag)
    pulled = run_image_module(args)
    assert pulled.get("failed") is not True, pulled.get("msg")
    assert pulled["changed"] is True and pulled["image"] == tag and pulled["image_id"] == image_id
    assert "build_log_tail" not in pulled and "pushed" not in pulled
    assert any(a.startswith(f"pulled {tag}") for a in pulled["actions"]), pulled["actions"]


def test_bad_package_string_is_refused_before_pull(registry, run_image_module, wheelhouse, derived_repo):
    ref = f"{registry['repo']}:v0.33.0"
    _rmi("docker", ref)
    args = _derived_args(registry, wheelhouse, derived_repo, ["good-pkg==1", "bad pkg ==", "--index-url=http://x"])
    args["version"] = "0.33.0"
    r = run_image_module(args)
    assert r["failed"] is True and r["failure_class"] == "bad_package"
    assert "'bad pkg =='" in r["msg"] and "'--index-url=http://x'" in r["msg"] and "good-pkg" not in r["msg"]
    assert _image_id("docker", ref) is None


def test_missing_plugin_file(registry, run_image_module, wheelhouse, derived_repo, tmp_path):
    args = _derived_args(registry, wheelhouse, derived_repo, [])
    missing = tmp_path / "nope.whl"
    args["plugins"] = [str(missing)]
    r = run_image_module(args)
    assert r["failed"] is True and r["failure_class"] == "bad_plugin"
    assert f"{missing}: no such file on the target" in r["msg"]


def test_build_failure_reports_the_log_tail(registry, run_image_module, wheelhouse, derived_repo):
    r = run_image_module(_derived_args(registry, wheelhouse, derived_repo, ["gpufleet-not-in-index==9.9"]))
    assert r["failed"] is True and r["failure_class"] == "build_failed"
    assert "last lines of the build log" in r["msg"]
    assert "No matching distribution found for gpufleet-not-in-index==9.9" in r["msg"]
    assert r["build_log_tail"]


# --- podman


@pytest.mark.podman
def test_podman_pull_noop_and_errors(registry, run_image_module, podman_socket):
    ref = f"{registry['repo']}:v0.8.5"
    _rmi("podman", ref)
    args = {"version": "0.8.5", "repository": registry["repo"], "runtime": "podman", "podman_socket": podman_socket}
    first = run_image_module(args)
    assert first.get("failed") is not True, first.get("msg")
    assert first["changed"] is True and first["runtime"] == "podman"
    assert first["image_id"] == _image_id("podman", ref)
    again = run_image_module(args)
    assert again["changed"] is False and again["image_id"] == first["image_id"]
    r = run_image_module({**args, "version": "0.1.0"})
    assert r["failed"] is True and r["failure_class"] == "not_found"
    r = run_image_module({**args, "repository": "127.0.0.1:5009/vllm/vllm-openai"})
    assert r["failed"] is True and r["failure_class"] == "registry_unreachable"
    r = run_image_module({**args, "repository": registry["auth_repo"]})
    assert r["failed"] is True and r["failure_class"] == "unauthorized"
    _rmi("podman", ref)


@pytest.mark.podman
def test_podman_derived_build_then_noop(registry, run_image_module, podman_socket, wheelhouse, derived_repo):
    args = _derived_args(registry, wheelhouse, derived_repo, ["gpufleet-testpkg==1.0"])
    args.update(runtime="podman", podman_socket=podman_socket)
    built = run_image_module(args)
    assert built.get("failed") is not True, built.get("msg")
    assert built["changed"] is True and built["derived"] is True
    assert built["image_id"] == _image_id("podman", built["image"])
    assert json.loads(_labels("podman", built["image"])["gpufleet.image.packages"]) == ["gpufleet-testpkg==1.0"]
    again = run_image_module(args)
    assert again["changed"] is False and again["image"] == built["image"]


def test_module_doc_renders(ansible_env):
    r = subprocess.run(
        ["ansible-doc", "-t", "module", "gpufleet.vllm.vllm_image"],
        capture_output=True,
        text=True,
        env=ansible_env,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "registry_password" in r.stdout


def _pids_with_arg(arg: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if arg.encode() in (proc / "cmdline").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.podman
def test_podman_service_is_started_when_no_socket_answers(registry, run_image_module, podman_images, tmp_path):
    sock = tmp_path / "podman.sock"
    url = f"unix://{sock}"
    try:
        r = run_image_module(
            {"version": "0.10.2", "repository": registry["repo"], "runtime": "podman", "podman_socket": url}
        )
        assert r.get("failed") is not True, r.get("msg")
        assert sock.is_socket()
        assert r["image_id"] == _image_id("podman", f"{registry['repo']}:v0.10.2")
        assert _pids_with_arg(url), "the service started by the module is not running"
    finally:
        for pid in _pids_with_arg(url):  # only the service this test made the module start
            os.kill(pid, signal.SIGTERM)
