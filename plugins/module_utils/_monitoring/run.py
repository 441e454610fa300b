# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``monitoring_config`` module's run on the monitoring host: plan the files, write what differs, reload
Prometheus when its configuration or rules changed.

The YAML files (rules, configuration) are rendered on the controller, where PyYAML is: the module computes their
documents (which may depend on the current target files of the monitoring host) and, until it is handed their text,
answers with a render request instead of writing (``RENDER_REQUEST``: the documents and their digest). The action
plugin renders them and runs the module again with ``rendered`` (the digest and the texts); the module recomputes
the documents, and uses the texts only when the digest still matches. Without YAML files one run does it all.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
from collections.abc import Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.files import apply_files
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.plan import HEADER, Plan, render

RENDER_REQUEST = "_gpufleet_render"


def documents_digest(documents: Mapping[str, Any]) -> str:
    """A digest of the YAML documents (path -> data), key order included."""
    text = json.dumps(documents, sort_keys=False, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def request(plan: Plan) -> dict[str, Any]:
    """The render request of ``plan``: its YAML documents (path -> data) and their digest."""
    return {"digest": documents_digest(plan.documents), "documents": plan.documents}


def fill_yaml(plan: Plan, rendered: Any) -> bool:
    """Put the YAML texts of ``rendered`` (HEADER first) into ``plan``'s YAML files; False when ``rendered`` is None
    (not rendered yet). GpufleetError when ``rendered`` is not the rendering of ``plan``'s documents."""
    if rendered is None:
        return False
    texts = rendered.get("texts") if isinstance(rendered, Mapping) else None
    if (
        not isinstance(texts, Mapping)
        or rendered.get("digest") != documents_digest(plan.documents)
        or set(texts) != set(plan.documents)
    ):
        raise GpufleetError(
            "rendered: not the rendering of this run's configuration and rules (the target files changed between "
            "the two steps of the action plugin, or rendered was set by hand); run again"
        )
    for f in plan.files:
        if f.document is not None:
            f.content = HEADER + str(texts[f.path])
    return True


def reload_prometheus(url: str, timeout: float = 10.0) -> None:
    """POST ``url`` (Prometheus' ``/-/reload``); GpufleetError unless it answers 2xx."""
    # Imported here: ~0.15 s of CPU that a run without a reload (nothing changed, check mode) does not need.
    from ansible.module_utils.urls import open_url

    try:
        with open_url(url, data=b"", method="POST", timeout=timeout) as resp:
            code = resp.status
            body = resp.read(2000).decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        code, body = err.code, err.read(2000).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as err:
        raise GpufleetError(f"reload_url {url}: Prometheus did not answer ({err}); is it running?") from err
    if not 200 <= code < 300:
        hint = " (start Prometheus with --web.enable-lifecycle)" if code in (403, 404, 405) else ""
        raise GpufleetError(f"reload_url {url}: HTTP {code}{hint}: {body.strip()[:300]}", status=code)


def run_config(params: Mapping[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """What the ``monitoring_config`` module returns for validated ``params`` (files written unless check mode), or
    ``{"changed": False, RENDER_REQUEST: {"digest", "documents"}}`` while its YAML files are not rendered."""
    plan = render(params)
    if not fill_yaml(plan, params.get("rendered")) and plan.documents:
        return {"changed": False, RENDER_REQUEST: request(plan)}
    applied = apply_files(
        plan.files,
        check_mode=check_mode,
        validate=bool(params.get("validate", True)),
        promtool=params.get("promtool"),
        owner=params.get("owner"),
        group=params.get("group"),
        secret_files=[params["credentials_file"]] if params.get("api_key") else [],
    )
    reloaded = False
    if applied.reload_needed and params.get("reload_url") and not check_mode:
        reload_prometheus(str(params["reload_url"]), float(params.get("reload_timeout") or 10))
        reloaded = True
    return {
        "kept": [k.as_dict() for k in plan.kept],
        "changed": applied.changed,
        "files": applied.files,
        "diff": applied.diff,
        "targets": plan.targets,
        "skipped": plan.skipped,
        "scrape_configs": plan.scrape_configs,
        "alerts": plan.alerts(),
        "reload_needed": applied.reload_needed,
        "reloaded": reloaded,
        "validated": applied.validated,
        "promtool": applied.promtool,
    }
