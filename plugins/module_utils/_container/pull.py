# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_container's image step: the image present in the engine, pulled when absent and ``pull: missing`` allows it,
or (check mode, before a pull) its model mode and vLLM version predicted from ``vllm_version`` or the tag."""

from __future__ import annotations

import os
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cs
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ImageInfo, Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

# _image/ref.py is imported where used: a no-op converge (image present) never loads it.


def present(rt: Runtime, params: dict[str, Any]) -> ImageInfo | None:
    """The image, or None when it is absent and ``pull: missing`` says to pull it; else precheck image_absent."""
    ref = params["image"]
    img = rt.image(ref)
    if img is None and (params.get("pull") or "never") != "missing":
        raise GpufleetError(
            f"image {ref} is not present in {rt.name}; pull or build it first (gpufleet.vllm.vllm_image), "
            "or set pull: missing to let vllm_container pull it",
            precheck="image_absent",
        )
    return img


def pull(
    rt: Runtime, ref: str, phases: list[str], state_dir: str | None = None, report: dict[str, Any] | None = None
) -> ImageInfo:
    """Pull ``ref`` through the engine adapter; a failure is failure_class pull_failed (unless the engine said more)
    in phase pulling, with the ``phases`` so far. While it pulls, a progress file in ``<state_dir>/pulls`` shows
    bytes/layers done (_image/progress.py); ``report["pull_progress"]`` gets the last snapshot."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._image.progress import PULLS_DIR, PullProgress
    from ansible_collections.gpufleet.vllm.plugins.module_utils._image.ref import split_reference

    repo, tag, digest = split_reference(ref)
    tracker = PullProgress(ref, os.path.join(state_dir, PULLS_DIR) if state_dir else None, engine=rt.name)
    try:
        rt.pull(repo, digest or tag or "latest", None, tracker.feed)
    except GpufleetError as e:
        details = {**e.details, "phase": "pulling", "phases": list(phases), "image": ref}
        details["pull_progress"] = tracker.close(ok=False)
        details.setdefault("failure_class", "pull_failed")
        raise GpufleetError(e.msg, **details) from e
    if report is not None:
        report["pull_progress"] = tracker.close()
    else:
        tracker.close()
    img = rt.image(ref)
    if img is None:
        raise GpufleetError(
            f"pulled {ref} but {rt.name} does not show it", failure_class="pull_failed", phase="pulling"
        )
    return img


def model_mode(params: dict[str, Any], img: ImageInfo | None) -> tuple[str, str | None]:
    """(model mode, vLLM version): from the image when it is there, else predicted (``predicted_mode``)."""
    if img is not None:
        return cs.model_mode(img.entrypoint), params.get("vllm_version") or img.vllm_version
    return predicted_mode(params)


def predicted_mode(params: dict[str, Any]) -> tuple[str, str | None]:
    """(model mode, vLLM version) of an image that is not pulled yet (check mode): from vllm_version or the tag
    (v0.10.2 -> 0.10.2). Images before vLLM 0.9 start with the api_server module (``--model``)."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._image.ref import split_reference, version_of_tag

    version = params.get("vllm_version") or version_of_tag(split_reference(params["image"])[1] or "")
    parts = [int(x) for x in (version or "").split(".")[:2] if x.isdigit()]
    return ("option" if len(parts) == 2 and tuple(parts) < (0, 9) else "positional"), version
