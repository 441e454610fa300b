"""vllm_image's state machine with a fake engine (pull policies, check mode, diff, derived no-op) and the
classification of engine/registry error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine import docker as ie
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._image.ensure import ensure_image

DATA = Path(__file__).parent / "data"
ID_A = "sha256:" + "a" * 64
ID_B = "sha256:" + "b" * 64


class FakeEngine:
    name = "docker"

    def __init__(self, images: dict[str, str] | None = None, registry: dict[str, str] | None = None):
        self.images = dict(images or {})  # ref -> id
        self.registry = dict(registry or {})  # ref -> id
        self.calls: list[tuple] = []
        self.stream: list[dict] = []  # the pull stream's events (a recorded one: data/pull_stream_*.jsonl)

    def inspect_image(self, ref):
        self.calls.append(("inspect_image", ref))
        i = self.images.get(ref)
        return {"Id": i, "RepoDigests": [f"{ref.rsplit(':', 1)[0]}@sha256:{'d' * 64}"]} if i else None

    def pull(self, repo, tag, auth=None, progress=None):
        self.calls.append(("pull", repo, tag, auth))
        ref = f"{repo}:{tag}"
        if ref not in self.registry:
            raise ie.pull_error(ref, "manifest unknown: manifest unknown")
        for event in self.stream if progress else []:
            progress(event)
        self.images[ref] = self.registry[ref]

    def push(self, repo, tag, auth=None):
        self.calls.append(("push", f"{repo}:{tag}"))
        self.registry[f"{repo}:{tag}"] = self.images[f"{repo}:{tag}"]

    def build(self, ctx, tag):
        self.calls.append(("build", tag, (Path(ctx) / "Dockerfile").read_text()))
        self.images[tag] = "sha256:" + "c" * 64
        return ["Step 1/4 : FROM x", "Successfully built"]


def run(params, engine, check=False):
    p = {"repository": "vllm/vllm-openai", "pull": "missing", **params}
    return ensure_image(p, check, lambda: engine)


def test_missing_pulls_once_then_noop():
    e = FakeEngine(registry={"vllm/vllm-openai:v0.10.2": ID_A})
    r, w = run({"version": "0.10.2"}, e)
    assert r["changed"] is True and r["image_id"] == ID_A and w == []
    assert r["diff"]["before"]["image_id"] is None and r["diff"]["after"]["image_id"] == ID_A
    e.calls.clear()
    r, _warnings = run({"version": "0.10.2"}, e)
    assert r["changed"] is False and r["actions"] == []
    assert [c[0] for c in e.calls] == ["inspect_image"]


def test_always_changed_only_when_id_changes():
    e = FakeEngine(images={"vllm/vllm-openai:v0.10.2": ID_A}, registry={"vllm/vllm-openai:v0.10.2": ID_A})
    r, _warnings = run({"version": "0.10.2", "pull": "always"}, e)
    assert r["changed"] is False and ("pull", "vllm/vllm-openai", "v0.10.2", None) in e.calls
    e.registry["vllm/vllm-openai:v0.10.2"] = ID_B
    r, _warnings = run({"version": "0.10.2", "pull": "always"}, e)
    assert r["changed"] is True and r["diff"]["before"]["image_id"] == ID_A and r["diff"]["after"]["image_id"] == ID_B


def test_never_fails_when_absent_and_never_pulls():
    e = FakeEngine(registry={"vllm/vllm-openai:v0.10.2": ID_A})
    with pytest.raises(GpufleetError) as err:
        run({"version": "0.10.2", "pull": "never"}, e)
    assert err.value.details["failure_class"] == "not_present"
    assert not [c for c in e.calls if c[0] == "pull"]


def test_check_mode_touches_nothing():
    e = FakeEngine(registry={"vllm/vllm-openai:v0.10.2": ID_A})
    r, _warnings = run({"version": "0.10.2"}, e, check=True)
    assert r["changed"] is True and r["actions"] == ["pull vllm/vllm-openai:v0.10.2"]
    assert [c[0] for c in e.calls] == ["inspect_image"]


def test_check_mode_always_with_image_present_is_not_a_change():
    e = FakeEngine(images={"vllm/vllm-openai:v0.10.2": ID_A})
    r, _warnings = run({"version": "0.10.2", "pull": "always"}, e, check=True)
    assert r["changed"] is False and r["actions"][0].startswith("pull vllm/vllm-openai:v0.10.2")


def test_bad_input_fails_before_the_engine_is_created():
    def factory():
        raise AssertionError("engine created")

    for params in ({"version": "0.10"}, {"version": "0.10.2", "extra_pip_packages": ["a b"]}):
        with pytest.raises(GpufleetError):
            ensure_image({"repository": "vllm/vllm-openai", "pull": "missing", **params}, False, factory)


def test_credentials_passed_with_server_address():
    e = FakeEngine(registry={"reg.example.com:5000/v/o:v0.10.2": ID_A})
    run(
        {
            "version": "0.10.2",
            "repository": "reg.example.com:5000/v/o",
            "registry_username": "u",
            "registry_password": "p",
        },
        e,
    )
    pulls = [c for c in e.calls if c[0] == "pull"]
    assert pulls[0][3] == {"username": "u", "password": "p", "serveraddress": "reg.example.com:5000"}
    with pytest.raises(GpufleetError, match="registry_password is not"):
        run({"version": "0.10.2", "registry_username": "u"}, FakeEngine())


def test_derived_build_then_noop(tmp_path: Path):
    plug = tmp_path / "p.py"
    plug.write_text("x = 1\n")
    e = FakeEngine(images={"vllm/vllm-openai:v0.10.2": ID_A})
    params = {"version": "0.10.2", "extra_pip_packages": ["b==1", "a==2"], "plugins": [str(plug)]}
    check, _warnings = run(params, e, check=True)
    assert check["changed"] is True and check["actions"][0].startswith(f"build {check['image']} FROM")
    assert not [c for c in e.calls if c[0] == "build"]
    r, _warnings = run(params, e)
    assert r["changed"] is True and r["derived"] is True and r["image"] == check["image"]
    assert r["packages"] == ["a==2", "b==1"] and r["plugins"] == ["p.py"]
    (build,) = [c for c in e.calls if c[0] == "build"]
    assert build[2].startswith("FROM vllm/vllm-openai:v0.10.2\n")
    e.calls.clear()
    r2, _warnings = run({**params, "extra_pip_packages": ["a==2", "b==1"]}, e)
    assert r2["changed"] is False and r2["image"] == r["image"] and r2["actions"] == []
    assert not [c for c in e.calls if c[0] == "build"]


def test_derived_check_mode_with_base_missing():
    e = FakeEngine(registry={"vllm/vllm-openai:v0.10.2": ID_A})
    r, _warnings = run({"version": "0.10.2", "extra_pip_packages": ["a==1"]}, e, check=True)
    assert r["changed"] is True and r["image"] is None and len(r["actions"]) == 2


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        (
            'Get "https://127.0.0.1:5009/v2/": dial tcp 127.0.0.1:5009: connect: connection refused',
            "registry_unreachable",
        ),
        ("Get https://registry-1.docker.io/v2/: net/http: TLS handshake timeout", "registry_unreachable"),
        ("dial tcp: lookup nohost.invalid: no such host", "registry_unreachable"),
        ("unauthorized: authentication required", "unauthorized"),
        ("Head https://r/v2/x/manifests/1: no basic auth credentials", "unauthorized"),
        ("manifest for r/x:1 not found: manifest unknown: manifest unknown", "not_found"),
        ("pull access denied for x, repository does not exist or may require 'docker login'", "not_found"),
        ("something else entirely", "pull_failed"),
    ],
)
def test_classify_pull_error(message, cls):
    assert ie.classify_pull_error(message) == cls
    err = ie.pull_error("r/x:1", message)
    assert "r/x:1" in str(err) and err.details["failure_class"] == cls


def test_vllm_image_reports_the_pull_and_removes_its_file(tmp_path: Path) -> None:
    e = FakeEngine(registry={"vllm/vllm-openai:v0.10.2": ID_A})
    e.stream = [json.loads(x) for x in (DATA / "pull_stream_docker.jsonl").read_text().splitlines()]
    params = {"repository": "vllm/vllm-openai", "pull": "missing", "version": "0.10.2", "progress_dir": str(tmp_path)}
    r, _warnings = ensure_image(params, False, lambda: e)
    total = 3001126 + 1500650  # the two layers of the recorded pull
    assert r["pull_progress"]["bytes_done"] == total and r["pull_progress"]["phase"] == "done"
    assert list(tmp_path.iterdir()) == []
    again, _warnings = ensure_image(params, False, lambda: e)
    assert "pull_progress" not in again  # nothing pulled


def test_push_builds_once_and_the_other_hosts_pull(tmp_path):
    """With push and a registry derived_repository: the first host builds and pushes, a second host (its own engine,
    same registry, same inputs: same content-hashed tag) pulls it instead of building; check mode touches nothing."""
    registry = {"vllm/vllm-openai:v0.10.2": ID_A}
    params = {
        "version": "0.10.2",
        "extra_pip_packages": ["a==1"],
        "derived_repository": "127.0.0.1:5000/gpufleet/vllm-openai",
        "push": True,
    }
    first = FakeEngine(registry=registry)
    r1, _w = run(params, first)
    tag = r1["image"]
    assert tag.startswith("127.0.0.1:5000/gpufleet/vllm-openai:v0.10.2-") and r1["pushed"] is True
    assert [c[0] for c in first.calls if c[0] in ("build", "push")] == ["build", "push"]
    assert first.registry[tag] == r1["image_id"]
    second = FakeEngine(images={"vllm/vllm-openai:v0.10.2": ID_A}, registry=first.registry)  # base already here
    preview, _w = run(params, second, check=True)
    assert preview["changed"] is True and "or pull it if another host pushed it" in " ".join(preview["actions"])
    assert not [c for c in second.calls if c[0] in ("pull", "build", "push")]
    r2, _w = run(params, second)
    assert r2["image"] == tag and r2["image_id"] == r1["image_id"] and r2["changed"] is True
    assert not [c for c in second.calls if c[0] in ("build", "push")] and "pushed" not in r2
    assert any(a.startswith(f"pulled {tag}") for a in r2["actions"])
    again, _w = run(params, second)
    assert again["changed"] is False
