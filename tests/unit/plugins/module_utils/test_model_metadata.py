"""A model's weight size for the VRAM estimate (_model/metadata.py): from the hub's model info (the real
huggingface_hub client against the in-process fake hub) and from what model_sync recorded on a host."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import metadata, store

ROOT = Path(__file__).resolve().parents[4]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    fakehub = _load("gpufleet_sim_fakehub", ROOT / "sim" / "hub" / "fakehub.py")
    make = _load("gpufleet_sim_make_repo", ROOT / "sim" / "hub" / "make_repo.py")
    root = tmp_path_factory.mktemp("hub")
    make.make_repo(root, "org/sharded", shards=3, shard_bytes=5000, original=True)
    make.make_repo(root, "org/quant", gguf=True, shard_bytes=3000)
    with fakehub.FakeHub(root) as server:
        yield server.url


def test_weights_from_info_parameters_by_dtype_else_the_weight_files():
    assert metadata.weights_from_info({"safetensors": {"parameters": {"BF16": 1000, "F32": 10}}}) == 2040
    assert metadata.weights_from_info({"safetensors": {"parameters": {"I4X": 8}}, "siblings": []}) is None
    siblings = [
        {"rfilename": "model-00001-of-00002.safetensors", "size": 700},
        {"rfilename": "model-00002-of-00002.safetensors", "size": 300},
        {"rfilename": "original/consolidated.00.pth", "size": 999},
        {"rfilename": "pytorch_model.bin", "size": 5000},
    ]
    assert metadata.weights_from_info({"siblings": siblings}) == 1000
    assert metadata.weights_from_info({"siblings": siblings[2:]}) == 5000
    assert metadata.weights_from_info({"siblings": [{"rfilename": "model.safetensors"}]}) is None  # no blobs=true


def test_hub_weights_through_huggingface_hub(hub):
    # 3 shards of 5000 U8 elements: the parameters the hub counts from their headers, x 1 byte.
    assert metadata.hub_weights("org/sharded", "main", hub, None) == 15000
    # A GGUF repo has no safetensors: the weight file's size (siblings with blobs=true).
    assert metadata.hub_weights("org/quant", "main", hub, None) == 4 + 20 + 3000
    with pytest.raises(GpufleetError) as err:
        metadata.hub_weights("org/missing", "main", hub, "hf_secret_token_value")
    assert "org/missing@main" in str(err.value) and "hf_secret_token_value" not in str(err.value)


def test_installed_sizes_and_the_record_of_the_declared_model(tmp_path):
    root = str(tmp_path)
    hf = {"source": "hf", "repo_id": "org/chat", "revision": "v1", "commit": "c" * 40, "size_bytes": 900}
    store.write_manifest(root, "chat", {**hf, "validation": {"ok": True, "weight_bytes": 800}})
    store.write_manifest(root, "local", {"source": "local", "src": "/models/x", "size_bytes": 500})
    store.write_manifest(root, "empty", {"source": "url", "url": "https://x/m.tar", "size_bytes": 0})
    sizes = metadata.installed_sizes(root)
    assert sorted(sizes) == ["chat", "local"] and sizes["chat"]["weight_bytes"] == 800
    assert metadata.installed_sizes(str(tmp_path / "none")) == {}
    records = [("gpu-a", {}), ("gpu-b", sizes)]
    model = {"source": "hf", "repo_id": "org/chat", "revision": "v1"}
    assert metadata.recorded_size("chat", model, records) == (800, "gpu-b")
    assert metadata.recorded_size("chat", {**model, "revision": "c" * 40}, records) == (800, "gpu-b")
    assert metadata.recorded_size("chat", {**model, "revision": "v2"}, records) is None  # another model now
    assert metadata.recorded_size("local", {"source": "local", "path": "/models/x"}, records) == (500, "gpu-b")
    assert metadata.recorded_size("local", None, records) is None
