"""vllm_container: pull: missing, the phases seen, from_manifest and the no-op fast path, against an in-memory engine."""

from __future__ import annotations

import json

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import deployment as ct
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import manifest as mf
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import prechecks as pc
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cs
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ImageInfo
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import args as vllm_args
from fixtures.fake_runtime import FakeRuntime

from .test_runtime_state_machine import GPU, facts

IMG = ImageInfo(id="sha256:img", entrypoint=["vllm", "serve"], labels={"org.opencontainers.image.version": "0.10.2"})


class PullRuntime(FakeRuntime):
    """FakeRuntime whose images are absent until pulled; ``fail`` makes the pull fail like a registry would."""

    def __init__(self, fail: str | None = None):
        super().__init__()
        self.images: dict[str, ImageInfo] = {}
        self.pulls: list[tuple[str, str]] = []
        self.fail = fail

    def image(self, ref):
        return self.images.get(ref)

    def pull(self, repository, tag, auth=None, progress=None):
        self.pulls.append((repository, tag))
        self.calls.append("pull")
        if self.fail:
            raise GpufleetError(f"cannot pull {repository}:{tag}: {self.fail}", failure_class="not_found")
        sep = "@" if tag.startswith("sha256:") else ":"
        self.images[f"{repository}{sep}{tag}"] = IMG


@pytest.fixture
def env(monkeypatch, tmp_path):
    def wait_ready(runtime, cid, base, api_key, timeout, secrets=None, follow=True, smoke=None):
        return rd.Outcome(
            True, "ready", 0.1, models=["m"], health_ok_at=1.0, phases=["starting", "loading_weights", "ready"]
        )

    monkeypatch.setattr(rd, "wait_ready", wait_ready)
    monkeypatch.setattr(rd, "models", lambda base, key: ["m"])
    monkeypatch.setattr(pc, "port_in_use", lambda host, port: False)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    return tmp_path


def P(tmp, **kw):
    p = {o.name: o.default for o in cs.OPTIONS}
    p.update(
        name="t", image="127.0.0.1:5000/vllm/vllm-openai:v0.10.2", model=str(tmp / "model"), port=18000,
        host="127.0.0.1", manifest_dir=str(tmp / "manifests"), hf_cache_dir=str(tmp / "hf"),
        compile_cache_dir=str(tmp / "cc"), gpus=["0"],
    )  # fmt: skip
    p.update(kw)
    return p


def run(rt, tmp, check=False, warn=None, **kw):
    return ct.Deployment(P(tmp, **kw), rt, check, warn, gpu_facts_fn=facts(GPU(0), GPU(1))).run()


# ---------------------------------------------------------------------------------------------------- pull
def test_absent_image_is_a_precheck_error_by_default(env):
    rt = PullRuntime()
    with pytest.raises(GpufleetError) as e:
        run(rt, env)
    assert e.value.details["precheck"] == "image_absent" and "gpufleet.vllm.vllm_image" in e.value.msg
    assert "pull: missing" in e.value.msg and rt.calls == []


def test_pull_missing_check_mode_then_real_run(env):
    rt = PullRuntime()
    pred = run(rt, env, check=True, pull="missing")
    ref = "127.0.0.1:5000/vllm/vllm-openai:v0.10.2"
    assert pred["changed"] and pred["actions"][0] == f"pull {ref}" and pred["phases"] == ["pulling"]
    assert rt.calls == [] and rt.images == {}
    # the argv is predicted from the tag's version (0.10.2: vllm serve, positional model)
    assert pred["argv"][0] == str(env / "model") and pred["vllm_version"] == "0.10.2"
    real = run(rt, env, pull="missing")
    assert rt.pulls == [("127.0.0.1:5000/vllm/vllm-openai", "v0.10.2")]
    assert real["actions"][: len(pred["actions"])] == pred["actions"]
    assert real["phases"] == ["pulling", "starting", "loading_weights", "ready"] and real["ready"]
    assert real["argv"] == pred["argv"]
    again = run(rt, env, pull="missing")
    assert again["changed"] is False and "phases" not in again and rt.pulls == [rt.pulls[0]]


def test_pull_by_digest_and_old_tag_predicts_api_server_argv(env):
    rt = PullRuntime()
    digest = "sha256:" + "a" * 64
    pred = run(
        rt, env, check=True, pull="missing", image=f"reg.example/vllm/vllm-openai@{digest}", vllm_version="0.8.5"
    )
    assert pred["argv"][:2] == ["--model", str(env / "model")]
    run(rt, env, pull="missing", image=f"reg.example/vllm/vllm-openai@{digest}")
    assert rt.pulls == [("reg.example/vllm/vllm-openai", digest)]


