#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: model_sync
short_description: Put validated model weights on a host, atomically, and do nothing when they are already there
description:
  - Fetches model weights from the Hugging Face hub (through C(huggingface_hub), honouring E(HF_ENDPOINT),
    E(HF_HUB_OFFLINE) and C(hf_xet) when installed), from a local checkpoint directory, from an http(s) file or
    archive, from S3 or an S3-compatible store such as Cloudflare R2 (O(source=s3)), or from a snapshot already in a
    Hugging Face cache on the host (O(source=hf_cache)), into O(models_root)/O(name)/REVISION_ID. O(sources) tries
    several in order and RV(served_by) says which one served. The result's RV(path) is what
    C(gpufleet.vllm.vllm_container) mounts, and RV(revision_id) what it hashes (its O(gpufleet.vllm.vllm_container#module:model_revision)).
  - Each identity of the weights is a revision with its own directory, never changed once installed - the hub
    commit the revision resolves to (and the allow/ignore patterns), the URL and its checksum, or a digest of
    the names, sizes and mtimes of a local checkpoint's files. A new revision is installed beside the old one, so
    a running container keeps the weights it started with until it is replaced. Revisions that no managed
    container (docker or podman, running or not) mounts are removed beyond the newest O(keep_revisions); when
    an engine does not answer, none is removed.
  - A model synced by an older release lies flat in O(models_root)/O(name). It is kept as it is while its
    identity is unchanged (RV(path) is then that directory and RV(revision_id) null, so its containers are not
    restarted); a new revision is installed below it, and the flat files go once no container uses them.
  - Downloads land in a staging directory on the same filesystem (O(models_root)/.gpufleet/staging/), are
    validated, flushed to disk (fsync of every file and directory), then swapped in with one rename; the installed
    version stays untouched until then, and is kept if anything fails. A killed run, or a power loss, leaves the
    installed model intact; the next run resumes the staging directory. The disk writeback is started while the
    bytes come in, so the flush before the swap mostly waits for the last fraction of a second.
  - The free space is checked from the remote sizes plus a margin before any byte is written.
  - A per-model lock (flock on O(models_root)/.gpufleet/locks/NAME.lock) keeps two runs on one host apart.
  - A manifest in O(models_root)/.gpufleet/manifests/NAME.json (source, resolved commit, revision id, file names,
    sizes, mtimes) makes a re-run with the same source answer C(changed=false) without hashing or downloading;
    each installed revision has its own in O(models_root)/.gpufleet/revisions/NAME/, so going back to a revision
    still installed fetches nothing.
  - Progress (state, bytes_done, bytes_total) is written to O(models_root)/.gpufleet/status/NAME.json while it
    runs, for the status playbook and the node agent; the module works under C(async)/C(poll).
version_added: 0.1.0
author:
  - gpufleet maintainers (@gpufleet)
requirements:
  - huggingface_hub (for O(source=hf))
  - boto3 (for O(source=s3) only)
  - docker (Python SDK, optional, for the in-use check of O(state=absent))
extends_documentation_fragment:
  - gpufleet.vllm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports what would be downloaded or copied and how many bytes, without writing anything.
  diff_mode:
    support: full
    details:
      - Old and new revision id, commit and file list.
  idempotent:
    support: full
options:
  name:
    description:
      - Directory name of the model under O(models_root).
    type: str
    required: true
  state:
    description:
      - V(present) syncs the model; V(absent) removes it (refused while a running gpufleet-managed container
        mounts it, unless O(force=true)).
    type: str
    choices: [present, absent]
    default: present
  source:
    description:
      - Where the weights come from. O(source) or O(sources) is required with O(state=present).
      - V(hf) the hub (O(repo_id)); V(local) a checkpoint directory (O(src)); V(url) an http(s) file or archive
        (O(url)); V(s3) every object under O(s3_url); V(hf_cache) a snapshot of O(repo_id) at O(revision) already in
        the Hugging Face cache O(hf_cache_dir), hard-linked (no copy) into the revision directory.
    type: str
    choices: [hf, local, url, s3, hf_cache]
  sources:
    description:
      - An order of sources to try instead of one O(source), e.g. C([local, hf_cache, s3, hub]) (V(hub) is V(hf)).
        The first that can serve the model wins (RV(served_by)); the ones before it and why they could not are
        RV(tried). When none can, one error lists why each failed. Every listed source needs its options.
      - A mistake in the options, or another run holding the model's lock, stops the order at once.
    type: list
    elements: str
  models_root:
    description:
      - Directory that holds the models. Must be an absolute path.
    type: path
    default: /var/lib/gpufleet/models
  repo_id:
    description:
      - Hub repo (C(ORG/NAME)). Required with O(source=hf).
    type: str
  revision:
    description:
      - Branch, tag or commit of the hub repo. Resolved to a commit sha, which is returned and recorded.
    type: str
    default: main
  token:
    description:
      - Hub token for gated or private repos. Never logged. Defaults to E(HF_TOKEN).
    type: str
  hf_endpoint:
    description:
      - Hub URL. Defaults to E(HF_ENDPOINT), else U(https://huggingface.co).
    type: str
  allow_patterns:
    description:
      - Only hub files matching one of these glob patterns are fetched.
    type: list
    elements: str
  ignore_patterns:
    description:
      - Hub files matching one of these glob patterns are skipped.
      - When not given, C(original/*) and C(.gitattributes) are skipped and, for repos with safetensors weights, the duplicate weight
        formats (C(*.bin), C(*.pt), C(*.pth), C(*.msgpack), C(*.h5)) too.
    type: list
    elements: str
  max_workers:
    description:
      - Parallel file downloads from the hub, from 1 to 64.
    type: int
    default: 8
  download_backend:
    description:
      - How hub files are fetched. The revision and the file list always come from C(huggingface_hub).
      - V(auto) and V(huggingface_hub) use C(huggingface_hub)'s C(snapshot_download). Files on xet storage go
        through C(hf_xet) when installed, the others over plain HTTP, read from the socket 512 KiB at a time and
        written out as they arrive (this module's tuning of C(huggingface_hub)'s C(DOWNLOAD_CHUNK_SIZE) and its
        HTTP connection's read size, for its own process only). C(huggingface_hub) 0.x with
        E(HF_HUB_ENABLE_HF_TRANSFER) set still uses C(hf_transfer).
      - V(builtin) fetches the plain C(/resolve/) URLs in parallel with large reads, resuming partial files
        (proxies from the environment are honoured; the token is not forwarded on redirects). It can be faster on
        plain HTTP mirrors; files on xet storage still go through C(huggingface_hub).
    type: str
    choices: [auto, builtin, huggingface_hub]
    default: auto
  src:
    description:
      - Checkpoint directory for O(source=local). Must lie under one of O(allowed_dirs) after resolving symlinks;
        C(..) components and symlinks leading outside are refused.
    type: path
  allowed_dirs:
    description:
      - Directories a local checkpoint may come from (the allowlist); absolute paths.
      - Every file is opened by its resolved path with no symlink followed on the way, and must lie under one of
        these directories when it is copied, not only when it was checked.
    type: list
    elements: path
    default: []
  link:
    description:
      - With O(source=local), use the checkpoint in place (the revision directory becomes a symlink to it)
        instead of copying it (hard links are used where the filesystem allows, so write a changed checkpoint's
        files anew and rename them into place; a file rewritten in place changes its installed copy too).
    type: bool
    default: false
  url:
    description:
      - http(s) URL of a file (e.g. a C(.gguf)) or an archive (C(.tar), C(.tar.gz), C(.tgz), C(.zip)) for
        O(source=url). Every archive member is checked before anything is written; absolute paths, C(..),
        links that do not resolve to a file or directory of the archive itself (chains included), members below
        a link, device files and fifos are refused, and so are archives that would not fit the free space or
        expand more than 100 times their size. A corrupt archive fails with one error and leaves nothing behind.
      - A body shorter than the server announced (C(Content-Length)) is refused and resumed by the next run.
      - A URL without O(checksum) is treated as immutable (use O(force) to fetch it again).
      - User and password in the URL and its query string (e.g. a pre-signed URL's signature) are masked in the
        results, the messages and the manifest, which keeps only a sha256 of the whole URL (none when a
        O(checksum) pins the content). Ansible itself logs module arguments to the host's journal before the
        module runs; set C(no_log) on the task where that matters.
    type: str
  checksum:
    description:
      - Expected C(sha256:<hex>) of the file at O(url).
    type: str
  validate:
    description:
      - Check the model before swapping it in (config.json parses, tokenizer present, index-listed shards present
        with the right size, shard sets complete, safetensors headers parse; a single C(.gguf) is accepted).
    type: bool
    default: true
  require_tokenizer:
    description:
      - Whether validation requires tokenizer files.
    type: bool
    default: true
  force:
    description:
      - Fetch again even when the manifest says the model is in sync; with O(state=absent), remove even when a
        running container mounts it.
    type: bool
    default: false
  lock_timeout:
    description:
      - Seconds to wait for another run on the same model to finish, from 0 to 86400.
    type: int
    default: 600
  s3_url:
    description:
      - C(s3://BUCKET/PREFIX) for O(source=s3) - every object below the prefix is a file of the model (directory
        markers are skipped). Keys whose name below the prefix is absolute, has C(..), empty parts, a backslash or
        a control character are refused before anything is written.
      - The revision is a digest of every (key, ETag, size) - a new, removed or changed object is a new revision
        (a container serving the old one is rolled like for a new hub commit), an unchanged listing is a no-op
        (one listing request). Each ranged download is pinned to the listed ETag (C(If-Match)), so an object
        replaced meanwhile fails the run instead of mixing versions; each range and file must have its exact size.
    type: str
  endpoint_url:
    description:
      - URL of an S3-compatible store (Cloudflare R2 C(https://ACCOUNT.r2.cloudflarestorage.com), MinIO, ...) for
        O(source=s3); path-style addressing is used with it. Default - AWS.
    type: str
  region:
    description:
      - Region of the bucket (V(auto) for R2). Default - boto3's (E(AWS_DEFAULT_REGION), the shared config).
    type: str
  aws_access_key_id:
    description:
      - Access key for O(source=s3), with O(aws_secret_access_key). Never logged. When neither is given, boto3's
        own chain is used (E(AWS_ACCESS_KEY_ID) / E(AWS_SECRET_ACCESS_KEY) / E(AWS_SESSION_TOKEN), a profile, an
        instance role).
    type: str
  aws_secret_access_key:
    description:
      - Secret key for O(source=s3). Never logged.
    type: str
  aws_session_token:
    description:
      - Session token of temporary credentials for O(source=s3). Never logged.
    type: str
  hf_cache_dir:
    description:
      - The Hugging Face hub cache for O(source=hf_cache) (C(models--ORG--NAME/snapshots/SHA) layout). Default -
        E(HF_HUB_CACHE), else E(HF_HOME)/hub, else C(~/.cache/huggingface/hub).
      - It must be on the filesystem of O(models_root) (the files are hard-linked, never copied); otherwise this
        source fails and a O(sources) order moves on.
    type: path
  lora_modules:
    description:
      - LoRA adapters to sync from the hub beside the model, each into
        O(models_root)/O(name)/loras/NAME/COMMIT (RV(lora_modules) gives their paths for vllm_container's
        O(gpufleet.vllm.vllm_container#module:lora_modules)). An adapter needs C(adapter_config.json) and its
        weights (C(adapter_model.safetensors) or C(.bin)).
    type: list
    elements: dict
    suboptions:
      name:
        description: The adapter's name (what clients ask vLLM for).
        type: str
        required: true
      repo_id:
        description: Hub repo of the adapter (C(ORG/NAME)).
        type: str
        required: true
      revision:
        description: Branch, tag or commit of the adapter repo.
        type: str
        default: main
  keep_revisions:
    description:
      - How many of the newest revisions to keep installed, from 1 to 100; the current one counts as one of them.
        Older ones are removed unless a managed container mounts them.
    type: int
    default: 2
notes:
  - Requires C(huggingface_hub) on the target for O(source=hf), and the C(docker) SDK for the in-use check of
    O(state=absent) (skipped when no docker daemon answers).
"""

EXAMPLES = r"""
- name: Llama weights from the hub, pinned to a tag
  gpufleet.vllm.model_sync:
    name: llama-3.1-8b
    source: hf
    repo_id: meta-llama/Llama-3.1-8B-Instruct
    revision: main
    token: "{{ hf_token }}"
  register: model

- name: A checkpoint that already sits on the host, used in place
  gpufleet.vllm.model_sync:
    name: my-finetune
    source: local
    src: /data/checkpoints/my-finetune
    allowed_dirs: [/data/checkpoints]
    link: true

- name: A GGUF file from an internal server
  gpufleet.vllm.model_sync:
    name: qwen-gguf
    source: url
    url: https://models.internal/qwen2.5-7b-q4_k_m.gguf
    checksum: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef

- name: Long download observed through async
  gpufleet.vllm.model_sync:
    name: big
    source: hf
    repo_id: org/big-model
  async: 7200
  poll: 10

- name: Weights from S3 (or R2 with endpoint_url), credentials from the vault
  gpufleet.vllm.model_sync:
    name: llama-3.1-8b
    source: s3
    s3_url: s3://models-bucket/llama-3.1-8b
    aws_access_key_id: "{{ vault_aws_access_key_id }}"
    aws_secret_access_key: "{{ vault_aws_secret_access_key }}"
  no_log: true

- name: The first source that has the weights - a local copy, the host's HF cache, S3, then the hub
  gpufleet.vllm.model_sync:
    name: qwen
    sources: [local, hf_cache, s3, hub]
    src: /data/checkpoints/qwen
    allowed_dirs: [/data/checkpoints]
    repo_id: Qwen/Qwen2.5-0.5B-Instruct
    s3_url: s3://models-bucket/qwen
  register: model   # model.served_by says which one served

- name: Remove a model nobody serves any more
  gpufleet.vllm.model_sync:
    name: old-model
    state: absent
"""

RETURN = r"""
path:
  description:
    - Directory of the installed revision on the host (what vllm_container mounts); for a flat install of an
      older release, O(models_root)/O(name) itself.
  returned: always
  type: str
  sample: /var/lib/gpufleet/models/llama-3.1-8b/1c2fbd64d08c0dd4c6cbd50331369cad10102c4a
revision_id:
  description:
    - Id of the installed (in check mode, the wanted) revision - the commit sha for the hub, C(url-...) and
      C(local-...) digests otherwise - to pass as vllm_container's O(gpufleet.vllm.vllm_container#module:model_revision).
    - Null for a flat install of an older release, and with O(state=absent).
  returned: always
  type: str
  sample: 1c2fbd64d08c0dd4c6cbd50331369cad10102c4a
removed_revisions:
  description: Revisions removed (in check mode, that would be) because no container uses them and newer ones are kept.
  returned: with O(state=present), when more than O(keep_revisions) revisions are installed
  type: list
  elements: str
source:
  description: The source kind (V(hf), V(local), V(url), V(s3), V(hf_cache)), or V(none) for O(state=absent).
  returned: always
  type: str
served_by:
  description: The source that served the model (with O(sources), the first one that could).
  returned: with O(state=present)
  type: str
  sample: s3
tried:
  description: With O(sources), the sources tried before RV(served_by) and why each could not serve.
  returned: with O(sources)
  type: list
  elements: dict
  sample: [{source: local, failure_class: bad_source, error: local source /data/x is not a directory}]
s3_url:
  description: The bucket and prefix served from.
  returned: source s3
  type: str
snapshot:
  description: The HF cache snapshot directory the files were hard-linked from.
  returned: source hf_cache, when changed
  type: str
lora_modules:
  description:
    - The synced LoRA adapters - name, repo_id, revision, commit, path (the directory to give vllm_container) and
      changed.
  returned: when O(lora_modules) is given
  type: list
  elements: dict
  sample: [{name: sql, repo_id: org/sql-lora, revision: main, commit: 1c2fbd64d08c0dd4c6cbd50331369cad10102c4a,
            path: /var/lib/gpufleet/models/llama/loras/sql/1c2fbd64d08c0dd4c6cbd50331369cad10102c4a, changed: false}]
revision:
  description: The requested hub revision.
  returned: always
  type: str
commit:
  description: The commit sha the revision resolved to (hub source), else null.
  returned: always
  type: str
  sample: 1c2fbd64d08c0dd4c6cbd50331369cad10102c4a
files:
  description: Relative names of the model's files.
  returned: always
  type: list
  elements: str
size_bytes:
  description: Total size of the model's files.
  returned: always
  type: int
changed:
  description: Whether the model was (or in check mode would be) fetched, replaced or removed.
  returned: always
  type: bool
validation:
  description: Validation report (ok, format, problems, files_checked, weight_bytes), null when skipped.
  returned: always
  type: dict
timings:
  description:
    - Seconds spent in the phases of a sync that changed something, C(download) (hub, url and s3 sources), C(link)
      (hf_cache), C(copy)
      (local source without O(link)), C(validate) (when O(validate=true)), C(fsync) (the flush to disk before the
      swap) and C(swap).
  returned: with O(state=present), when changed, not in check mode
  type: dict
  sample: {download: 2.41, validate: 0.004, fsync: 0.03, swap: 0.001}
download_backend:
  description: How the hub files were (or would be) fetched, see O(download_backend).
  returned: source hf, when changed
  type: str
  sample: builtin
would_download:
  description: Files a real run would fetch (source hf or s3) or hard-link from the cache (source hf_cache).
  returned: in check mode, source hf, s3 or hf_cache, when changed
  type: list
  elements: str
download_bytes:
  description: Bytes a real run would download (0 for hf_cache, which hard-links).
  returned: in check mode, source hf, s3, hf_cache or url, when changed
  type: int
free_bytes:
  description: Free bytes under models_root.
  returned: in check mode, source hf or s3, when changed
  type: int
would_copy:
  description: Files a real run would copy from the local source.
  returned: in check mode, source local, when changed
  type: list
  elements: str
copy_bytes:
  description: Bytes a real run would copy from the local source.
  returned: in check mode, source local, when changed
  type: int
copy:
  description: How many files were hard-linked and copied from the local source (or the HF cache).
  returned: source local or hf_cache, when copied
  type: dict
src:
  description: The resolved local source directory.
  returned: source local, when changed
  type: str
link:
  description: Whether the local source is used in place.
  returned: source local, when changed
  type: bool
url:
  description: The URL fetched, with user, password and query string masked (C(***)).
  returned: source url, when changed
  type: str
sha256:
  description: sha256 of the fetched file.
  returned: source url, when fetched
  type: str
mounted_by:
  description: Running managed containers that mount the model.
  returned: state absent, when present
  type: list
  elements: str
msg:
  description: One line on what happened.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.lora import run
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.sync import REQUIRED_IF, argument_spec
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.url import mask


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_if=REQUIRED_IF,
        supports_check_mode=True,
    )
    # the echoed arguments show the URL masked, like the result (a pre-signed URL's query is a credential)
    invocation = {"module_args": {**module.params, "url": mask(module.params["url"]) if module.params["url"] else None}}
    try:
        result = run(module.params, check_mode=module.check_mode)  # the model, then its LoRA adapters
    except GpufleetError as err:
        module.fail_json(msg=str(err), invocation=invocation, **err.details)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(invocation=invocation, **result)


if __name__ == "__main__":
    main()
