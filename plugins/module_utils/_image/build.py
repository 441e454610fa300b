# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Derived vLLM images: extra pip packages and plugin files on top of a base image, tagged by content.

The tag is ``<derived_repository>:<base tag>-<hash16>`` where the hash covers the base image id, the sorted
normalized requirement strings, the plugin files' names and contents, the find-links files and the pip options:
the same inputs give the same tag, so a present tag means "nothing to build".

Build context (``write_context``)::

    Dockerfile
    gpufleet/requirements.txt     pip options + one requirement a line + the plugin wheels
    gpufleet/plugins/<files>      the .py and .whl plugins (.py files importable through a .pth file)
    gpufleet/find-links/<n>/...   copies of the pip_find_links directories
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

HASH_FORMAT = "2"  # bump when the Dockerfile template changes what a tag means
IN_IMAGE = "/opt/gpufleet"
DEFAULT_DERIVED_REPOSITORY = "gpufleet/vllm-openai"

LABEL_BASE = "gpufleet.image.base"
LABEL_BASE_ID = "gpufleet.image.base-id"
LABEL_PACKAGES = "gpufleet.image.packages"
LABEL_PLUGINS = "gpufleet.image.plugins"
LABEL_HASH = "gpufleet.image.hash"
LABEL_VLLM_TAG = "gpufleet.image.vllm-tag"


def _requirement_class():
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pip vendors packaging: any host that can pip install has one of the two
        try:
            from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
        except ImportError as e:
            raise GpufleetError(
                "extra_pip_packages needs the Python package 'packaging' on the target to validate requirement "
                "strings: install it for the interpreter Ansible uses (pip install packaging)"
            ) from e
    return Requirement, InvalidRequirement


def parse_requirements(entries: list[str]) -> list[str]:
    """Validate pip requirement strings; return them normalized, de-duplicated and sorted.

    Raises one ``GpufleetError`` naming every offending entry. pip options (``--index-url``, ``-e``) and local
    paths are not requirement strings and are refused here (use ``plugins`` / ``pip_find_links`` instead).
    """
    if not entries:
        return []
    Requirement, InvalidRequirement = _requirement_class()
    out: set[str] = set()
    bad: list[str] = []
    offending: list[str] = []
    for raw in entries:
        s = raw.strip() if isinstance(raw, str) else ""
        if not s or s.startswith("-") or "\n" in s or "#" in s:
            bad.append(f"{raw!r}: not a requirement string")
            offending.append(raw)
            continue
        try:
            req = Requirement(s)
        except InvalidRequirement as e:
            first = str(e).splitlines()[0] if str(e) else "invalid"
            bad.append(f"{raw!r}: {first}")
            offending.append(raw)
            continue
        out.add(str(req))
    if bad:
        raise GpufleetError(
            "extra_pip_packages has entries that are not pip requirement strings (like 'vllm-plugin-x==1.2' or "
            "'pkg[extra]>=1,<2'): " + "; ".join(bad),
            failure_class="bad_package",
            offending=offending,
        )
    return sorted(out)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class PluginFile:
    path: str
    name: str
    sha256: str

    @property
    def is_wheel(self) -> bool:
        return self.name.endswith(".whl")


def plugin_files(paths: list[str]) -> list[PluginFile]:
    """Check the plugin files (existing local ``.py`` / ``.whl`` files, unique names) and hash them."""
    out: list[PluginFile] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for p in paths:
        ap = os.path.abspath(os.path.expanduser(p))
        name = os.path.basename(ap)
        if not name.endswith((".py", ".whl")):
            problems.append(f"{p}: not a .py or .whl file")
        elif not os.path.isfile(ap):
            problems.append(f"{p}: no such file on the target")
        elif name in seen:
            problems.append(f"{p}: same file name as {seen[name]}")
        else:
            seen[name] = p
            try:
                out.append(PluginFile(ap, name, _sha256_file(ap)))
            except OSError as e:
                problems.append(f"{p}: cannot be read ({e.strerror})")
    if problems:
        raise GpufleetError("plugins: " + "; ".join(problems), failure_class="bad_plugin")
    return sorted(out, key=lambda f: f.name)


def find_links_files(dirs: list[str]) -> list[tuple[int, str, str, str]]:
    """Every file of the find-links directories as ``(dir index, relative path, absolute path, sha256)``."""
    out: list[tuple[int, str, str, str]] = []
    for i, d in enumerate(dirs):
        ad = os.path.abspath(os.path.expanduser(d))
        if not os.path.isdir(ad):
            raise GpufleetError(f"pip_find_links: {d}: no such directory on the target", failure_class="bad_plugin")
        for root, subdirs, files in os.walk(ad):
            subdirs.sort()
            for fn in sorted(files):
                ap = os.path.join(root, fn)
                out.append((i, os.path.relpath(ap, ad), ap, _sha256_file(ap)))
    return out