def test_pull_failure_reports_phase_and_touches_nothing(env):
    rt = PullRuntime(fail="manifest unknown")
    with pytest.raises(GpufleetError) as e:
        run(rt, env, pull="missing")
    d = e.value.details
    assert d["failure_class"] == "not_found" and d["phase"] == "pulling" and d["phases"] == ["pulling"]
    assert rt.calls == ["pull"]


def test_prechecks_that_need_no_image_run_before_the_pull(env):
    rt = PullRuntime()
    with pytest.raises(GpufleetError) as e:
        run(rt, env, pull="missing", tensor_parallel_size=2)
    assert "tp_mismatch" in e.value.details["precheck"] and rt.pulls == []


# ---------------------------------------------------------------------------------------------------- no-op path
def test_noop_skips_the_flag_tables_and_a_change_still_maps_them(env, monkeypatch):
    rt = FakeRuntime()
    first = run(rt, env, image="img", max_model_len=2048, seed=3)
    cur = rt.container("gpufleet-t")
    assert cur.labels[lb.ARGV_FLAGS] == "0.10.2|max_model_len,seed"
    calls = []
    real_flag_for = vllm_args.flag_for

    def spy(*a, **kw):
        calls.append(a)
        return real_flag_for(*a, **kw)

    monkeypatch.setattr(vllm_args, "flag_for", spy)
    noop = run(rt, env, image="img", max_model_len=2048, seed=3)
    assert noop["changed"] is False and calls == [] and noop["config_hash"] == first["config_hash"]
    # the same result as the full path (flag tables loaded, argv mapped) gives
    with monkeypatch.context() as m:
        m.setattr(cs, "argv_flags_marker", lambda params, version: "no match")
        full = run(rt, env, image="img", max_model_len=2048, seed=3)
    assert calls and full == noop
    calls.clear()
    # another option set: the tables are used (and a missing option is still bad_args)
    changed = run(rt, env, image="img", max_model_len=4096, seed=3, dtype="half")
    assert changed["changed"] and calls
    with pytest.raises(GpufleetError, match="bad_args: option swap_space"):
        run(rt, env, image="img", swap_space=4, vllm_version="0.33.0")


def test_label_without_marker_takes_the_full_path(env, monkeypatch):
    rt = FakeRuntime()
    run(rt, env, image="img", max_model_len=2048)
    cur = rt.container("gpufleet-t")
    del rt.c[cur.id]["labels"][lb.ARGV_FLAGS]  # a container of an older release
    calls = []
    real_flag_for = vllm_args.flag_for
    monkeypatch.setattr(vllm_args, "flag_for", lambda *a, **kw: calls.append(a) or real_flag_for(*a, **kw))
    assert run(rt, env, image="img", max_model_len=2048)["changed"] is False and calls


# ---------------------------------------------------------------------------------------------------- manifests
def _written(rt, tmp, **kw):
    r = run(rt, tmp, image="img", **kw)
    with open(r["manifest_path"]) as f:
        return r, json.load(f)


def test_params_from_manifest_maps_every_recorded_parameter(env):
    rt = FakeRuntime()
    lora = env / "lora"
    lora.mkdir()
    kw = dict(
        max_model_len=2048, seed=7, served_model_name=["a", "b"], enable_prefix_caching=False, extra_args=["--max-num-seqs", "8"],
        lora_modules=[{"name": "l", "path": str(lora)}], sleep_mode=True, gpus=["1"], port=18001,
    )  # fmt: skip
    _r, m = _written(rt, env, **kw)
    back = mf.params_from_manifest(m)
    assert back == {
        "name": "t", "image": "img", "model": str(env / "model"), "runtime": "docker", "host": "127.0.0.1",
        "port": 18001, "gpus": ["1"], "extra_args": ["--max-num-seqs", "8"], "lora_modules": [{"name": "l", "path": str(lora)}],
        "sleep_mode": True, "max_model_len": 2048, "seed": 7, "served_model_name": ["a", "b"],
        "enable_prefix_caching": False,
    }  # fmt: skip
    assert set(back) <= set(mf.MANIFEST_PARAMS)


def test_pinned_image_uses_the_registry_digest():
    d = "sha256:" + "b" * 64
    assert mf.pinned_image("127.0.0.1:5000/vllm/vllm-openai:v1", d) == f"127.0.0.1:5000/vllm/vllm-openai@{d}"
    assert mf.pinned_image("127.0.0.1:5000/vllm/vllm-openai", d) == f"127.0.0.1:5000/vllm/vllm-openai@{d}"
    assert mf.pinned_image("vllm/vllm-openai:v1", None) == "vllm/vllm-openai:v1"


