"""gpufleet.vllm.model_sync sources beyond the hub (issue #19): s3 against a local S3 (moto's server on loopback,
signatures enforced, a fault proxy that serves objects short), hf_cache (a real huggingface_hub cache filled from the
fake hub), and a `sources` order that reports which one served. The module runs as a plain process (what
AnsiballZ runs) with its JSON result; one run goes through real ansible to check the credentials never show."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import s3 as s3src
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import store

pytestmark = pytest.mark.integration


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    }


def _bucket(s3_server, model_gen, *, seed: int = 0, multipart: bool = True) -> tuple[str, dict[str, bytes]]:
    """A new bucket holding a generated model under models/m/ (one shard uploaded in several parts)."""
    bucket = f"b-{_uid()}"
    c = s3_server.client()
    c.create_bucket(Bucket=bucket)
    files = {k: v for k, v in model_gen.model_files(shards=2, shard_bytes=6 << 20, seed=seed).items()}
    files = {k: (v if isinstance(v, bytes) else Path(v).read_bytes()) for k, v in files.items()}
    for rel, data in files.items():
        key = f"models/m/{rel}"
        if multipart and rel.endswith("00001-of-00002.safetensors"):
            up = c.create_multipart_upload(Bucket=bucket, Key=key)
            parts = []
            for i, off in enumerate(range(0, len(data), 5 << 20), start=1):
                r = c.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=i,
                                  Body=data[off : off + (5 << 20)])  # fmt: skip
                parts.append({"ETag": r["ETag"], "PartNumber": i})
            c.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                        MultipartUpload={"Parts": parts})  # fmt: skip
        else:
            c.put_object(Bucket=bucket, Key=key, Body=data)
    return bucket, files


def _args(s3_server, bucket: str, root: Path, **kw) -> dict:
    return {"name": "m", "source": "s3", "s3_url": f"s3://{bucket}/models/m", "endpoint_url": s3_server.url,
            "region": "us-east-1", "models_root": str(root), **s3_server.credentials, **kw}  # fmt: skip


def test_s3_sync_noop_and_changed_object(s3_server, model_sync, model_gen, tmp_path):
    bucket, files = _bucket(s3_server, model_gen)
    etags = {o["Key"]: o["ETag"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert any("-" in e for e in etags.values()), "one object is multipart (its ETag is not an MD5)"
    check = model_sync.direct(_args(s3_server, bucket, tmp_path), tmp_path / "w", check=True).result
    assert check["changed"] and check["download_bytes"] == check["size_bytes"] > 0 and check["free_bytes"] > 0, check
    assert check["would_download"] == sorted(files)
    assert not (tmp_path / "m").exists()
    run = model_sync.direct(_args(s3_server, bucket, tmp_path), tmp_path / "w")
    r = run.result
    assert not r.get("failed"), run.output
    assert r["changed"] and r["served_by"] == "s3" and r["revision_id"].startswith("s3-")
    assert r["path"] == str(tmp_path / "m" / r["revision_id"])
    want = {k: hashlib.sha256(v).hexdigest() for k, v in files.items() if not k.startswith(".")}
    assert _tree(Path(r["path"])) == want  # (dot files are fetched too, but never listed: list_tree's rule)
    assert r["validation"]["ok"] and set(r["timings"]) >= {"download", "validate", "fsync", "swap"}
    manifest = store.read_manifest(str(tmp_path), "m")
    assert manifest["served_by"] == "s3" and manifest["s3_url"] == f"s3://{bucket}/models/m"
    assert s3_server.credentials["aws_secret_access_key"] not in run.output
    assert s3_server.credentials["aws_secret_access_key"] not in (tmp_path / ".gpufleet").joinpath(
        "manifests", "m.json").read_text()  # fmt: skip
    assert not list((tmp_path / ".gpufleet" / "staging").iterdir())

    again = model_sync.direct(_args(s3_server, bucket, tmp_path), tmp_path / "w").result
    assert again["changed"] is False and again["revision_id"] == r["revision_id"] and again["served_by"] == "s3"

    # a changed object (same key, same size, new content: only its ETag differs) is a new revision beside the old
    key = "models/m/model-00002-of-00002.safetensors"
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=model_gen.safetensors_bytes(6 << 20, 99, "x.weight"))
    new = model_sync.direct(_args(s3_server, bucket, tmp_path), tmp_path / "w").result
    assert new["changed"] and new["revision_id"] != r["revision_id"], new
    assert Path(r["path"]).is_dir() and Path(new["path"]).is_dir()  # the old revision stays for its containers


def test_s3_wrong_credentials_through_ansible(s3_server, model_sync, model_gen, tmp_path):
    bucket, _ = _bucket(s3_server, model_gen, multipart=False)
    wrong = "wrong-secret-" + _uid()
    args = _args(s3_server, bucket, tmp_path, aws_secret_access_key=wrong)
    run = model_sync.ansible(args)
    assert run.failed and run.result["failure_class"] == "s3_auth", run.output
    assert "SignatureDoesNotMatch" in run.result["msg"]
    assert wrong not in run.output and s3_server.credentials["aws_access_key_id"] not in run.output
    unknown = model_sync.direct({**args, "aws_access_key_id": "AKIAUNKNOWN0000", "aws_secret_access_key": wrong},
                                tmp_path / "w").result  # fmt: skip
    assert unknown["failed"] and unknown["failure_class"] == "s3_auth" and "InvalidAccessKeyId" in unknown["msg"]
    assert not (tmp_path / "m").exists()


def test_s3_missing_prefix_and_object_gone_or_replaced(s3_server, model_sync, model_gen, tmp_path):
    bucket, _ = _bucket(s3_server, model_gen, multipart=False)
    r = model_sync.direct({**_args(s3_server, bucket, tmp_path), "s3_url": f"s3://{bucket}/models/nope"},
                          tmp_path / "w").result  # fmt: skip
    assert r["failed"] and r["failure_class"] == "s3_not_found" and "holds no object" in r["msg"]
    nob = model_sync.direct({**_args(s3_server, bucket, tmp_path), "s3_url": f"s3://nobucket-{_uid()}/m"},
                            tmp_path / "w").result  # fmt: skip
    assert nob["failed"] and nob["failure_class"] == "s3_not_found", nob

    # between the listing and the download: a replaced object fails its If-Match (412), a deleted one is gone
    client = s3src.client({"endpoint_url": s3_server.url, "region": "us-east-1", **s3_server.credentials})
    objects = s3src.list_objects(client, bucket, "models/m")
    shard = "model-00001-of-00002.safetensors"
    s3_server.client().put_object(Bucket=bucket, Key=f"models/m/{shard}", Body=b"replaced")
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(GpufleetError) as err:
        s3src.download(client, bucket, objects, str(staging), max_workers=2)
    assert err.value.details["failure_class"] == "s3_changed" and shard in err.value.msg
    assert not (staging / ".gpufleet-partial").exists() and not (staging / shard).exists()
    s3_server.client().delete_object(Bucket=bucket, Key=f"models/m/{shard}")
    with pytest.raises(GpufleetError) as err:
        s3src.download(client, bucket, objects, str(staging), max_workers=2)
    assert err.value.details["failure_class"] == "s3_not_found"


def test_s3_truncated_object_keeps_installed_model(s3_server, model_sync, model_gen, tmp_path):
    bucket, _ = _bucket(s3_server, model_gen, multipart=False)
    args = _args(s3_server, bucket, tmp_path, endpoint_url=s3_server.proxy_url)
    first = model_sync.direct(args, tmp_path / "w").result
    assert first["changed"] and not first.get("failed"), first
    before = _tree(Path(first["path"]))
    s3_server.client().put_object(Bucket=bucket, Key="models/m/config.json", Body=b'{"model_type": "llama", "x": 1}')
    s3_server.truncate(f"{bucket}/models/m/model-00002-of-00002.safetensors")
    try:
        r = model_sync.direct(args, tmp_path / "w").result
    finally:
        s3_server.truncate()
    assert r["failed"] and r["failure_class"] == "s3_truncated" and "came back short" in r["msg"], r
    assert store.read_manifest(str(tmp_path), "m")["revision_id"] == first["revision_id"]
    assert _tree(Path(first["path"])) == before
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [first["revision_id"]]


@pytest.mark.parametrize("key", ["models/m/../x", "models/m//abs", "models/m/.gpufleet-partial/x"])
def test_s3_hostile_keys_refused(s3_server, model_sync, tmp_path, key):
    bucket = f"h-{_uid()}"
    c = s3_server.client()
    c.create_bucket(Bucket=bucket)
    c.put_object(Bucket=bucket, Key="models/m/config.json", Body=b"{}")
    c.put_object(Bucket=bucket, Key=key, Body=b"evil")
    r = model_sync.direct(_args(s3_server, bucket, tmp_path), tmp_path / "w").result
    assert r["failed"] and r["failure_class"] == "bad_source" and "refused before anything was written" in r["msg"], r
    assert not (tmp_path / "m").exists() and not (tmp_path / "x").exists()
    assert not (tmp_path / ".gpufleet" / "staging").exists() or not list((tmp_path / ".gpufleet" / "staging").iterdir())


# ---------------------------------------------------------------- hf_cache and the order of sources


def _fill_cache(fake_hub, cache: Path, repo: str) -> str:
    from huggingface_hub import snapshot_download

    path = snapshot_download(repo, cache_dir=str(cache), endpoint=fake_hub.url, token=False)
    return Path(path).name


def test_hf_cache_hard_links_and_is_the_hubs_revision(fake_hub, model_sync, tmp_path):
    repo = f"org/c-{_uid()}"
    sha = fake_hub.make_repo(repo, shards=2)
    cache = tmp_path / "hf-cache"
    assert _fill_cache(fake_hub, cache, repo) == sha
    root = tmp_path / "models"
    args = {"name": "m", "source": "hf_cache", "repo_id": repo, "hf_cache_dir": str(cache), "models_root": str(root)}
    r = model_sync.direct(args, tmp_path / "w").result
    assert not r.get("failed") and r["changed"] and r["served_by"] == "hf_cache", r
    assert r["revision_id"] == sha and r["commit"] == sha and r["copy"]["copied"] == 0
    shard = Path(r["path"]) / "model-00001-of-00002.safetensors"
    blob = (cache / f"models--{repo.replace('/', '--')}" / "snapshots" / sha / shard.name).resolve()
    assert shard.stat().st_ino == blob.stat().st_ino and not shard.is_symlink()  # a hard link: no byte copied
    again = model_sync.direct(args, tmp_path / "w").result
    assert again["changed"] is False
    hub = model_sync.direct({**args, "source": "hf", "hf_endpoint": fake_hub.url}, tmp_path / "w").result
    assert hub["changed"] is False and hub["revision_id"] == sha  # the same commit from the hub: the same revision


def test_sources_order_reports_who_served_and_why_others_failed(s3_server, fake_hub, model_sync, model_gen, tmp_path):
    bucket, _ = _bucket(s3_server, model_gen, multipart=False)
    repo = f"org/o-{_uid()}"
    fake_hub.make_repo(repo, shards=1)
    (tmp_path / "ckpt").mkdir()
    args = {k: v for k, v in _args(s3_server, bucket, tmp_path / "models").items() if k != "source"}
    args = {**args,
            "sources": ["local", "hf_cache", "s3", "hub"], "src": str(tmp_path / "ckpt" / "absent"),
            "allowed_dirs": [str(tmp_path / "ckpt")], "repo_id": repo, "hf_cache_dir": str(tmp_path / "empty-cache"),
            "hf_endpoint": fake_hub.url}  # fmt: skip
    r = model_sync.direct(args, tmp_path / "w").result
    assert not r.get("failed") and r["served_by"] == "s3", r
    assert [t["source"] for t in r["tried"]] == ["local", "hf_cache"]
    assert "not a directory" in r["tried"][0]["error"] and "holds no snapshot" in r["tried"][1]["error"]

    # s3 refuses the credentials: the hub serves; nothing left: one error that says why each failed
    bad = {**args, "aws_secret_access_key": "nope-" + _uid()}
    hub = model_sync.direct(bad, tmp_path / "w").result
    assert hub["served_by"] == "hf" and hub["changed"], hub
    assert [t["failure_class"] for t in hub["tried"]] == ["bad_source", "not_in_cache", "s3_auth"]
    none = model_sync.direct({**bad, "repo_id": "org/absent-" + _uid()}, tmp_path / "w").result
    assert none["failed"] and none["failure_class"] == "no_source", none
    for word in ("local:", "hf_cache:", "s3:", "hf:", "SignatureDoesNotMatch"):
        assert word in none["msg"]
    assert bad["aws_secret_access_key"] not in str(none)


def test_a_fleet_deployment_with_sources(s3_server, model_gen, fake_runtime, tmp_path, monkeypatch):
    """The fleet's path (plan -> fleet_apply on one host, the in-memory engine): a deployment whose model says
    ``sources: [hf_cache, s3]`` is served from S3 with the host's credentials (boto3's chain: the environment), the
    container serves the installed revision, the record and the summary say s3 served; a second apply is a no-op."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import summary
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.apply import apply_host, validated
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.payload import fleet_plan
    from ansible_collections.gpufleet.vllm.plugins.modules.fleet_apply import ARGUMENT_SPEC

    bucket, files = _bucket(s3_server, model_gen, multipart=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.credentials["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.credentials["aws_secret_access_key"])
    gpus = [{"index": 0, "uuid": "GPU-0", "memory_total_mib": 81920, "memory_free_mib": 81920}]
    hosts = {"h": {"reachable": True, "gpus": gpus, "models_root": str(tmp_path / "models")}}
    model = {"sources": ["hf_cache", "s3"], "repo_id": "org/not-cached", "hf_cache_dir": str(tmp_path / "cache"),
             "s3_url": f"s3://{bucket}/models/m", "endpoint_url": s3_server.url, "region": "us-east-1"}  # fmt: skip
    dep = {"name": "m", "model": model, "vllm_version": "0.10.2", "model_size_bytes": 10**6}
    plan = fleet_plan(hosts, [dep])
    (spec,) = plan["hosts"]["h"]
    spec["container"].update(hf_cache_dir=str(tmp_path / "hf"), compile_cache_dir=str(tmp_path / "cc"))
    created = []
    create = fake_runtime.create
    fake_runtime.create = lambda s: created.append(s) or create(s)
    args = {"replicas": [spec], "manifest_dir": str(tmp_path / "manifests")}
    out, errors = apply_host(validated("fleet_apply", ARGUMENT_SPEC, args), runtime=fake_runtime)
    assert errors == [] and out["records"][0]["changed"] and out["records"][0]["model_source"] == "s3", out
    (c,) = created
    (served,) = [p for p in (tmp_path / "models" / "m").iterdir() if not p.name.startswith(".")]
    want = {k: hashlib.sha256(v).hexdigest() for k, v in files.items() if not k.startswith(".")}
    assert str(served) in c.command and _tree(served) == want
    rows = summary.converge_summary(plan, {"h": out["records"]})["deployments"]["m"]["replicas"]
    assert rows[0]["model_source"] == "s3"
    assert s3_server.credentials["aws_secret_access_key"] not in str(out)
    again, errors = apply_host(validated("fleet_apply", ARGUMENT_SPEC, args), runtime=fake_runtime)
    assert errors == [] and again["changed"] is False and len(created) == 1
