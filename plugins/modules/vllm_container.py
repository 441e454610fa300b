#!/usr/bin/python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vllm_container
short_description: Run exactly one declared vLLM server in a container, idempotently, or say precisely why not
description:
  - Converges one vLLM OpenAI-compatible server, container C(gpufleet-NAME), on docker or podman.
  - The normalized spec (image id, argv list, env keys and salted value hashes, sorted mounts, GPU ids, network, IPC,
    restart policy, labels) is hashed into the C(gpufleet.config-hash) label. Same hash means C(changed=false)
    without touching the container; a different hash recreates it. Engine fields are never re-read for comparison,
    so env order, image digests or how the engine reports device requests never cause a spurious change.
  - Pre-checks run before anything is touched (port bound by something else, GPU ids not on the host,
    tensor x pipeline parallel size not equal to the number of GPUs, C(gpu_memory_utilization) above the free
    memory of a GPU, model path missing or without config.json, image absent unless O(pull=missing), unknown vLLM flags).
  - A replacement never loses the working server. The old container is stopped and kept as
    C(gpufleet-NAME-previous) until the new one answers C(/health) and C(/v1/models); if the new one fails, it is
    removed and the old one renamed back and started, and the module fails with the failure class and rollback.
  - Failures are classified from the last 300 log lines (C(gpu_oom), C(kv_cache_too_small), C(no_gpu), C(hf_auth),
    C(model_not_found), C(port_conflict), C(ray_cluster_incomplete), C(ray_node_lost), C(bad_args), C(timeout),
    C(unknown)) with one actionable line and the masked log tail.
  - Secrets (O(api_key), O(hf_token), O(secret_env)) enter the container as environment only, never as arguments,
    labels or manifest values.
  - A reproducibility manifest (no secret values) is written to O(manifest_dir)/NAME.json and returned.
version_added: 0.1.0
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.vllm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Computes the same plan as a real run and returns it in RV(actions) without touching anything.
  diff_mode:
    support: full
    details:
      - Old and new normalized spec, secrets masked, sorted.
  idempotent:
    support: full
