# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The state machine of gpufleet.vllm.vllm_image: resolve the reference, pull by policy, build the derived image.

``ensure_image(params, check_mode, engine_factory)`` returns the module result (without ``warnings``, which are
returned separately). Every input is validated before the first engine call.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._image import build as ib
from ansible_collections.gpufleet.vllm.plugins.module_utils._image import ref as ir
from ansible_collections.gpufleet.vllm.plugins.module_utils._image.progress import PullProgress

PULL_POLICIES = ("missing", "always", "never")


# The vllm_image module's argument spec (also used to validate the image part of a host's plan).
ARGUMENT_SPEC: dict[str, Any] = dict(
    version=dict(type="str"),
    image=dict(type="str"),
    repository=dict(type="str", default="vllm/vllm-openai"),
    pull=dict(type="str", choices=["missing", "always", "never"], default="missing"),
    registry_username=dict(type="str"),
    registry_password=dict(type="str", no_log=True),
    runtime=dict(type="str", choices=["docker", "podman"], default="docker"),
    docker_host=dict(type="str"),
    podman_socket=dict(type="str"),
    extra_pip_packages=dict(type="list", elements="str", default=[]),
    plugins=dict(type="list", elements="path", default=[]),
    pip_find_links=dict(type="list", elements="path", default=[]),
    pip_index_url=dict(type="str"),
    pip_no_index=dict(type="bool", default=False),
    derived_repository=dict(type="str", default="gpufleet/vllm-openai"),
    release_api_url=dict(type="str", default="https://api.github.com/repos/vllm-project/vllm/releases/latest"),
    release_cache=dict(type="path", default="~/.cache/gpufleet/vllm-releases.json"),
    release_cache_ttl=dict(type="int", default=3600),
    timeout=dict(type="int", default=1800),
    progress_dir=dict(type="path"),
    push=dict(type="bool", default=False),
)


def _short_id(image_id: str | None) -> str | None:
    return image_id.split(":", 1)[-1][:12] if image_id else None


def _check_values(params: dict[str, Any]) -> None:
    """Values the argument spec's types let through: one error listing every problem (issue #16)."""
    problems = []
    timeout = params.get("timeout")
    if timeout is not None and timeout < 1:
        problems.append(f"timeout: {timeout!r} must be >= 1; seconds one pull or build may take, e.g. 1800")
    ttl = params.get("release_cache_ttl")
    if ttl is not None and ttl < 0:
        problems.append(f"release_cache_ttl: {ttl!r} must be >= 0; seconds the latest-release answer is reused")
    cache = params.get("release_cache")
    if cache and not str(cache).startswith("/"):
        problems.append(f"release_cache: {cache!r} is not an absolute path; give a path starting with / (or ~/)")
    for option in ("plugins", "pip_find_links"):
        for path in params.get(option) or []:
            if not str(path).startswith("/"):
                problems.append(f"{option}: {path!r} is not an absolute path; give a path on the host starting with /")
    if problems:
        raise GpufleetError("vllm_image: " + "; ".join(problems), problems=problems)


