"""Model directory validation: what vLLM needs before a model is swapped in."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.validate import (
    check_model_dir,
    safetensors_header,
    validate_model_dir,
)


def st_bytes(n: int, tensor: str = "w", dtype: str = "U8") -> bytes:
    width = {"U8": 1, "F16": 2, "F32": 4}[dtype]
    header = {tensor: {"dtype": dtype, "shape": [n // width], "data_offsets": [0, n]}}
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"\0" * n


def make_model(d: Path, shards: int = 2, tokenizer: bool = True, index: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text('{"model_type": "llama"}')
    if tokenizer:
        (d / "tokenizer.json").write_text("{}")
    wm = {}
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        (d / name).write_bytes(st_bytes(64, f"t{i}"))
        wm[f"t{i}"] = name
    if index:
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    return d


def test_good_model(tmp_path):
    r = validate_model_dir(str(make_model(tmp_path / "m")))
    assert r["ok"] and r["format"] == "safetensors" and r["problems"] == []
    assert r["weight_bytes"] == 2 * (tmp_path / "m" / "model-00001-of-00002.safetensors").stat().st_size


def test_missing_shard_is_named(tmp_path):
    d = make_model(tmp_path / "m", shards=3)
    (d / "model-00002-of-00003.safetensors").unlink()
    r = validate_model_dir(str(d))
    assert not r["ok"]
    text = " ".join(r["problems"])
    assert "model.safetensors.index.json lists missing shards: model-00002-of-00003.safetensors" in text
    assert "incomplete shard set" in text


def test_incomplete_shard_set_without_index(tmp_path):
    d = make_model(tmp_path / "m", shards=3, index=False)
    (d / "model-00003-of-00003.safetensors").unlink()
    r = validate_model_dir(str(d))
    assert r["problems"] == [
        "incomplete shard set model-*-of-00003.safetensors: missing model-00003-of-00003.safetensors"
    ]


def test_truncated_and_garbage_safetensors(tmp_path):
    d = make_model(tmp_path / "m", shards=2)
    p1 = d / "model-00001-of-00002.safetensors"
    p1.write_bytes(p1.read_bytes()[:-5])
    (d / "model-00002-of-00002.safetensors").write_bytes(b"\xff" * 4)
    r = validate_model_dir(str(d))
    assert any("model-00001-of-00002.safetensors: size" in p and "header says" in p for p in r["problems"])
    assert any("model-00002-of-00002.safetensors: safetensors header does not parse" in p for p in r["problems"])


def test_header_shape_must_match_offsets(tmp_path):
    p = tmp_path / "x.safetensors"
    h = json.dumps({"w": {"dtype": "F16", "shape": [10], "data_offsets": [0, 8]}}).encode()
    p.write_bytes(struct.pack("<Q", len(h)) + h + b"\0" * 8)
    with pytest.raises(ValueError, match="shape"):
        safetensors_header(str(p))


def test_config_and_tokenizer(tmp_path):
    d = make_model(tmp_path / "m", tokenizer=False)
    (d / "config.json").write_text("{not json")
    r = validate_model_dir(str(d))
    assert any("config.json does not parse" in p for p in r["problems"])
    assert any("no tokenizer files" in p for p in r["problems"])
    (d / "config.json").write_text("{}")
    assert validate_model_dir(str(d), require_tokenizer=False)["ok"]
    (d / "tokenizer.model").write_bytes(b"sp")
    assert validate_model_dir(str(d))["ok"]


def test_single_gguf_is_enough(tmp_path):
    d = tmp_path / "g"
    d.mkdir()
    (d / "model.Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    r = validate_model_dir(str(d))
    assert r["ok"] and r["format"] == "gguf"
    (d / "model.Q4_K_M.gguf").write_bytes(b"NOPE")
    assert "bad magic" in validate_model_dir(str(d))["problems"][0]


def test_no_weights(tmp_path):
    d = tmp_path / "e"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    assert any("no weight files" in p for p in validate_model_dir(str(d))["problems"])


def test_check_raises_with_report(tmp_path):
    d = make_model(tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(GpufleetError) as e:
        check_model_dir(str(d))
    assert e.value.details["failure_class"] == "invalid_model"
    assert "config.json is missing" in str(e.value)


def test_pytorch_index(tmp_path):
    d = tmp_path / "pt"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "vocab.json").write_text("{}")
    (d / "pytorch_model-00001-of-00002.bin").write_bytes(b"x")
    (d / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}})
    )
    r = validate_model_dir(str(d))
    assert r["format"] == "pytorch"
    assert any("pytorch_model-00002-of-00002.bin" in p for p in r["problems"])
