"""Model revisions and the smoke test (issue #15), through real ansible, dockerd and the stand-in: a new revision of
the weights goes into its own directory and rolls the container (the running one keeps its weights), the old
revision goes once its container left, a revision that loads but cannot answer one request is rolled back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from fixtures.container import inspect

pytestmark = pytest.mark.integration


def _write(ckpt: Path, name: str, data: bytes) -> None:
    """A checkpoint file written anew and renamed into place (a copy install hard-links the checkpoint's files)."""
    tmp = ckpt / f".{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, ckpt / name)


def _config(max_pos: int) -> bytes:
    return json.dumps(
        {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "max_position_embeddings": max_pos}
    ).encode()


def _served(port: int) -> dict:
    return requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["data"][0]


def test_revision_change_rolls_the_container_and_smoke_failure_rolls_back(
    ansible_run, deployment, standin_images, tmp_path
):
    ckpt = tmp_path / "ckpt" / "m"
    ckpt.mkdir(parents=True)
    _write(ckpt, "config.json", _config(4096))
    models_root = tmp_path / "models"
    sync_args = {
        "name": deployment["name"],
        "source": "local",
        "src": str(ckpt),
        "allowed_dirs": [str(tmp_path / "ckpt")],
        "models_root": str(models_root),
        "validate": False,
        "keep_revisions": 1,
    }
    c = {**deployment, "image": standin_images["0.10.2"], "gpus": ["0"], "served_model_name": [deployment["name"]]}
    cname = f"gpufleet-{deployment['name']}"

    def converge(**kw):
        s = ansible_run.run("model_sync", sync_args)
        assert s["_rc"] == 0, s["_output"]
        r = ansible_run.run("vllm_container", {**c, "model": s["path"], "model_revision": s["revision_id"], **kw})
        return s, r

    s1, r1 = converge()
    assert r1["_rc"] == 0 and r1["ready"], r1["_output"]
    p1 = s1["path"]
    assert p1 == str(models_root / deployment["name"] / s1["revision_id"])
    assert _served(c["port"])["root"] == p1

    # a new revision: installed beside the running one (check mode and diff say so first), then the container rolls
    _write(ckpt, "config.json", _config(2048))
    pred = ansible_run.run("model_sync", sync_args, check=True, diff=True, cli=True)
    assert pred["changed"] and pred["revision_id"] != s1["revision_id"] and s1["revision_id"] in pred["_output"]
    s2, r2 = converge()
    p2 = s2["path"]
    assert s2["changed"] and p2 != p1 and s2["removed_revisions"] == []
    assert (Path(p1) / "config.json").exists()  # kept while its container ran: never changed under it
    assert r2["_rc"] == 0 and r2["changed"] and r2["replaced"] and "model_revision" in r2["changed_keys"], r2["_output"]
    served = _served(c["port"])
    assert served["root"] == p2 and served["max_model_len"] == 2048
    assert p2 in [m["Source"] for m in inspect("docker", cname)["Mounts"]]

    # the old container left: the next sync removes the old revision; then everything is a no-op
    gone = ansible_run.run("model_sync", sync_args)
    assert gone["removed_revisions"] == [s1["revision_id"]] and not Path(p1).exists() and Path(p2).is_dir()
    s, r = converge()
    assert s["changed"] is False and r["changed"] is False, (s["_output"], r["_output"])

    # a revision that loads but fails one real request: smoke_failed, rolled back to the old container, which serves
    _write(ckpt, "standin-fail-completions", b"")
    old_id = inspect("docker", cname)["Id"]
    s3, r3 = converge()
    assert r3["_rc"] != 0 and r3["failure_class"] == "smoke_failed", r3["_output"]
    assert r3["rolled_back"] is True and r3["rollback_ready"] is True
    assert "POST /v1/completions" in r3["hint"] and "answered 500" in r3["hint"]
    assert inspect("docker", cname)["Id"] == old_id and _served(c["port"])["root"] == p2
    ok = requests.post(
        f"http://127.0.0.1:{c['port']}/v1/completions",
        json={"model": deployment["name"], "prompt": "hi", "max_tokens": 1},
        timeout=5,
    )
    assert ok.status_code == 200
    # the revision the old container runs stays installed (mounted), the failed one too (the current one)
    assert Path(p2).is_dir() and Path(s3["path"]).is_dir()
    # back to the serving revision: a no-op for the container
    (ckpt / "standin-fail-completions").unlink()
    s4 = ansible_run.run("model_sync", sync_args)
    assert s4["revision_id"] == s2["revision_id"] and s4["changed"]  # installed already: current again, no copy
    r4 = ansible_run.run("vllm_container", {**c, "model": s4["path"], "model_revision": s4["revision_id"]})
    assert r4["_rc"] == 0 and r4["changed"] is False, r4["_output"]
