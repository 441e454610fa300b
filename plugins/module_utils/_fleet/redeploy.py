# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Manifest → vllm_container parameters, for ``playbooks/redeploy.yml`` (``fleet_report kind=manifest``)."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError


def manifest_params(manifest: Any) -> dict[str, Any]:
    """vllm_container parameters that redeploy a manifest (``name``, ``model``, ``image``, engine options, GPUs,
    port, LoRA, ...), after the manifest's own check. Env values and secrets are not in a manifest: give them again."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container.manifest import check, params_from_manifest

    check(manifest)
    return params_from_manifest(dict(manifest))


def deployment_of(replica_name: str) -> str:
    """The declared deployment of a replica container's name (``chat-0`` → ``chat``; the role names replicas
    ``<deployment>-<index>``); a name without an index is its own deployment."""
    return re.sub(r"-[0-9]+$", "", replica_name)


def redeploy(manifest: Any, manifest_path: Any) -> dict[str, Any]:
    """``kind=manifest``: the manifest (given, or read as JSON from ``manifest_path``), its vllm_container
    ``params`` and its ``deployment``."""
    if (manifest is None) == (manifest_path is None):
        raise GpufleetError("kind=manifest needs exactly one of manifest and manifest_path")
    if manifest is None:
        try:
            with open(os.path.expanduser(str(manifest_path)), encoding="utf-8") as fh:
                manifest = json.load(fh)
        except (OSError, ValueError) as err:
            raise GpufleetError(f"manifest_path {manifest_path}: cannot read it as JSON ({err})") from err
    return {
        "params": manifest_params(manifest),
        "manifest": manifest,
        "deployment": deployment_of(str(manifest["name"])),
    }