def test_merge_explicit_parameters_win_and_defaults_do_not(env):
    m = {
        "manifest_version": 1, "name": "a", "image": "img", "model": "/m", "port": 18001, "host": "0.0.0.0",
        "runtime": "podman", "engine_args": {"seed": 7}, "gpus": [{"id": "0"}], "env_keys": ["VLLM_API_KEY", "X"],
    }  # fmt: skip
    params = P(env, name="b", port=8000, runtime="docker", api_key="k", from_manifest="/x.json")
    # explicit list known: port 8000 (the default value) was given and wins; runtime was not
    out, warnings = mf.merge(params, m, explicit={"name", "port", "api_key", "from_manifest"})
    assert (out["name"], out["port"], out["runtime"], out["seed"], out["gpus"]) == ("b", 8000, "podman", 7, ["0"])
    assert out["from_manifest"] is None and out["model"] == "/m"
    assert warnings and "X" in warnings[0] and "VLLM_API_KEY" not in warnings[0]
    # unknown: only values other than the defaults count as given
    out, _w = mf.merge(params, m)
    assert (out["name"], out["port"], out["runtime"]) == ("b", 18001, "podman")


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "does not exist on this host"),
        ("{not json", "is not JSON"),
        (json.dumps({"name": "a"}), "not a gpufleet reproducibility manifest"),
        (json.dumps({"manifest_version": 2, "name": "a", "image": "i", "model": "m"}), "manifest_version 2"),
        (json.dumps({"manifest_version": 1, "name": "a", "model": "m"}), "lacks image"),
        (json.dumps({"manifest_version": 1, "name": "a", "image": "i", "model": "m", "engine_args": {"zz": 1}}), "zz"),
    ],
)
def test_read_fails_clearly(tmp_path, content, match):
    path = tmp_path / "m.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(GpufleetError, match=match) as e:
        mf.read(str(path))
    assert e.value.msg.startswith("from_manifest: ")


def test_unreadable_manifest(tmp_path):
    path = tmp_path / "dir.json"
    path.mkdir()
    with pytest.raises(GpufleetError, match="cannot read"):
        mf.read(str(path))


def test_deploy_from_manifest_under_another_name_and_port(env):
    rt = FakeRuntime()
    a, ma = _written(rt, env, max_model_len=2048, seed=7, env={"MY": "1"}, api_key="secret-a")
    warnings: list[str] = []
    params = P(env, from_manifest=a["manifest_path"], name="b", port=18002, env={"MY": "1"}, api_key="secret-b")
    params["image"] = params["model"] = params["gpus"] = None
    b = ct.Deployment(params, rt, False, warnings.append, gpu_facts_fn=facts(GPU(0))).run()
    assert b["changed"] and warnings == []
    assert [x for x in b["argv"] if x != "18002"] == [x for x in a["argv"] if x != "18000"]
    with open(b["manifest_path"]) as f:
        mb = json.load(f)
    skip = {"name", "port", "created_at", "hostname", "config_hash", "argv"}
    assert {k: v for k, v in mb.items() if k not in skip} == {k: v for k, v in ma.items() if k not in skip}
    assert "secret" not in json.dumps(mb)
    # the module resolves the manifest first; feeding the result again is the same (from_manifest cleared)
    again, _w = mf.apply_manifest(dict(params, name="b", port=18002), explicit={"name", "port", "from_manifest"})
    assert again["from_manifest"] is None and mf.apply_manifest(again) == (again, [])
    noop = ct.Deployment(again, rt, False, warnings.append, gpu_facts_fn=facts(GPU(0))).run()
    assert noop["changed"] is False
    # The manifest itself (read on the controller) gives the same parameters as its file on the host.
    given, _w = mf.apply_manifest(dict(params, from_manifest=ma), explicit={"name", "port", "from_manifest"})
    assert given == again
    with pytest.raises(GpufleetError, match="the manifest given"):
        mf.apply_manifest(dict(params, from_manifest={"name": "x"}))
    with pytest.raises(GpufleetError, match="a dict"):
        mf.apply_manifest(dict(params, from_manifest=["x"]))


def test_name_comes_from_the_manifest_and_runtime_must_match(env):
    rt = FakeRuntime()
    a, _m = _written(rt, env)
    params = P(env, from_manifest=a["manifest_path"], name=None, port=18003)
    r = ct.Deployment(params, rt, True, gpu_facts_fn=facts(GPU(0)), explicit={"from_manifest", "port"}).run()
    assert r["container_name"] == "gpufleet-t"
    with pytest.raises(GpufleetError, match="name is required"):
        ct.Deployment(P(env, name=None), rt, True)

    class Docker(FakeRuntime):
        name = "docker"

    with open(a["manifest_path"]) as f:
        m = json.load(f)
    m["runtime"] = "podman"
    path = env / "podman.json"
    path.write_text(json.dumps(m))
    with pytest.raises(GpufleetError, match="runtime podman but the engine adapter is docker"):
        ct.Deployment(P(env, from_manifest=str(path)), Docker(), True, explicit={"from_manifest"})
