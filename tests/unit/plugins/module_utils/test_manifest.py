from __future__ import annotations

import json

from ansible_collections.gpufleet.vllm.plugins.module_utils._container import manifest as mf
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cs


def _params(**kw):
    p = {o.name: o.default for o in cs.OPTIONS}
    p.update(name="t", image="vllm/vllm-openai:v0.10.2", model="/models/m", port=18000, seed=7, max_model_len=2048)
    p.update(kw)
    return p


def _manifest(p):
    spec, env, _secret_keys = cs.normalized_spec(p, "sha256:1")
    return mf.build(
        p,
        argv=spec["argv"],
        env_keys=list(env),
        image_ref=p["image"],
        image_id="sha256:1",
        image_digest="sha256:abcd",
        vllm_version="0.10.2",
        gpus=["0"],
        gpu_facts=[{"index": 0, "uuid": "GPU-x", "name": "H100", "memory_total_mib": 81559}],
        config_hash="h",
    )


def test_manifest_has_keys_not_secret_values():
    p = _params(api_key="canary-a", hf_token="canary-b", secret_env={"S": "canary-c"}, env={"PLAIN": "v"})
    m = _manifest(p)
    assert "canary" not in json.dumps(m)
    assert m["env_keys"] == ["HF_TOKEN", "PLAIN", "S", "VLLM_API_KEY"]
    assert m["engine_args"] == {"max_model_len": 2048, "seed": 7}
    assert m["gpus"][0]["name"] == "H100" and m["vllm_version"] == "0.10.2" and m["seed"] == 7
    assert m["manifest_version"] == mf.MANIFEST_VERSION


def test_write_is_atomic_and_idempotent(tmp_path):
    m = _manifest(_params())
    path, changed = mf.write(str(tmp_path / "d"), "t", m)
    assert changed and json.loads(open(path).read()) == m
    assert mf.write(str(tmp_path / "d"), "t", m) == (path, False)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["t.json"]
    assert mf.remove(str(tmp_path / "d"), "t") and not mf.remove(str(tmp_path / "d"), "t")


def test_manifest_feeds_back_into_params():
    p = _params(extra_args=["--x"], gpus=["0"])
    back = mf.params_from_manifest(_manifest(p))
    assert back["image"] == "vllm/vllm-openai@sha256:abcd"
    again = {**_params(), **back}
    s1 = cs.normalized_spec(p, "sha256:1")[0]
    s2 = cs.normalized_spec(again, "sha256:1")[0]
    assert s1["argv"] == s2["argv"] and s1["gpus"] == s2["gpus"]


def test_model_sync_commit_is_recorded(tmp_path):
    (tmp_path / ".gpufleet" / "manifests").mkdir(parents=True)
    (tmp_path / "m").mkdir()
    (tmp_path / ".gpufleet" / "manifests" / "m.json").write_text(json.dumps({"commit": "c0ffee", "source": "hf"}))
    m = _manifest(_params(model=str(tmp_path / "m")))
    assert m["commit"] == "c0ffee" and m["model_source"] == "hf"
