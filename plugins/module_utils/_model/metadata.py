# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A model's weight size for the fleet's VRAM estimate (``_gpu/fit.py``), so that a hub model needs no hand-typed
``model_size_bytes``/``num_parameters``. Two sources, the cheaper first (``fleet_plan`` on the controller asks them):

- what ``model_sync`` installed before: its manifest on a host (``<models_root>/.gpufleet/manifests/<name>.json``)
  records the weight bytes it validated, with the source identity (hub repo and revision, local path, URL).
  ``installed_sizes`` reads them on the host (``fleet_apply state=gathered``); ``recorded_size`` picks the record of
  the same model among the hosts' (the size of that deployment's install, only while it is still the declared model).
- the hub's model info (``GET /api/models/{repo}/revision/{rev}?blobs=true``, huggingface_hub's
  ``model_info(files_metadata=True)``): the safetensors parameter count per dtype x the dtype's bytes (the real
  size of the weights, quantized ones included), else the sizes of the weight files (``weights_from_info``).
  ``hub_weights`` makes that call, with the deployment's HF token (never logged, never in an error).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.fit import dtype_bytes
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import store

# Weight files by format, in vLLM's order of preference; a repo's original/ checkpoints are duplicates vLLM never reads.
WEIGHT_FORMATS = ((".safetensors",), (".bin", ".pt", ".pth"), (".gguf",))
HUB_TIMEOUT_S = 10.0


def weights_from_info(info: Mapping[str, Any]) -> int | None:
    """Weight bytes from a hub model info (its JSON, or huggingface_hub's ModelInfo as a dict); None if it says
    neither a parameter count nor the weight files' sizes."""
    params = (info.get("safetensors") or {}).get("parameters") or {}
    if params:
        try:
            return math.ceil(sum(int(n) * dtype_bytes(dtype) for dtype, n in params.items()))
        except (GpufleetError, TypeError, ValueError):
            pass  # a dtype the estimate does not know: the file sizes below
    files = [(str(s.get("rfilename") or ""), s.get("size")) for s in info.get("siblings") or []]
    for suffixes in WEIGHT_FORMATS:
        sizes = [size for name, size in files if name.endswith(suffixes) and not name.startswith("original/")]
        if sizes and all(isinstance(size, int) and not isinstance(size, bool) for size in sizes):
            return sum(sizes)
    return None


def installed_sizes(models_root: str) -> dict[str, dict[str, Any]]:
    """Per installed model name, what model_sync recorded: ``{weight_bytes, source, repo_id, revision, commit, src,
    url, s3_url}`` (weight bytes: the validated weight files, else the whole install)."""
    out: dict[str, dict[str, Any]] = {}
    directory = os.path.dirname(store.manifest_path(models_root, "x"))
    try:
        names = sorted(n[: -len(".json")] for n in os.listdir(directory) if n.endswith(".json"))
    except OSError:
        return out
    for name in names:
        manifest = store.read_manifest(models_root, name)
        if not manifest:
            continue
        weights = (manifest.get("validation") or {}).get("weight_bytes") or manifest.get("size_bytes")
        if not isinstance(weights, int) or weights <= 0:
            continue
        record = {k: manifest.get(k) for k in ("source", "repo_id", "revision", "commit", "src", "url", "s3_url")}
        out[name] = {"weight_bytes": weights, **record}
    return out


def _same_model(record: Mapping[str, Any], model: Mapping[str, Any]) -> bool:
    source = model.get("source")
    if source == "hf":
        revision = model.get("revision") or "main"
        return record.get("repo_id") == model.get("repo_id") and revision in (
            record.get("revision"),
            record.get("commit"),
        )
    if source == "local":
        return record.get("src") is not None and record.get("src") == model.get("path")
    if source == "url":
        return record.get("url") is not None and record.get("url") == model.get("url")
    if source == "s3":
        return record.get("s3_url") is not None and record.get("s3_url") == (model.get("s3_url") or "").rstrip("/")
    if source == "ordered":  # a model with sources (the fleet schema's): installed by any of them
        return any(
            _same_model(record, {**model, "source": "hf" if s == "hf_cache" else s}) for s in model.get("sources") or []
        )
    return False


def recorded_size(
    name: str, model: Mapping[str, Any] | None, records: Iterable[tuple[str, Mapping[str, Any]]]
) -> tuple[int, str] | None:
    """``(weight bytes, host)`` of deployment ``name``'s model as model_sync recorded it on a host (``records``:
    ``(host, installed_sizes())`` pairs), when that record is of the declared model; None otherwise."""
    if not model:
        return None
    for host, sizes in records:
        record = (sizes or {}).get(name)
        if isinstance(record, Mapping) and _same_model(record, model):
            return int(record["weight_bytes"]), host
    return None


def hub_weights(repo_id: str, revision: str, endpoint: str | None, token: str | None) -> int | None:
    """Weight bytes of a hub model from its model info (one request); GpufleetError saying why when the hub does not
    answer (the token is never part of the message)."""
    from huggingface_hub import HfApi  # imported here: a plan with every size known never loads it

    try:
        info = HfApi(endpoint=endpoint or None, token=token or False).model_info(
            repo_id, revision=revision, files_metadata=True, timeout=HUB_TIMEOUT_S
        )
    except Exception as err:  # every hub or network failure: the estimate stays unknown, the plan goes on
        raise GpufleetError(
            f"hub model info of {repo_id}@{revision}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        ) from None
    siblings = [{"rfilename": s.rfilename, "size": s.size} for s in info.siblings or []]
    st = {"parameters": dict(info.safetensors.parameters)} if info.safetensors else {}
    return weights_from_info({"safetensors": st, "siblings": siblings})
