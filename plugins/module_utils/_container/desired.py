# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The container a vllm_container task declares, resolved against its image: the normalized spec and its hash (what
is compared), the real env (what is created) and the argv check against the image's vLLM flag table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cs
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState, ImageInfo
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError


@dataclass(frozen=True)
class Desired:
    """What one run converges to. ``image`` is None in check mode when the image would be pulled first."""

    image: ImageInfo | None
    mode: str  # model mode: positional (vllm serve) | option (api_server --model)
    version: str | None  # the vLLM version whose flags the argv uses
    spec: dict[str, Any]  # normalized spec (no secret value): compared by its hash, kept in the labels
    env: dict[str, str]  # the real container env
    secret_keys: set[str]  # env keys whose values are secret
    config_hash: str

    @property
    def gpus(self) -> list[str]:
        return list(self.spec["gpus"])

    @property
    def argv(self) -> list[str]:
        return list(self.spec["argv"])


def expand_all_gpus(
    params: dict[str, Any], host_gpus: list[dict[str, Any]] | None, warn: Callable[[str], None]
) -> dict[str, Any]:
    """``gpus: [all]`` → every GPU of the host by index, from its GPU facts, and tensor_parallel_size = their count
    (divided by pipeline_parallel_size) unless set.

    Explicit ids rather than the engine's ``all``: the container's labels then say which GPUs it holds (what the
    fleet's planner and the other replicas' pre-checks read), a fleet replica given the same GPUs has the same config
    hash, and the hash changes (a recreate) exactly when the host's GPUs do. Without GPU facts (no NVML, no
    nvidia-smi) the engine's ``all`` is kept, with the tensor parallel size given."""
    if cs.gpus_of(params) != ["all"]:
        return params
    if not host_gpus:
        warn("gpus: all kept as the engine's 'all' (no GPU facts on this host); tensor_parallel_size stays as given")
        return params
    out = dict(params, gpus=[str(g["index"]) for g in sorted(host_gpus, key=lambda g: int(g["index"]))])
    if out.get("tensor_parallel_size") is None:
        pp = out.get("pipeline_parallel_size") or 1
        if len(host_gpus) % pp:
            raise GpufleetError(
                f"gpus: all is {len(host_gpus)} GPU(s), not a multiple of pipeline_parallel_size {pp}; "
                "set tensor_parallel_size or name the GPUs",
                failure_class="bad_args",
            )
        out["tensor_parallel_size"] = len(host_gpus) // pp
    return out


def bad_args(e: GpufleetError) -> GpufleetError:
    """A vllm_args error as the module reports it: ``bad_args: <message>`` with failure_class bad_args."""
    details = dict(e.details)
    details.setdefault("failure_class", "bad_args")
    return GpufleetError(f"bad_args: {e.msg}", **details)


def resolve(
    params: dict[str, Any], img: ImageInfo | None, mode: str, version: str | None, cur: ContainerState | None
) -> Desired:
    """The Desired of ``params`` for an image of ``mode`` and vLLM ``version``.

    ``validate_args`` maps the typed options to the flags of this vLLM version (one it lacks is bad_args here, before
    anything is touched, check mode included). A container whose ``gpufleet.argv-flags`` label says its argv was
    mapped from the same options for the same version is first compared with the default flags, without loading the
    flag tables: equal hashes mean a no-op."""
    spec, env, secret_keys = _specs(params, img, mode, version, cur)
    return Desired(img, mode, version, spec, env, secret_keys, cs.config_hash(spec))


def _specs(
    params: dict[str, Any], img: ImageInfo | None, mode: str, version: str | None, cur: ContainerState | None
) -> tuple[dict[str, Any], dict[str, str], set[str]]:
    image_id = img.id if img is not None else None
    if not params.get("validate_args"):
        return cs.normalized_spec(params, image_id, mode)
    if cur is not None and img is not None and cur.labels.get(lb.ARGV_FLAGS) == cs.argv_flags_marker(params, version):
        spec, env, secret_keys = cs.normalized_spec(params, image_id, mode)
        if cs.config_hash(spec) == cur.labels.get(lb.CONFIG_HASH):
            return spec, env, secret_keys
    try:
        return cs.normalized_spec(params, image_id, mode, check_version=True, vllm_version=version)
    except GpufleetError as e:
        if e.details.get("failure_class") == "bad_args":
            raise bad_args(e) from e
        raise


def validate_argv(params: dict[str, Any], desired: Desired, warn: Callable[[str], None]) -> None:
    """The whole argv (typed options + extra_args) against the flag table of the deployment's vLLM version
    (vllm_args, issue 9): bad_args before anything is created or started. validate_args: false skips it."""
    if not params.get("validate_args"):
        return
    # Imported here: the flag tables are never loaded on a no-op converge.
    from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import args as vllm_args

    try:
        warnings = vllm_args.check_argv(
            desired.argv,
            desired.version,
            entrypoint=cs.entrypoint_of(desired.mode),
            env=cs.argv_check_env(desired.env, desired.secret_keys),
        )
    except GpufleetError as e:
        raise bad_args(e) from e
    for w in warnings:
        warn(str(w))