def ensure_image(
    params: dict[str, Any], check_mode: bool, engine_factory: Callable[[], Any]
) -> tuple[dict[str, Any], list[str]]:
    warnings: list[str] = []
    pull = params.get("pull") or "missing"
    if pull not in PULL_POLICIES:
        raise GpufleetError(f"pull must be one of {', '.join(PULL_POLICIES)}, not {pull!r}")

    # 1. Everything that can be wrong with the input, before the engine is touched.
    _check_values(params)
    packages = ib.parse_requirements(params.get("extra_pip_packages") or [])
    plugins = ib.plugin_files(params.get("plugins") or [])
    find_links_dirs = list(params.get("pip_find_links") or [])
    spec = ib.DerivedSpec(
        packages=packages,
        plugins=plugins,
        find_links=ib.find_links_files(find_links_dirs),
        find_links_count=len(find_links_dirs),
        index_url=params.get("pip_index_url") or None,
        no_index=bool(params.get("pip_no_index")),
    )
    derived_repo = params.get("derived_repository") or ib.DEFAULT_DERIVED_REPOSITORY
    ir.check_repository(derived_repo, what="derived_repository")

    if params.get("image"):
        repo, tag, digest = ir.split_reference(params["image"])
        if digest:
            pull_tag = digest
            base_ref = f"{repo}:{tag}@{digest}" if tag else f"{repo}@{digest}"
        else:
            tag = tag or "latest"
            pull_tag = tag
            base_ref = f"{repo}:{tag}"
        vllm_tag = tag
    else:
        repo = params.get("repository") or ir.DEFAULT_REPOSITORY
        ir.check_repository(repo)

        def lookup() -> tuple[str, str | None]:
            return ir.latest_release(
                url=params.get("release_api_url") or ir.DEFAULT_RELEASES_URL,
                cache_path=params.get("release_cache") or ir.DEFAULT_CACHE_PATH,
                ttl=params.get("release_cache_ttl") if params.get("release_cache_ttl") is not None else 3600,
            )

        vllm_tag, warning = ir.resolve_tag(params.get("version"), lookup)
        if warning:
            warnings.append(warning)
        pull_tag = vllm_tag
        base_ref = f"{repo}:{vllm_tag}"

    auth = None
    if params.get("registry_username"):
        if not params.get("registry_password"):
            raise GpufleetError("registry_username is set but registry_password is not: set both or neither")
        auth = {"username": params["registry_username"], "password": params["registry_password"]}
        if ir.registry_of(repo) != "docker.io":
            auth["serveraddress"] = ir.registry_of(repo)

    # 2. The base image, by pull policy.
    engine = engine_factory()
    actions: list[str] = []
    before = engine.inspect_image(base_ref)
    after = before
    pulled = False
    pull_progress = None
    if pull == "never" and before is None:
        raise GpufleetError(
            f"image {base_ref} is not present on this host and pull is never: load it first or use pull: missing",
            failure_class="not_present",
            image=base_ref,
        )
    if pull == "always" or (pull == "missing" and before is None):
        if check_mode:
            actions.append(f"pull {base_ref}" + (" (if the registry has a newer image)" if before else ""))
        else:
            tracker = PullProgress(base_ref, params.get("progress_dir"), engine=engine.name)
            try:
                engine.pull(repo, pull_tag, auth, tracker.feed)
            except BaseException:
                tracker.close(ok=False)  # its file goes; the error says what failed
                raise
            pull_progress = tracker.close()
            after = engine.inspect_image(base_ref)
            if after is None:
                raise GpufleetError(f"pulled {base_ref} but the engine does not show it", failure_class="pull_failed")
            pulled = True
            if before is None or before["Id"] != after["Id"]:
                actions.append(f"pulled {base_ref} ({_short_id(after['Id'])})")
    base_changed = pulled and (before is None or before["Id"] != after["Id"])
    base_id = after["Id"] if after else None

    result: dict[str, Any] = {
        "image": base_ref,
        "image_id": base_id,
        "repo_digests": sorted(after.get("RepoDigests") or []) if after else [],
        "base_image": base_ref,
        "base_image_id": base_id,
        "vllm_tag": vllm_tag,
        "vllm_version": ir.version_of_tag(vllm_tag or ""),
        "derived": False,
        "packages": packages,
        "plugins": [p.name for p in plugins],
        "runtime": engine.name,
        "actions": actions,
        "changed": base_changed or (check_mode and before is None),
    }
    if pull_progress is not None:  # bytes and layers of the pull (the progress file's last snapshot)
        result["pull_progress"] = pull_progress
    old_base_id = before["Id"] if before else None

    # 3. The derived image.
    if not spec.empty:
        result["derived"] = True
        if base_id is None:  # check mode, base not pulled yet: the tag depends on the id we would pull
            result.update(image=None, image_id=None, repo_digests=[], changed=True)
            actions.append("build a derived image with the packages/plugins (tag known after the pull)")
            return _with_diff(result, old_base_id, None, None), warnings
        content_hash = spec.content_hash(base_id)
        tag = ib.derived_tag(derived_repo, vllm_tag, content_hash)
        result["image"] = tag
        result["content_hash"] = content_hash
        present = engine.inspect_image(tag)
        if present is None and params.get("push") and not check_mode:
            present = _pull_built(engine, tag, actions)
        if present is None:
            if check_mode:
                pushing = " and push it (or pull it if another host pushed it)" if params.get("push") else ""
                actions.append(f"build {tag} FROM {base_ref}{pushing}")
                result.update(image_id=None, repo_digests=[], changed=True)
                return _with_diff(result, old_base_id, None, None), warnings
            labels = ib.labels(base_ref, base_id, vllm_tag, spec, content_hash)
            ctx = tempfile.mkdtemp(prefix="gpufleet-image-")
            try:
                ib.write_context(ctx, base_ref, spec, labels, find_links_dirs)
                log = engine.build(ctx, tag)
            finally:
                shutil.rmtree(ctx, ignore_errors=True)
            present = engine.inspect_image(tag)
            actions.append(f"built {tag} FROM {base_ref} ({_short_id(present['Id'])})")
            result["build_log_tail"] = log[-10:]
            result["changed"] = True
            if params.get("push"):  # the other hosts pull it instead of building it again
                engine.push(*tag.rsplit(":", 1))  # the engine's own login to that registry
                actions.append(f"pushed {tag}")
                result["pushed"] = True
        elif not check_mode and any(a.startswith(f"pulled {tag}") for a in actions):
            result["changed"] = True
        result["image_id"] = present["Id"]
        result["repo_digests"] = sorted(present.get("RepoDigests") or [])
        return _with_diff(result, old_base_id, None if result["changed"] else present["Id"], present["Id"]), warnings

    return _with_diff(result, old_base_id, old_base_id, base_id), warnings


def _pull_built(engine: Any, tag: str, actions: list[str]) -> Any:
    """With ``push``: the derived image another host built and pushed (same inputs, same tag), pulled from the
    registry instead of built here; None when the registry does not have it (not_found)."""
    try:
        engine.pull(*tag.rsplit(":", 1))
    except GpufleetError as err:
        if err.details.get("failure_class") != "not_found":
            raise
        return None
    present = engine.inspect_image(tag)
    if present is not None:
        actions.append(f"pulled {tag} (built and pushed by another host)")
    return present


def _with_diff(
    result: dict[str, Any], before_base_id: str | None, before_id: str | None, after_id: str | None
) -> dict[str, Any]:
    """Diff mode: the base image id and the id of the image to run, old -> new (None: not there / not known yet)."""
    pending = "(known after the pull/build)"
    result["diff"] = {
        "before": {"image": result["image"], "image_id": before_id, "base_image_id": before_base_id},
        "after": {
            "image": result["image"],
            "image_id": after_id or (pending if result["changed"] else None),
            "base_image_id": result["base_image_id"] or (pending if result["changed"] else None),
        },
    }
    return result