options:
  api_key:
    description:
      - API key clients must present; passed as E(VLLM_API_KEY) in the environment, never as an argument.
    type: str
  chat_template:
    description:
      - C(--chat-template).
    type: str
  compile_cache_dir:
    description:
      - Host directory whose NAME subdirectory holds vLLM's compile cache (C(/root/.cache/vllm)), so restarts skip torch.compile.
    type: path
    default: /var/lib/gpufleet/vllm-cache
  cpu_offload_gb:
    description:
      - C(--cpu-offload-gb).
    type: float
  docker_host:
    description:
      - Docker daemon URL. Defaults to E(DOCKER_HOST), else C(unix:///var/run/docker.sock).
    type: str
  dtype:
    description:
      - C(--dtype).
    type: str
    choices: [auto, half, float16, bfloat16, float, float32]
  enable_auto_tool_choice:
    description:
      - C(--enable-auto-tool-choice).
    type: bool
  enable_chunked_prefill:
    description:
      - C(--enable-chunked-prefill).
    type: bool
  enable_prefix_caching:
    description:
      - C(--enable-prefix-caching).
    type: bool
  enforce_eager:
    description:
      - C(--enforce-eager).
    type: bool
  env:
    description:
      - Environment variables. Values are compared through salted hashes; a removed key recreates the container.
    type: dict
    default: {}
  extra_args:
    description:
      - Further vLLM arguments, appended last so they win over the typed options.
    type: list
    elements: str
    default: []
  generation_config:
    description:
      - C(--generation-config).
    type: str
  from_manifest:
    description:
      - Path, on the target, of a reproducibility manifest written by this module (e.g. C(/var/lib/gpufleet/manifests/NAME.json)).
        The server it describes is deployed again, here or on another host.
      - "From the manifest: O(name), O(image) (pinned to the manifest's registry digest when it has one), O(model), O(runtime), O(host), O(port),
        O(gpus), O(extra_args), O(lora_modules), O(sleep_mode) and every typed engine option (O(max_model_len), O(seed), O(revision)...)."
      - Every option given explicitly in the task wins over the manifest (e.g. O(name) and O(port) to run a second copy, O(gpus) and O(runtime) on
        another host). Options a manifest does not hold (O(env), O(mounts), caches, O(network), O(restart_policy), O(labels)) come from the task.
      - "Secrets are never in a manifest (it records env keys only): give O(api_key), O(hf_token), O(secret_env) and O(env) values again; a warning
        names the env keys of the manifest's server that the task does not set."
      - The manifest itself (a dict, for example read on the controller with C(lookup('file', ...) | from_json)) is accepted too.
      - A missing or unreadable file, a file that is not JSON, or a manifest of another manifest version fails before anything is touched.
    type: raw
  gpu_memory_utilization:
    description:
      - C(--gpu-memory-utilization) (vLLM default 0.9); checked against the free memory of each selected GPU.
    type: float
  gpus:
    description:
      - "GPU indices or UUIDs (C(GPU-...)) given to the container, or V(all). Docker: one device request with exactly these ids; podman: CDI devices
        C(nvidia.com/gpu=ID). Compared as a set. None gives no GPU."
      - V(all) is every GPU of the host, read from its GPU facts (NVML, else nvidia-smi) when the task runs and given as their indices, not as the
        engine's C(all); O(tensor_parallel_size) then defaults to their count (divided by O(pipeline_parallel_size)). Explicit ids keep the labels
        saying which GPUs the container holds (for the fleet's placement and other containers' pre-checks), give the same configuration hash as
        the same GPUs named one by one, and change the hash (a recreate) only when the host's GPUs change. Without GPU facts the engine's C(all)
        is used and O(tensor_parallel_size) stays as given (with a warning).
      - A GPU that C(gpufleet.vllm.gpu_facts) calls unhealthy (temperature, a lost GPU, ...) fails the pre-checks (C(gpu_unhealthy)) with why.
    type: list
    elements: str
  hf_cache_dir:
    description:
      - Host directory mounted at the image's Hugging Face cache (C(/root/.cache/huggingface)); created when missing.
    type: path
    default: /var/lib/gpufleet/hf-cache
  hf_token:
    description:
      - Hugging Face token; passed as E(HF_TOKEN) in the environment only.
    type: str
  host:
    description:
      - Address vLLM binds (C(--host)). A non-loopback address without O(api_key) gives a warning.
    type: str
    default: 0.0.0.0
  image:
    description:
      - vLLM image (e.g. from C(gpufleet.vllm.vllm_image)). Must already be present unless O(pull=missing); compared by image id, so a re-tagged image
        recreates the container.
      - Required with O(model) for O(state=started). For O(state=stopped), O(state=paused) and O(state=restarted) give both or neither (neither acts on
        the existing container by name, see O(state)).
    type: str
  idle_pause_after:
    description:
      - Seconds without a request (vLLM's request counters in C(/metrics)) after which the node agent puts the server to sleep (vLLM sleep level 1 -
        weights to CPU RAM, GPU memory freed; the container and its port stay and the first request wakes it). Needs O(sleep_mode=true). Unset
        means never paused for idleness. Kept in the host's lifecycle record, not compared (a change never recreates).
      - It also makes the replica pausable by the warm cache - before another replica starts (or wakes) on its GPUs without room, the least
        recently used pausable replicas there are put to sleep (docs/node_agent.md 'Idle pause and the warm cache').
    type: int
  ipc:
    description:
      - IPC mode; V(host) gives vLLM's shared-memory tensor parallelism what it needs. Set to V(private) with O(shm_size) to avoid it.
    type: str
    default: host
  kv_cache_dtype:
    description:
      - C(--kv-cache-dtype).
    type: str
  labels:
    description:
      - Extra container labels (keys may not start with C(gpufleet.)).
    type: dict
    default: {}
  log_driver:
    description:
      - The engine's log driver for the container, a file driver that C(docker logs), C(podman logs) and the node agent
        read. Default the runtime's own, V(json-file) for docker and V(k8s-file) for podman; docker also takes V(local).
      - With O(log_max_size) and O(log_max_files) part of the comparison when not all at their defaults (a change
        recreates the container; containers created before these options keep their hash and their log as it was).
    type: str
    choices: [json-file, local, k8s-file]
  log_max_files:
    description:
      - Log files the engine keeps for the container (docker's C(max-file)); the oldest is deleted. Podman's
        V(k8s-file) keeps one file, truncated at O(log_max_size).
    type: int
    default: 3
  log_max_size:
    description:
      - Size at which the engine rotates the container's log (docker's C(max-size), podman's C(--log-opt max-size)),
        a number of bytes, or with V(k), V(m) or V(g) (V(50m)). The container's log then never grows past about
        O(log_max_size) x O(log_max_files). The node agent keeps its own copy per run (docs/node_agent.md).
    type: str
    default: 50m
  lora_modules:
    description:
      - LoRA adapters, each mounted read-only at its path; renders C(--enable-lora --lora-modules NAME=PATH ...).
      - An adapter is given by O(lora_modules[].path), or by O(lora_modules[].repo_id) (and
        O(lora_modules[].revision)) of a hub adapter that C(gpufleet.vllm.model_sync) synced beside the model with
        its own O(gpufleet.vllm.model_sync#module:lora_modules) - the module then uses the revision installed in
        MODELS_ROOT/MODEL/loras/NAME/COMMIT (the model must be model_sync's path). That path holds the commit,
        so a new adapter commit changes the config hash and replaces the container.
    type: list
    elements: dict
    suboptions:
      name:
        description: Adapter name clients request.
        type: str
        required: true
      path:
        description: Adapter directory on the host. Required unless O(lora_modules[].repo_id) is given.
        type: path
      repo_id:
        description: Hub repo of an adapter synced by model_sync beside the model (used when no path is given).
        type: str
      revision:
        description: The adapter's branch, tag or commit, as given to model_sync.
        type: str
        default: main
  manifest_dir:
    description:
      - Directory of the reproducibility manifests on the host.
    type: path
    default: /var/lib/gpufleet/manifests
  max_lora_rank:
    description:
      - C(--max-lora-rank).
    type: int
  max_loras:
    description:
      - C(--max-loras).
    type: int
  max_model_len:
    description:
      - C(--max-model-len).
    type: int
  max_num_batched_tokens:
    description:
      - C(--max-num-batched-tokens).
    type: int
  max_num_seqs:
    description:
      - C(--max-num-seqs).
    type: int
  model:
    description:
      - "Model to serve: an absolute host path (from C(gpufleet.vllm.model_sync)), mounted read-only at the same path, or a hub id (vLLM downloads
        it into O(hf_cache_dir) at start, phase C(downloading))."
      - Required with O(image) for O(state=started); for the other states give both or neither (see O(state)).
      - With C(gpufleet.vllm.model_sync), give its RV(gpufleet.vllm.model_sync#module:path) (the directory of one
        revision, never changed while mounted) and its RV(gpufleet.vllm.model_sync#module:revision_id) as
        O(model_revision). Without O(served_model_name) the API's model id is this path, so it changes with the
        revision.
    type: str
  model_revision:
    description:
      - Identity of the weights at O(model), e.g. model_sync's RV(gpufleet.vllm.model_sync#module:revision_id) (a
        hub commit). Part of the configuration hash, so new weights replace the container (readiness-gated,
        rolled back on failure) even where the path stays the same (a local checkpoint served in place). Not
        given, the hash is the one of earlier releases.
    type: str
  mounts:
    description:
      - Extra bind mounts C(SRC:DEST[:ro|rw]). Compared as a set.
    type: list
    elements: str
    default: []
  name:
    description:
      - Deployment name; the container is named C(gpufleet-NAME), the manifest NAME.json.
      - Required, unless O(from_manifest) is given (the manifest's name is then used).
    type: str
  network:
    description:
      - Network mode; V(host) (default) or a network name (the port is then published on O(host)).
    type: str
    default: host
  pid:
    description:
      - The PID namespace to share, V(container:<name>) (or V(host)); default its own.
      - The server of a multi-host replica (C(--distributed-executor-backend ray) in O(extra_args)) shares its Ray head
        container's, as C(gpufleet.vllm.fleet_apply) sets it (the head's raylet checks its drivers by PID). With the
        Ray executor, O(tensor_parallel_size) x O(pipeline_parallel_size) may exceed the GPUs in O(gpus) (the rest
        are the Ray workers' on other hosts).
    type: str
  pipeline_parallel_size:
    description:
      - C(--pipeline-parallel-size).
    type: int
  pin:
    description:
      - Never put to sleep by the node agent (idle pause) nor by the warm cache. Kept in the lifecycle record, not compared; C(playbooks/pin.yml)
        sets a host-side flag over it.
    type: bool
    default: false
  port:
    description:
      - Port vLLM listens on (C(--port)).
    type: int
    default: 8000
  prechecks:
    description:
      - Run the pre-checks (port, GPU ids, TP x PP, memory, model path) before creating a container.
    type: bool
    default: true
  pull:
    description:
      - What to do when O(image) is not present on the host.
      - V(never) fails before anything is touched, naming C(gpufleet.vllm.vllm_image) (pull, build, derive) as the fix.
      - V(missing) pulls it through the engine (phase C(pulling), RV(phases)) after the pre-checks that do not need the image, then goes on.
        Registry credentials are the engine's own (C(docker login), C(podman login)); use C(gpufleet.vllm.vllm_image) for explicit ones. Check mode
        reports the pull in RV(actions) and predicts the argv from the tag's vLLM version (or O(vllm_version)).
      - A present image is never pulled again (use C(gpufleet.vllm.vllm_image) with C(pull=always) to refresh a tag).
    type: str
    default: never
    choices: [never, missing]
  quantization:
    description:
      - C(--quantization).
    type: str
  reasoning_parser:
    description:
      - C(--reasoning-parser).
    type: str
  restart_policy:
    description:
      - Engine restart policy.
    type: str
    default: unless-stopped
    choices: ["no", on-failure, always, unless-stopped]
  revision:
    description:
      - C(--revision).
    type: str
  runtime:
    description:
      - Container engine. V(docker) uses the docker SDK; V(podman) the podman CLI (GPUs as CDI devices C(nvidia.com/gpu=N)).
    type: str
    default: docker
    choices: [docker, podman]
  secret_env:
    description:
      - Secret environment variables (never logged, never in labels or the manifest; only their keys are recorded).
    type: dict
    default: {}
  seed:
    description:
      - C(--seed).
    type: int
  serve_for:
    description:
      - Serve for this long from the container's creation. The deadline is kept in the host's lifecycle record
        (C(<manifest_dir parent>/lifecycle/NAME.json)) that the node agent acts on, not in a label - not part of the
        comparison, so a changed value moves the deadline without a restart; a replica past its deadline is reported
        with RV(lifecycle=expired) and not started (docs/node_agent.md).
      - "The same format as C(serve_for) in the fleet inventory: a bare number is B(hours) (V(12), V(1.5)); a number with a unit C(m) (minutes), C(h)
        (hours) or C(d) (days) (V(90m), V(2h), V(1d)); V(infinite) or null means no expiry."
    type: raw
  max_failed_restarts:
    description:
      - Failures in a row (crashes, failed health, a hung start) the node agent restarts before it stops the replica
        for good and records the cause; V(0) stops it at the first failure. Not part of the comparison.
      - A converge of a replica in that state fails with the cause (RV(lifecycle=failed)) until its configuration
        changes or O(reset_failed=true).
    type: int
    default: 3
  start_timeout:
    description:
      - Seconds a started server may take to answer C(/health) before the node agent counts a hung start as a failure.
        Not part of the comparison.
    type: int
    default: 1800
  reset_failed:
    description:
      - Start a replica the node agent stopped for good (crash loop, hung start) although its configuration is
        unchanged, with a fresh budget. O(state=restarted) does the same.
    type: bool
    default: false
  served_model_name:
    description:
      - "C(--served-model-name): names the API serves the model under."
    type: list
    elements: str
  shm_size:
    description:
      - Size of /dev/shm (e.g. V(16g)) when O(ipc) is not V(host).
    type: str
  sleep_level:
    description:
      - vLLM sleep level for O(state=paused) (1 offloads weights to CPU, 2 discards them).
    type: int
    default: 1
    choices: [1, 2]
  sleep_mode:
    description:
      - Enable vLLM sleep mode (C(--enable-sleep-mode), E(VLLM_SERVER_DEV_MODE=1)); O(state=paused) then frees GPU memory through C(/sleep).
    type: bool
    default: false
  state:
    description:
      - "V(started): the declared server runs and answers (created, recreated or started as needed). Needs O(image) and O(model)."
      - "V(stopped): the container exists with this configuration but is stopped."
      - "V(paused): the server is put to sleep (O(sleep_mode=true): vLLM C(/sleep), GPU memory freed, wakes in seconds) or frozen by the engine (otherwise)."
      - "V(absent): container and manifest removed. Needs only O(name)."
      - "V(restarted): like V(started), then always restarted."
      - "By name: with V(stopped), V(paused) or V(restarted) and neither O(image) nor O(model) given, the module acts on the existing managed container
        C(gpufleet-NAME) as it is, like C(community.docker.docker_container) does: it is stopped, paused or restarted without comparing or recreating
        anything (its port, host and sleep mode come from its labels; the other spec options are ignored and the manifest is left as it is). The
        container must exist and carry C(gpufleet.managed=true), else the module fails and touches nothing. Check mode reports the same actions; the
        diff shows the state before and after."
    type: str
    default: started
    choices: [started, stopped, paused, absent, restarted]
  stop_timeout:
    description:
      - Seconds the server gets to stop before it is killed.
    type: int
    default: 30
  swap_space:
    description:
      - C(--swap-space).
    type: float
  tensor_parallel_size:
    description:
      - C(--tensor-parallel-size). With O(pipeline_parallel_size), must multiply to the number of O(gpus). With O(gpus=[all]) it defaults to the
        host's GPU count.
    type: int
  tokenizer:
    description:
      - C(--tokenizer).
    type: str
  tool_call_parser:
    description:
      - C(--tool-call-parser).
    type: str
  trust_remote_code:
    description:
      - C(--trust-remote-code).
    type: bool
  validate_args:
    description:
      - Validate the argv against the image's vLLM version flag table before touching anything.
      - "With V(true) the typed engine options map to the flags of that version: an option the version no longer has
        (e.g. O(swap_space) on vLLM 0.33.0), an unknown or removed flag in O(extra_args), a missing value or a bad
        choice fails with failure class C(bad_args), in check mode too. An unknown version (nightly, a commit)
        is checked against the newest table, with a warning. V(false) leaves the argv to vLLM."
    type: bool
    default: true
  vllm_version:
    description:
      - vLLM version of the image, when its C(org.opencontainers.image.version) label or E(VLLM_VERSION) is missing or wrong.
    type: str
  wait:
    description:
      - Wait until C(/health) and C(/v1/models) answer after a start.
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds to wait for readiness (first starts download and compile).
    type: int
    default: 1800
  smoke_test:
    description:
      - After a start, the server counts as ready only once one real request through the OpenAI API succeeds
        (C(/v1/completions) with C(max_tokens=1) and the O(api_key), to the first served model; C(/v1/chat/completions)
        when the server has no completions route for it; C(/v1/embeddings) when the argv says C(--task embed),
        C(--runner pooling) or C(--convert embed)). A failure is failure class C(smoke_failed), with the server's
        answer (secrets masked) in RV(hint), and is rolled back like any other start failure.
      - Set V(false) for an engine with none of these endpoints. Not part of the configuration hash.
      - O(smoke_request) chooses the endpoint and the prompt.
    type: bool
    default: true
  smoke_request:
    description:
      - The smoke request of O(smoke_test) (when it is V(true)). Not part of the configuration hash.
    type: dict
    suboptions:
      endpoint:
        description:
          - V(auto) - from the argv, as O(smoke_test) says (completions, chat when the server has no completions
            route for the model, embeddings for an embedding model).
          - V(completions), V(chat) (C(/v1/chat/completions), which applies the model's chat template, so a broken
            template fails the gate) or V(embeddings) - that endpoint only, never another.
        type: str
        choices: [auto, completions, chat, embeddings]
        default: auto
      prompt:
        description:
          - The prompt (chat - the user message; embeddings - the input). Default C(Hello). The inventory schema
            (C(smoke_test) of a deployment) allows at most 4096 characters.
        type: str
requirements:
  - docker (Python SDK) on the target for O(runtime=docker); the podman CLI for O(runtime=podman).
notes:
  - Podman is driven through its CLI (C(podman create/start/inspect/logs)); GPUs are CDI devices, so a CDI spec for
    C(nvidia.com/gpu) must exist (C(nvidia-ctk cdi generate)).
  - vLLM arguments are rendered from the typed options in one table; O(extra_args) come last and win.
"""

EXAMPLES = r"""
- name: Serve a synced model on GPUs 0 and 1
  gpufleet.vllm.vllm_container:
    name: llama
    image: vllm/vllm-openai:v0.10.2
    model: /var/lib/gpufleet/models/llama-3.1-8b
    served_model_name: [llama-3.1-8b]
    gpus: [0, 1]
    tensor_parallel_size: 2
    max_model_len: 8192
    port: 8000
    api_key: "{{ vault_vllm_api_key }}"

- name: Put it to sleep (frees GPU memory) and wake it up later
  gpufleet.vllm.vllm_container:
    name: llama
    image: vllm/vllm-openai:v0.10.2
    model: /var/lib/gpufleet/models/llama-3.1-8b
    gpus: [0, 1]
    tensor_parallel_size: 2
    sleep_mode: true
    state: paused

- name: Podman with CDI GPUs, a hub model and a token
  gpufleet.vllm.vllm_container:
    name: qwen
    runtime: podman
    image: docker.io/vllm/vllm-openai:v0.10.2
    model: Qwen/Qwen3-0.6B
    gpus: [2]
    hf_token: "{{ vault_hf_token }}"
    extra_args: [--max-num-seqs, "64"]

- name: Pull the image when the host does not have it yet, and serve a hub model (vLLM downloads it)
  gpufleet.vllm.vllm_container:
    name: qwen-small
    image: registry.example.com/vllm/vllm-openai:v0.10.2
    pull: missing
    model: Qwen/Qwen3-0.6B
    gpus: [0]
    hf_token: "{{ vault_hf_token }}"
  register: r  # r.phases: [pulling, starting, downloading, loading_weights, ..., ready]

- name: Run a second copy of the server a manifest describes, under another name and port
  gpufleet.vllm.vllm_container:
    from_manifest: /var/lib/gpufleet/manifests/llama.json
    name: llama-copy
    port: 8001
    gpus: [2, 3]
    api_key: "{{ vault_vllm_api_key }}"

- name: Stop it, by name (the configuration is left as it is; start it again with the full spec)
  gpufleet.vllm.vllm_container:
    name: llama
    state: stopped

- name: Remove it
  gpufleet.vllm.vllm_container:
    name: llama
    state: absent
"""

RETURN = r"""
changed:
  description: Whether the container (or its manifest) was, or in check mode would be, changed.
  returned: always
  type: bool
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: ["stop gpufleet-llama and keep it as gpufleet-llama-previous until the new one is ready", "create gpufleet-llama"]
container_name:
  description: Name of the container.
  returned: always
  type: str
  sample: gpufleet-llama
container_id:
  description: Id of the container (absent in check mode before creation).
  returned: when the container exists
  type: str
state:
  description: The state reached (V(expired) when the serve_for deadline has passed - left stopped).
  returned: always
  type: str
lifecycle:
  description:
    - V(expired) (past the serve_for deadline; not started, not a drift), or V(failed) (on failure, when the node
      agent stopped the replica for good; RV(lifecycle_failed) carries its cause), or null.
  returned: unless O(state=absent)
  type: str
lifecycle_failed:
  description: The node agent's record of why it stopped the replica for good (reason, failure_class, hint, at).
  returned: when the run fails because of it
  type: dict
serve_until:
  description: The serve_for deadline in the host's lifecycle record (UTC), null without one.
  returned: unless O(state=absent)
  type: str
  sample: "2026-12-01T18:00:00Z"
config_hash:
  description: sha256 of the normalized spec (the C(gpufleet.config-hash) label).
  returned: unless O(state=absent)
  type: str
spec:
  description: The normalized spec, env values as short salted hashes and secret values masked.
  returned: unless O(state=absent)
  type: dict
changed_keys:
  description: Top-level spec keys that differ from the current container.
  returned: unless O(state=absent)
  type: list
  elements: str
changed_env_keys:
  description: Env keys added, removed or changed (values never shown).
  returned: when an existing container is replaced
  type: list
  elements: str
argv:
  description: The vLLM arguments (no secrets).
  returned: unless O(state=absent)
  type: list
  elements: str
endpoint:
  description: Base URL of the server as seen from the host.
  returned: unless O(state=absent)
  type: str
  sample: http://127.0.0.1:8000
vllm_version:
  description: vLLM version of the image.
  returned: unless O(state=absent)
  type: str
ready:
  description: Whether the server answered /health and /v1/models.
  returned: when waited
  type: bool
phase:
  description: Start-up phase reached (starting, downloading, loading_weights, compiling, capturing_graphs, ready).
  returned: when waited
  type: str
pull_progress:
  description:
    - "The pull's progress as the engine reported it (its last snapshot; issue #19), also on a failed pull: C(phase) (V(done), or V(pulling)/V(extracting)
      when it failed), C(bytes_done), C(bytes_total), C(bytes_known) (false when the engine gives no byte counts: podman 4.3's
      Docker-compatible service reports layers only), C(layers_done), C(layers_total), C(layers_existing) (already in the
      engine), C(seconds). While the pull runs the same numbers are in a progress file under the state directory's C(pulls/) (the parent of O(manifest_dir))
      (C(playbooks/status.yml) shows them: C(pulling image · 3.5/21.6 GB))."
  returned: when the image was pulled
  type: dict
phases:
  description:
    - "The phases this run went through, in order. V(pulling) when the module pulled the image (O(pull=missing)); then those the server's log
      showed while it was waited for: V(starting), V(downloading) (a hub O(model) being fetched), V(loading_weights), V(compiling),
      V(capturing_graphs), V(ready)."
    - Also returned on failure (the phase it failed in is the last one).
  returned: when the image was pulled or a start was waited for
  type: list
  elements: str
  sample: [pulling, starting, downloading, loading_weights, compiling, capturing_graphs, ready]
models:
  description: Model ids /v1/models lists.
  returned: when ready
  type: list
  elements: str
readiness:
  description: Readiness wait details (ready, phase, phases, waited_s, models, failure_class, hint, exit_code, health_ok_at, ready_at epoch times).
  returned: when a start was waited for
  type: dict
health_ok_at:
  description: Epoch time of the first successful /health (for the benchmark of the return delay).
  returned: when a start was waited for
  type: float
replaced:
  description: Whether an existing container was replaced.
  returned: when replaced
  type: bool
manifest:
  description: The reproducibility manifest (no secret values; env keys only).
  returned: unless O(state=absent)
  type: dict
manifest_path:
  description: Where the manifest is written on the host.
  returned: unless O(state=absent)
  type: str
failure_class:
  description:
    - Failure class when the server did not come up or a pre-check failed on a port; C(smoke_failed) when it came up
      but its smoke request (O(smoke_test)) failed.
  returned: failure
  type: str
  sample: gpu_oom
hint:
  description: One line saying what failed and what to do.
  returned: failure
  type: str
log_tail:
  description: Last log lines of the failed server, secrets masked.
  returned: failure
  type: list
  elements: str
rolled_back:
  description: Whether the previous container was restored after the new one failed.
  returned: failure
  type: bool
rollback_ready:
  description: Whether the restored container answers again.
  returned: failure after a rollback
  type: bool
precheck:
  description: Names of the failed pre-checks.
  returned: pre-check failure
  type: list
  elements: str
problems:
  description: Messages of the failed pre-checks.
  returned: pre-check failure
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from contextlib import nullcontext

from ansible_collections.gpufleet.vllm.plugins.module_utils._container.deployment import Deployment
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.lock import converge_lock, state_dir
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.manifest import apply_manifest
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.spec import argument_spec
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.validate import check as check_options
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.validate import (
    secret_values,
    with_sleep_mode_host,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.lora import resolve_params as resolve_lora_params
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.factory import get_runtime


def explicit_params(spec: dict) -> set[str] | None:
    """Names of the options the task set (before defaults were applied); None when that cannot be known."""
    try:
        from ansible.module_utils.basic import _load_params

        return set(_load_params()) & set(spec)
    except Exception:  # an ansible-core without it: manifest.merge then treats non-default values as given
        return None


def main() -> None:
    spec = argument_spec()
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    module.no_log_values.update(secret_values(module.params))  # a secret in extra_args/env: refused, never echoed
    try:
        params = module.params
        if params.get("from_manifest"):
            params, warnings = apply_manifest(params, explicit_params(spec))
            for w in warnings:
                module.warn(w)
        params = resolve_lora_params(params)  # hub adapters (repo_id) -> the path model_sync installed them at
        params, warning = with_sleep_mode_host(params)  # sleep mode: 127.0.0.1 unless host is a loopback address
        if warning:
            module.warn(warning)
        check_options(params)  # ranges, name, env names, paths, secrets in extra_args: before anything is touched
        runtime = get_runtime(params["runtime"], params["docker_host"])
        # One converge of a name at a time on this host (check mode changes nothing: no lock).
        locked = params.get("name") and not module.check_mode
        with converge_lock(state_dir(params["manifest_dir"]), params["name"]) if locked else nullcontext():
            result = Deployment(params, runtime, module.check_mode, module.warn).run()
    except GpufleetError as e:
        module.fail_json(msg=str(e), **e.details)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