@dataclass
class DerivedSpec:
    """Everything a derived image is made of (the hash inputs), computed before any engine call."""

    packages: list[str] = field(default_factory=list)
    plugins: list[PluginFile] = field(default_factory=list)
    find_links: list[tuple[int, str, str, str]] = field(default_factory=list)
    find_links_count: int = 0
    index_url: str | None = None
    no_index: bool = False

    @property
    def empty(self) -> bool:
        return not self.packages and not self.plugins

    def content_hash(self, base_image_id: str) -> str:
        doc = {
            "format": HASH_FORMAT,
            "base": base_image_id,
            "packages": sorted(self.packages),
            "plugins": [[p.name, p.sha256] for p in self.plugins],
            "find_links": [[f[0], f[1], f[3]] for f in self.find_links],
            "index_url": self.index_url,
            "no_index": self.no_index,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def derived_tag(derived_repository: str, base_tag: str | None, content_hash: str) -> str:
    """``gpufleet/vllm-openai:v0.10.2-<16 hex>`` (base tag sanitized and shortened to stay a valid tag)."""
    t = re.sub(r"[^A-Za-z0-9_.-]", "-", base_tag or "image")[:100].lstrip(".-") or "image"
    return f"{derived_repository}:{t}-{content_hash[:16]}"


def _requirements_txt(spec: DerivedSpec) -> str:
    lines = ["# generated by gpufleet.vllm.vllm_image"]
    if spec.no_index:
        lines.append("--no-index")
    if spec.index_url:
        lines.append(f"--index-url {spec.index_url}")
    lines.append(f"--find-links {IN_IMAGE}/plugins")
    lines.extend(f"--find-links {IN_IMAGE}/find-links/{i}" for i in range(spec.find_links_count))
    lines.extend(f"{IN_IMAGE}/plugins/{p.name}" for p in spec.plugins if p.is_wheel)
    lines.extend(spec.packages)
    return "\n".join(lines) + "\n"


def labels(base_ref: str, base_id: str, vllm_tag: str | None, spec: DerivedSpec, content_hash: str) -> dict[str, str]:
    return {
        LABEL_BASE: base_ref,
        LABEL_BASE_ID: base_id,
        LABEL_VLLM_TAG: vllm_tag or "",
        LABEL_PACKAGES: json.dumps(spec.packages),
        LABEL_PLUGINS: json.dumps([f"{p.name}@sha256:{p.sha256}" for p in spec.plugins]),
        LABEL_HASH: content_hash,
    }


def install_script(run_pip: bool) -> str:
    """The one build step, as a file in the context (keeps the build log readable)."""
    pip = f"python3 -m pip install -r {IN_IMAGE}/requirements.txt\n" if run_pip else ""
    return (
        "#!/bin/sh\n"
        "# generated by gpufleet.vllm.vllm_image\n"
        "set -eu\n"
        # Distro Pythons mark themselves externally managed (PEP 668); in an image that is exactly what is intended.
        "export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "
        "PIP_ROOT_USER_ACTION=ignore\n"
        f"{pip}"
        "site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')\n"
        f'echo {IN_IMAGE}/plugins > "$site/gpufleet-plugins.pth"\n'
        f"rm -rf {IN_IMAGE}/find-links\n"
    )


def dockerfile(base_ref: str, label_map: dict[str, str]) -> str:
    """The Dockerfile of a derived image: copy the context, run install.sh once, label."""
    label_lines = " \\\n      ".join(f"{k}={json.dumps(v)}" for k, v in sorted(label_map.items()))
    return f"FROM {base_ref}\nCOPY gpufleet/ {IN_IMAGE}/\nRUN sh {IN_IMAGE}/install.sh\nLABEL {label_lines}\n"


def write_context(ctx: str, base_ref: str, spec: DerivedSpec, label_map: dict[str, str], find_links_dirs: list[str]):
    """Write the build context into the (empty) directory ``ctx``."""
    g = os.path.join(ctx, "gpufleet")
    os.makedirs(os.path.join(g, "plugins"))
    for p in spec.plugins:
        shutil.copyfile(p.path, os.path.join(g, "plugins", p.name))
    for i, d in enumerate(find_links_dirs):
        shutil.copytree(os.path.abspath(os.path.expanduser(d)), os.path.join(g, "find-links", str(i)))
    with open(os.path.join(g, "requirements.txt"), "w", encoding="utf-8") as f:
        f.write(_requirements_txt(spec))
    with open(os.path.join(g, "install.sh"), "w", encoding="utf-8") as f:
        f.write(install_script(run_pip=bool(spec.packages or any(p.is_wheel for p in spec.plugins))))
    with open(os.path.join(ctx, "Dockerfile"), "w", encoding="utf-8") as f:
        f.write(dockerfile(base_ref, label_map))
