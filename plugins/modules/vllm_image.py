#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vllm_image
short_description: Resolve a vLLM version to its image, pull it, and build a derived image with extra packages
version_added: 0.1.0
description:
  - "Turns a vLLM version (C(0.8.5), C(latest), C(nightly), a commit) into the vLLM OpenAI server image on the target
    host's engine (docker or podman): resolves the tag, pulls by O(pull) policy, and optionally builds a thin derived
    image FROM it with O(extra_pip_packages) and O(plugins) installed."
  - "Version resolution: empty or V(latest) -> the newest vLLM release, looked up from the GitHub releases API
    (O(release_api_url)) and cached for O(release_cache_ttl) seconds in O(release_cache); when the lookup fails
    (offline, rate limited) the V(latest) tag is used and a warning says so. V(0.8.5) or V(v0.8.5) -> V(v0.8.5);
    V(nightly) -> V(nightly); a 40-hex vLLM commit -> V(nightly-<commit>). Anything else fails before anything is
    pulled. O(image) overrides all of that with an explicit reference."
  - "Derived images are tagged C(<derived_repository>:<vllm tag>-<16 hex>) from a hash of the base image id, the
    sorted normalized requirement strings, the plugin files' contents, the O(pip_find_links) files and pip options.
    When that tag is present nothing is built (changed=false). Labels C(gpufleet.image.base),
    C(gpufleet.image.base-id), C(gpufleet.image.packages), C(gpufleet.image.plugins), C(gpufleet.image.hash) record
    what it is made of. The base image must have C(python3 -m pip) (the vLLM images do)."
  - "Podman is used through its Docker-compatible API service (the Python docker SDK talks to it). The socket is
    O(podman_socket), else C(CONTAINER_HOST), else C(/run/podman/podman.sock), else
    C(/run/gpufleet-podman.sock); when none answers the module starts
    C(podman system service --time=0 unix:///run/gpufleet-podman.sock) in the background and uses it."
  - "Failures name the image and the cause, with RV(failure_class): C(bad_version), C(bad_package), C(bad_plugin),
    C(registry_unreachable), C(unauthorized), C(not_found), C(not_present) (pull=never), C(build_failed) (with the
    last lines of the build log in the message and in C(build_log_tail)), C(engine_unreachable)."
author:
  - gpufleet maintainers (@gpufleet)
requirements:
  - docker (Python SDK) >= 7.0 on the target
  - packaging (Python) on the target when O(extra_pip_packages) is used (pip's vendored copy is used otherwise)
extends_documentation_fragment:
  - gpufleet.vllm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports what would be pulled or built in RV(actions) without touching the engine's images. With
        O(pull=always) and the image present, check mode cannot know whether the registry has a newer image and
        reports C(changed=false) with the pull listed in RV(actions).
  diff_mode:
    support: full
    details:
      - Shows the base image id and the id of the image to run, old -> new.
  idempotent:
    support: full
    details:
      - With O(pull=always) the module reports a change only when the pulled image id differs from the one before.
options:
  version:
    description:
      - The vLLM version. Empty or V(latest) means the newest release, V(nightly) the nightly image, a 40-hex commit
        that commit's nightly image, otherwise a release such as V(0.10.2) or V(v0.10.2).
    type: str
  image:
    description:
      - An explicit image reference (C([registry/]repository[:tag][@sha256:...])) to use instead of
        O(repository) and O(version).
    type: str
  repository:
    description:
      - The repository the resolved tag belongs to (a mirror such as C(registry.example.com/vllm/vllm-openai)).
    type: str
    default: vllm/vllm-openai
  pull:
    description:
      - V(missing) pulls only when the image is not present, V(always) pulls every time (changed only when the
        image id changes), V(never) fails when the image is not present.
    type: str
    choices: [missing, always, never]
    default: missing
  registry_username:
    description:
      - User name for the registry of the image. Without it the engine's own credentials (if any) are used.
    type: str
  registry_password:
    description:
      - Password or token for O(registry_username). Never logged or returned.
    type: str
  runtime:
    description:
      - The container engine on the target.
    type: str
    choices: [docker, podman]
    default: docker
  docker_host:
    description:
      - The docker daemon to talk to (default C(DOCKER_HOST) or C(unix:///var/run/docker.sock)).
    type: str
  podman_socket:
    description:
      - The podman API service socket (C(unix:///path)). See the description for the default and the auto-start.
    type: str
  extra_pip_packages:
    description:
      - pip requirement strings (C(vllm-plugin-x==1.2), C(pkg[extra]>=1,<2), C(name @ https://...)) installed into a
        derived image. Entries that are not requirement strings (pip options, paths) are refused, each one named.
    type: list
    elements: str
    default: []
  plugins:
    description:
      - Local files on the target copied into the derived image under C(/opt/gpufleet/plugins/). C(.whl) files are
        pip-installed; that directory is also on C(sys.path) (a C(.pth) file), so C(.py) files are importable
        (for example for C(--tool-parser-plugin /opt/gpufleet/plugins/my_parser.py)).
    type: list
    elements: path
    default: []
  pip_find_links:
    description:
      - Local directories on the target with wheels or sdists, copied into the build and given to pip as
        C(--find-links). With O(pip_no_index) they are the only package source (offline builds).
    type: list
    elements: path
    default: []
  pip_index_url:
    description:
      - pip C(--index-url) for the derived build (pip's own default, PyPI, when not set). Do not put credentials in it; it is
        part of the image.
    type: str
  pip_no_index:
    description:
      - Give pip C(--no-index) (install only from O(plugins) and O(pip_find_links)).
    type: bool
    default: false
  derived_repository:
    description:
      - Repository name of derived images; with O(push), in a registry (V(registry.example.com:5000/gpufleet/vllm-openai)).
    type: str
    default: gpufleet/vllm-openai
  push:
    description:
      - With O(extra_pip_packages) or O(plugins), O(derived_repository) names a registry shared by the hosts. A host
        without the derived image first pulls its tag from there (another host with the same inputs built and pushed
        it, the tag being the content hash); only when the registry does not have it, it builds it and pushes it.
      - The engine's own login to that registry is used (C(docker login)/C(podman login)), not O(registry_username).
    type: bool
    default: false
  release_api_url:
    description:
      - The endpoint answering the newest vLLM release (GitHub's C(releases/latest) JSON with C(tag_name)).
    type: str
    default: https://api.github.com/repos/vllm-project/vllm/releases/latest
  release_cache:
    description:
      - Cache file (on the target) for the newest-release lookup.
    type: path
    default: ~/.cache/gpufleet/vllm-releases.json
  release_cache_ttl:
    description:
      - Seconds a cached newest-release answer is used before it is looked up again.
    type: int
    default: 3600
  timeout:
    description:
      - Seconds to wait for one engine API call (a pull or a build can take long).
    type: int
    default: 1800
  progress_dir:
    description:
      - A directory on the host where the pull keeps a progress file (bytes and layers done/total, JSON) while it runs,
        removed when it ends; C(gpufleet.vllm.fleet_apply) uses C(/var/lib/gpufleet/pulls), which
        C(gpufleet.vllm.vllm_deployment_info) and C(playbooks/status.yml) read. Unset, only RV(pull_progress) reports it.
    type: path
notes:
  - The derived image is built on the target host's engine; pip in the build uses the network of the engine's build
    containers. For hosts without network, use O(plugins) / O(pip_find_links) with O(pip_no_index=true).
seealso:
  - module: gpufleet.vllm.vllm_container
"""

EXAMPLES = r"""
- name: The newest vLLM release
  gpufleet.vllm.vllm_image:
    version: latest
  register: vllm_img

- name: A pinned release from a mirror, with credentials
  gpufleet.vllm.vllm_image:
    version: "0.10.2"
    repository: registry.example.com/vllm/vllm-openai
    registry_username: puller
    registry_password: "{{ vault_registry_token }}"

- name: A nightly build of one commit, on podman
  gpufleet.vllm.vllm_image:
    version: 1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b
    runtime: podman

- name: A derived image with extra packages and a local plugin wheel
  gpufleet.vllm.vllm_image:
    version: "0.10.2"
    extra_pip_packages:
      - "vllm-plugin-example==0.3.1"
      - "flashinfer-python>=0.2"
    plugins:
      - /srv/vllm-plugins/my_tool_parser.py
      - /srv/vllm-plugins/my_plugin-1.0-py3-none-any.whl
  register: vllm_img

- name: Run it
  gpufleet.vllm.vllm_container:
    name: chat
    image: "{{ vllm_img.image }}"
    model: Qwen/Qwen2.5-0.5B-Instruct
"""

RETURN = r"""
image:
  description: The reference to run (the derived image's tag when one is built). Null in check mode when it
    depends on an image that would be pulled first.
  returned: success
  type: str
  sample: gpufleet/vllm-openai:v0.10.2-3f2a9c0d1e4b5a67
image_id:
  description: Id of RV(image) (null in check mode when it would be pulled or built).
  returned: success
  type: str
  sample: sha256:9b0cfba6d443...
repo_digests:
  description: Registry digests of RV(image) (empty for a derived image).
  returned: success
  type: list
  elements: str
  sample: [vllm/vllm-openai@sha256:bc06d3b3...]
base_image:
  description: The resolved upstream reference (C(repository:tag)).
  returned: success
  type: str
  sample: vllm/vllm-openai:v0.10.2
base_image_id:
  description: Id of RV(base_image) (null in check mode when it would be pulled).
  returned: success
  type: str
vllm_tag:
  description: The resolved tag (C(v0.10.2), C(latest), C(nightly), C(nightly-<commit>)) or the tag of O(image).
  returned: success
  type: str
  sample: v0.10.2
vllm_version:
  description: The vLLM version when the tag names a release, else null.
  returned: success
  type: str
  sample: 0.10.2
derived:
  description: Whether RV(image) is a derived image (extra packages or plugins).
  returned: success
  type: bool
packages:
  description: The normalized, sorted requirement strings installed in the derived image.
  returned: success
  type: list
  elements: str
  sample: ["vllm-plugin-example==0.3.1"]
plugins:
  description: File names of the plugins in the derived image.
  returned: success
  type: list
  elements: str
content_hash:
  description: The hash the derived tag is made from.
  returned: when RV(derived) and the base image id is known
  type: str
pushed:
  description: With O(push), true when this run built the derived image and pushed it to its registry.
  returned: when the derived image was pushed
  type: bool
runtime:
  description: The engine used.
  returned: success
  type: str
  sample: docker
actions:
  description: What was done (or, in check mode, would be done), one line each; empty for a no-op.
  returned: success
  type: list
  elements: str
  sample: ["pulled vllm/vllm-openai:v0.10.2 (9b0cfba6d443)", "built gpufleet/vllm-openai:v0.10.2-3f2a... FROM ..."]
pull_progress:
  description:
    - "The pull's progress as the engine reported it (its last snapshot; issue #19): C(phase) (V(done), or V(pulling)/V(extracting)
      when it failed), C(bytes_done), C(bytes_total), C(bytes_known) (false when the engine gives no byte counts: podman 4.3's
      Docker-compatible service reports layers only), C(layers_done), C(layers_total), C(layers_existing) (already in the
      engine), C(seconds). While the pull runs the same numbers are in a progress file under the state directory's C(pulls/)
      (C(playbooks/status.yml) shows them: C(pulling image · 3.5/21.6 GB))."
  returned: when the image was pulled
  type: dict
build_log_tail:
  description: The last lines of the build log when a derived image was built.
  returned: when a derived image was built
  type: list
  elements: str
failure_class:
  description: On failure, the kind of failure (see the description).
  returned: failure
  type: str
  sample: unauthorized
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._image.ensure import ARGUMENT_SPEC, ensure_image
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.factory import get_runtime


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params

    def engine() -> Runtime:
        return get_runtime(
            p["runtime"], docker_host=p["docker_host"], podman_socket=p["podman_socket"], timeout=p["timeout"]
        )

    try:
        result, warnings = ensure_image(p, module.check_mode, engine)
    except GpufleetError as e:
        module.fail_json(msg=str(e), **e.details)
    for w in warnings:
        module.warn(w)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
