"""`vllm serve` / `python3 -m vllm.entrypoints.openai.api_server` of the stand-in.

Env knobs (see sim/standin/README.md): VLLM_VERSION, STANDIN_FAIL=oom|kv_cache|gated|not_found|crash|no_gpu|completions,
STANDIN_CRASH_AFTER=<s>, STANDIN_START_DELAY=<s>, STANDIN_ALLOW_NO_GPU=1, STANDIN_REQUEST_DELAY=<s>,
STANDIN_LOG_SECRETS=1, STANDIN_TABLES=<dir>.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from . import api, argv, hub, raycluster, tables
from .metrics import Metrics
from .vlog import VLog, traceback_text

PKG = "/usr/local/lib/python3.12/dist-packages/vllm"
SECRET_ARGS = ("api_key", "hf_token")


class Terminate(BaseException):
    """SIGTERM / SIGINT: stop now (a stop takes ~0.1 s, like uvicorn's graceful shutdown of an idle server)."""


def _on_signal(signum: int, frame: Any) -> None:
    raise Terminate(signum)


def _env_float(name: str, default: float = 0.0) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def newest_version() -> str:
    tabs = tables.available()
    return list(tabs)[-1] if tabs else "0.10.2"


def gpu_count() -> int:
    """GPUs the container was given (NVIDIA_VISIBLE_DEVICES set by the runtime hook / CDI); 0 when none."""
    vis = os.environ.get("NVIDIA_VISIBLE_DEVICES")
    if vis is None or vis.strip().lower() in ("", "void", "none"):
        return 0
    if vis.strip().lower() == "all":
        return int(os.environ.get("STANDIN_GPU_COUNT", "8"))
    return len([d for d in vis.split(",") if d.strip()])


class Standin:
    def __init__(self, entrypoint: str, version: str) -> None:
        self.entrypoint = entrypoint
        self.version = version
        self.v = tables.version_key(version)
        self.log = VLog(version)
        self.fail = os.environ.get("STANDIN_FAIL", "").strip().lower()
        self.delay = max(0.0, _env_float("STANDIN_START_DELAY"))

    # --- helpers
    def _pause(self, share: float) -> None:
        if self.delay:
            time.sleep(self.delay * share)

    def _api_exit(self, exc: str, frames: list[tuple[str, int, str, str]], cause: str | None = None) -> int:
        self.log.raw(traceback_text(frames, exc, cause), stream=sys.stderr)
        return 1

    def _entry_frames(self) -> list[tuple[str, int, str, str]]:
        if self.entrypoint == "serve":
            return [
                ("/usr/local/bin/vllm", 10, "<module>", "sys.exit(main())"),
                (f"{PKG}/entrypoints/cli/main.py", 54, "main", "args.dispatch_function(args)"),
                (f"{PKG}/entrypoints/cli/serve.py", 57, "cmd", "uvloop.run(run_server(args))"),
            ]
        return [("<frozen runpy>", 198, "_run_module_as_main", ""),
                (f"{PKG}/entrypoints/openai/api_server.py", 1121, "<module>", "uvloop.run(run_server(args))")]  # fmt: skip

    def _engine_failure(self, exc: str, frames: list[tuple[str, int, str, str]]) -> int:
        """An exception in the engine core during start-up: the ERROR block, then the API server's RuntimeError."""
        where = "core.py:718"
        text = "EngineCore failed to start.\n" + traceback_text(
            [(f"{PKG}/v1/engine/core.py", 709, "run_engine_core", "engine_core = EngineCoreProc(*args, **kwargs)"),
             (f"{PKG}/v1/engine/core.py", 505, "__init__", "super().__init__(vllm_config, executor_class, log_stats,"),
             *frames], exc)  # fmt: skip
        self.log.error(where, text, who="engine")
        self.log.raw(f"Process {self.log.engine_name}:", who="engine", stream=sys.stderr)
        self.log.raw(traceback_text([(f"{PKG}/v1/engine/core.py", 722, "run_engine_core", "raise e")], exc),
                     who="engine", stream=sys.stderr)  # fmt: skip
        return self._api_exit(
            "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
            [*self._entry_frames(),
             (f"{PKG}/v1/engine/utils.py", 786, "wait_for_engine_startup", "raise RuntimeError(\"Engine core initialization failed. \"")],
        )  # fmt: skip

    # --- the run
    def run(self, args: list[str]) -> int:
        table = tables.load(self.version)
        try:
            ns, warnings = argv.parse(table, args, self.entrypoint)
        except argv.StartRefused as e:  # FlexibleArgumentParser's ValueError (--model, model not first)
            where = f"{PKG}/utils/argparse_utils.py" if self.v >= (0, 11) else f"{PKG}/utils/__init__.py"
            self.log.raw(traceback_text(
                [("/usr/local/bin/vllm", 10, "<module>", "sys.exit(main())"),
                 (f"{PKG}/entrypoints/cli/main.py", 46, "main", "args = parser.parse_args()"),
                 (where, 1797, "parse_args", "raise ValueError(")],
                f"ValueError: {e}"), who="", stream=sys.stderr)  # fmt: skip
            return 1
        model = ns.model
        gpus = gpu_count()
        device = argv.get(ns, "device", "auto")
        no_gpu = self.fail == "no_gpu" or (gpus == 0 and device != "cpu" and not _truthy("STANDIN_ALLOW_NO_GPU"))
        if no_gpu:
            self.log.info("__init__.py:241", "No platform detected, vLLM is running on UnspecifiedPlatform", who="")
        elif device == "cpu" and gpus == 0:
            self.log.info("__init__.py:248", "Automatically detected platform cpu.", who="")
        else:
            self.log.info("__init__.py:216", "Automatically detected platform cuda.", who="")
        for w in warnings:
            self.log.warning("argparse_utils.py:257", w, who="")
        if self.v >= (0, 11):
            self.log.info("utils.py:299", "\n".join([
                "", "       █     █     █▄   ▄█",
                f" ▄▄ ▄█ █     █     █ ▀▄▀ █  version {self.version}",
                f"  █▄█▀ █     █     █     █  model   {model}",
                "   ▀▀  ▀▀▀▀▀ ▀▀▀▀▀ ▀     ▀", ""]))  # fmt: skip
        else:
            self.log.info("api_server.py:1896", f"vLLM API server version {self.version}")
        shown = argv.non_default_args(ns)
        if not _truthy("STANDIN_LOG_SECRETS"):
            shown = {k: ("<redacted>" if k in SECRET_ARGS else v) for k, v in shown.items()}
        self.log.info("utils.py:328", f"non-default args: {shown}")

        # Cross-flag validation (vllm/entrypoints/openai/cli_args.py: validate_parsed_serve_args).
        broken = argv.check_rules(table, ns, self.entrypoint)
        if broken:
            return self._api_exit(
                broken,
                [*self._entry_frames()[:2],
                 (f"{PKG}/entrypoints/openai/cli_args.py", 262, "validate_parsed_serve_args",
                  'raise TypeError("Error: --enable-auto-tool-choice requires "')],
            )  # fmt: skip

        # The socket is bound before the engine starts, so a busy port fails fast.
        host, port = argv.get(ns, "host"), int(argv.get(ns, "port", 8000))
        try:
            srv = api.bind(host, port)
        except OSError as e:
            return self._api_exit(
                f"OSError: [Errno {e.errno}] {e.strerror}",
                [*self._entry_frames(),
                 (f"{PKG}/entrypoints/openai/api_server.py", 1858, "run_server", "listen_address, sock = setup_server(args)"),
                 (f"{PKG}/entrypoints/openai/api_server.py", 1839, "setup_server", "sock = create_server_socket(sock_addr)"),
                 (f"{PKG}/entrypoints/openai/api_server.py", 1806, "create_server_socket", "sock.bind(addr)")],
            )  # fmt: skip
        try:
            return self._start(ns, srv, gpus, no_gpu)
        finally:
            srv.server_close()

    def _start(self, ns: Any, srv: api.Server, gpus: int, no_gpu: bool) -> int:
        log = self.log
        model = ns.model
        cfg_frames = [*self._entry_frames(),
                      (f"{PKG}/engine/arg_utils.py", 1106, "create_engine_config", "model_config = self.create_model_config()"),
                      (f"{PKG}/transformers_utils/config.py", 517, "get_config", "raise ValueError(error_message) from e")]  # fmt: skip
        # Model resolution (config.json) happens in the API server process.
        try:
            if self.fail == "gated":
                raise hub.gated_error(
                    model, f"{os.environ.get('HF_ENDPOINT', hub.DEFAULT_ENDPOINT)}/{model}/resolve/main/config.json"
                )
            if self.fail == "not_found":
                raise hub.not_found_error(
                    f"{os.environ.get('HF_ENDPOINT', hub.DEFAULT_ENDPOINT)}/api/models/{model}/revision/main"
                )
            res = hub.resolve(model, argv.get(ns, "revision"), argv.get(ns, "download_dir"), argv.get(ns, "hf_token"))
        except hub.HubError as e:
            if e.exc_type == "ValueError":
                return self._api_exit(f"ValueError: {e.text}", cfg_frames)
            short = e.exc_type.rsplit(".", 1)[-1]
            last = (("/usr/local/lib/python3.12/dist-packages/huggingface_hub/file_download.py", 1117,
                     "_raise_on_head_call_error", f"raise {short}(")
                    if short == "LocalEntryNotFoundError" else
                    ("/usr/local/lib/python3.12/dist-packages/huggingface_hub/utils/_http.py", 409,
                     "hf_raise_for_status", f"raise _format({short}, message, response) from e"))  # fmt: skip
            cause = traceback_text(
                [(f"{PKG}/transformers_utils/config.py", 498, "get_config", "if is_gguf or file_or_path_exists("),
                 last], f"{e.exc_type}: {e.text}")  # fmt: skip
            return self._api_exit(f"ValueError: {hub.invalid_model_error(model).text}", cfg_frames, cause)
        config = res.config
        if res.downloaded and res.path is not None and not _truthy("HF_HUB_DISABLE_PROGRESS_BARS"):
            # huggingface_hub's hf_hub_download progress bar (tqdm, unit_scale) for the config it fetched
            size = (res.path / "config.json").stat().st_size
            shown = f"{size / 1000:.2f}k" if size >= 1000 else str(size)
            self.log.raw(f"config.json: 100%|██████████| {shown}/{shown} [00:00<00:00, 1.21MB/s]", stream=sys.stderr)
        arch = (config.get("architectures") or ["LlamaForCausalLM"])[0]
        mml_cfg = int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)
        max_model_len = int(argv.get(ns, "max_model_len", mml_cfg))
        if max_model_len == -1:  # 0.3x: --max-model-len auto / -1 = derived from the model
            max_model_len = mml_cfg
        if max_model_len > mml_cfg and not _truthy("VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
            return self._api_exit(
                f"ValueError: User-specified max_model_len ({max_model_len}) is greater than the derived "
                f"max_model_len (max_position_embeddings={mml_cfg} or model_max_length=None in model's config.json). "
                "To allow overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN "
                "must be used with extreme caution. If the model uses relative position encoding (RoPE), positions "
                "exceeding derived_max_model_len lead to nan. If the model uses absolute position encoding, positions "
                "exceeding derived_max_model_len will cause a CUDA array out-of-bounds error.",
                [*self._entry_frames(), (f"{PKG}/config/__init__.py", 3547, "_get_and_verify_max_len", "raise ValueError(")],
            )  # fmt: skip
        log.info("__init__.py:742", f"Resolved architecture: {arch}")
        log.info("__init__.py:1815", f"Using max model len {max_model_len}")
        if no_gpu:
            return self._api_exit(
                "RuntimeError: Failed to infer device type, please set the environment variable "
                "`VLLM_LOGGING_LEVEL=DEBUG` to turn on verbose logging to help debug the issue.",
                [*self._entry_frames(),
                 (f"{PKG}/engine/arg_utils.py", 1085, "create_engine_config", "device_config = DeviceConfig("),
                 (f"{PKG}/config/__init__.py", 2121, "__post_init__", "raise RuntimeError(")],
            )  # fmt: skip
        gmu = float(argv.get(ns, "gpu_memory_utilization", 0.9))
        if not 0 < gmu <= 1:
            return self._api_exit(
                f"ValueError: GPU memory utilization must be within (0, 1]. Got {gmu}.",
                [*self._entry_frames(), (f"{PKG}/config/cache.py", 150, "_verify_args", "raise ValueError(")],
            )  # fmt: skip
        world = int(argv.get(ns, "tensor_parallel_size", 1)) * int(argv.get(ns, "pipeline_parallel_size", 1))
        if argv.get(ns, "distributed_executor_backend", None) == "ray":
            # The GPUs are the Ray cluster's (this host's and the other nodes'), not only the container's.
            failure = raycluster.join(world, lambda where, msg: log.info(where, msg, who="engine"))
            if failure:
                return self._engine_failure(failure, raycluster.FRAMES)
        elif gpus and world > gpus:
            return self._api_exit(
                f"AssertionError: please set tensor_parallel_size ({world}) to less than max local gpu count ({gpus})",
                [*self._entry_frames(), (f"{PKG}/config/parallel.py", 460, "__post_init__", "assert world_size <=")],
            )  # fmt: skip
        if argv.get(ns, "enable_chunked_prefill", True) is not False:
            log.info(
                "scheduler.py:222",
                f"Chunked prefill is enabled with max_num_batched_tokens={argv.get(ns, 'max_num_batched_tokens', 2048)}.",
            )

        # --- engine core
        def elog(where: str, msg: str) -> None:
            log.info(where, msg, who="engine")

        elog("core.py:654", "Waiting for init message from front-end.")
        elog("core.py:76", f"Initializing a V1 LLM engine (v{self.version}) with config: model='{model}', "
             f"speculative_config=None, tokenizer='{model}', dtype={argv.get(ns, 'dtype', 'auto')}, "
             f"max_seq_len={max_model_len}, tensor_parallel_size={argv.get(ns, 'tensor_parallel_size', 1)}, "
             f"enforce_eager={bool(argv.get(ns, 'enforce_eager', False))}, served_model_name={self._names(ns)[0]}")  # fmt: skip
        elog(
            "parallel_state.py:1165", "rank 0 in world size 1 is assigned as DP rank 0, PP rank 0, TP rank 0, EP rank 0"
        )
        elog("gpu_model_runner.py:2338", f"Starting to load model {model}...")
        elog("cuda.py:362", "Using Flash Attention backend on V1 engine.")
        if not res.local:
            # vLLM's weight_utils.download_weights_from_hf(), hub ids only (a local directory never goes through it):
            # this line, huggingface_hub's snapshot_download (progress bars disabled), then the time spent when it
            # took over 0.5 s. A cached snapshot is only checked (fast: no second line).
            elog("weight_utils.py:348", "Using model weights format ['*.safetensors']")
            t_dl = time.monotonic()
            if res.downloaded:
                time.sleep(max(0.0, _env_float("STANDIN_DOWNLOAD_DELAY", 0.6)))
                self._pause(0.25)
            spent = time.monotonic() - t_dl
            if spent > 0.5:
                elog("weight_utils.py:364", f"Time spent downloading weights for {model}: {spent:.6f} seconds")
        self._pause(0.25)
        log.raw("Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:00<00:00, 42.00it/s]", who="engine")
        elog("default_loader.py:268", "Loading weights took 0.05 seconds")
        if self.fail == "oom":
            total = _env_float("STANDIN_GPU_MEMORY_GIB", 79.19)
            return self._engine_failure(
                f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of "
                f"{total:.2f} GiB of which 1.02 GiB is free. Process {os.getpid()} has {total - 1.03:.2f} GiB memory in use. "
                f"Of the allocated memory {total - 1.7:.2f} GiB is allocated by PyTorch, and 120.50 MiB is reserved by "
                "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
                "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
                [(f"{PKG}/v1/worker/gpu_model_runner.py", 2367, "load_model", "self.model = model_loader.load_model("),
                 (f"{PKG}/model_executor/model_loader/base_loader.py", 50, "load_model", "self.load_weights(model, model_config)"),
                 ("/usr/local/lib/python3.12/dist-packages/torch/nn/modules/module.py", 1355, "convert",
                  "return t.to(device, dtype if t.is_floating_point() or t.is_complex() else None, non_blocking)")],
            )  # fmt: skip
        elog("gpu_model_runner.py:2392", "Model loading took 0.9385 GiB and 0.120000 seconds")
        eager = bool(argv.get(ns, "enforce_eager", False))
        if not eager:
            self._pause(0.25)
            elog(
                "backends.py:539",
                "Using cache directory: /root/.cache/vllm/torch_compile_cache/4f2b1c0e7a/rank_0_0/backbone for vLLM's torch.compile",
            )
            elog("backends.py:550", "Dynamo bytecode transform time: 0.21 s")
            elog("monitor.py:34", "torch.compile takes 0.21 s in total")
        avail = _env_float("STANDIN_KV_CACHE_GIB", 62.53)
        elog("gpu_worker.py:298", f"Available KV cache memory: {avail:.2f} GiB")
        if self.fail == "kv_cache":
            need = max(avail * 4, 16.0)
            est = int(max_model_len * 0.25) // 16 * 16
            extra = (
                f" Based on the available memory, the estimated maximum model length is {est}."
                if self.v >= (0, 10)
                else ""
            )
            return self._engine_failure(
                f"ValueError: To serve at least one request with the models's max seq len ({max_model_len}), "
                f"({need:.2f} GiB KV cache is needed, which is larger than the available KV cache memory ({avail:.2f} GiB)."
                f"{extra} Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
                [(f"{PKG}/v1/engine/core.py", 89, "__init__", "self._initialize_kv_caches(vllm_config)"),
                 (f"{PKG}/v1/engine/core.py", 179, "_initialize_kv_caches", "get_kv_cache_config(vllm_config,"),
                 (f"{PKG}/v1/core/kv_cache_utils.py", 699, "check_enough_kv_cache_memory", "raise ValueError(")],
            )  # fmt: skip
        tokens = 585440
        elog("kv_cache_utils.py:864", f"GPU KV cache size: {tokens:,} tokens")
        elog(
            "kv_cache_utils.py:868",
            f"Maximum concurrency for {max_model_len:,} tokens per request: {tokens / max_model_len:.2f}x",
        )
        if not eager:
            self._pause(0.25)
            log.raw("Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|██████████| 67/67 [00:00<00:00, 335.00it/s]",
                    who="engine", stream=sys.stderr)  # fmt: skip
            elog("gpu_model_runner.py:3118", "Graph capturing finished in 1 secs, took 0.57 GiB")
        elog(
            "core.py:218",
            f"init engine (profile, create kv cache, warmup model) took {self.delay * 0.75 + 0.3:.2f} seconds",
        )

        # --- API server
        names = self._names(ns)
        loras = argv.lora_modules(argv.as_list(argv.get(ns, "lora_modules")), names[0])
        keys = [k for k in argv.as_list(argv.get(ns, "api_key")) if k] or (
            [os.environ["VLLM_API_KEY"]] if os.environ.get("VLLM_API_KEY") else []
        )
        has_sleep_flag = hasattr(ns, "enable_sleep_mode")
        state = api.ServerState(
            version=self.version,
            served_names=names,
            model_path=model,
            max_model_len=max_model_len,
            loras=loras,
            api_keys=keys,
            dev_mode=_truthy("VLLM_SERVER_DEV_MODE"),
            sleep_enabled=bool(argv.get(ns, "enable_sleep_mode", False)) or not has_sleep_flag,
            access_log=not argv.get(ns, "disable_uvicorn_access_log", False),
            request_delay=_env_float("STANDIN_REQUEST_DELAY"),
            lora_runtime=_truthy("VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
            metrics=Metrics(self.version, names[0]),
            log=log,
        )
        log.info(
            "loggers.py:142", "Engine 000: vllm cache_config_info with initialization after num_gpu_blocks is: 36590"
        )
        log.info("api_server.py:1692", "Supported_tasks: ['generate']")
        shown_host = host_url = argv.get(ns, "host") or "0.0.0.0"
        if ":" in host_url:
            shown_host = f"[{host_url}]"
        port = srv.server_address[1]
        if self.v >= (0, 10):
            log.info("api_server.py:1971", f"Starting vLLM API server 0 on http://{shown_host}:{port}")
        else:
            log.info("api_server.py:1081", f"Starting vLLM API server on http://{shown_host}:{port}")
        log.info("launcher.py:36", "Available routes are:")
        routes = [("/openapi.json", "GET, HEAD"), ("/docs", "GET, HEAD"), ("/health", "GET"), ("/metrics", "GET"),
                  ("/ping", "GET, POST"), ("/version", "GET"), ("/v1/models", "GET"),
                  ("/v1/chat/completions", "POST"), ("/v1/completions", "POST")]  # fmt: skip
        if state.dev_mode:
            routes += [("/sleep", "POST"), ("/wake_up", "POST"), ("/is_sleeping", "GET")]
        if state.lora_runtime:
            routes += [("/v1/load_lora_adapter", "POST"), ("/v1/unload_lora_adapter", "POST")]
        for r, m in routes:
            log.info("launcher.py:44", f"Route: {r}, Methods: {m}")
        log.uvicorn(f"Started server process [{os.getpid()}]")
        log.uvicorn("Waiting for application startup.")
        log.uvicorn("Application startup complete.")
        crash_after = os.environ.get("STANDIN_CRASH_AFTER")
        if crash_after or self.fail == "crash":
            t = threading.Timer(_env_float("STANDIN_CRASH_AFTER", 1.0), self._crash)
            t.daemon = True
            t.start()
        raycluster.watch(self._crash)  # a lost Ray node kills the engine (only with the ray executor)
        try:
            api.serve(srv, state)
        except Terminate:
            pass
        log.uvicorn("Shutting down")
        log.uvicorn("Waiting for application shutdown.")
        log.uvicorn("Application shutdown complete.")
        log.uvicorn(f"Finished server process [{os.getpid()}]")
        return 0

    def _names(self, ns: Any) -> list[str]:
        return argv.as_list(argv.get(ns, "served_model_name")) or [ns.model]

    def _crash(self, exc: str = "RuntimeError: CUDA error: an illegal memory access was encountered") -> None:
        """The engine dies while serving: vLLM logs the fatal error, the API server shuts down, exit 1."""
        self.log.error("core.py:710", "EngineCore encountered a fatal error.\n" + traceback_text(
            [(f"{PKG}/v1/engine/core.py", 701, "run_engine_core", "engine_core.run_busy_loop()"),
             (f"{PKG}/v1/engine/core.py", 728, "run_busy_loop", "self._process_engine_step()"),
             (f"{PKG}/v1/worker/gpu_model_runner.py", 1602, "execute_model", "torch.cuda.synchronize()")], exc),
            who="engine")  # fmt: skip
        self.log.error("async_llm.py:485", "AsyncLLM output_handler failed.\n" + traceback_text(
            [(f"{PKG}/v1/engine/async_llm.py", 444, "output_handler", "outputs = await engine_core.get_output_async()"),
             (f"{PKG}/v1/engine/core_client.py", 845, "get_output_async", "raise self._format_exception(outputs) from None")],
            "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause."))  # fmt: skip
        self.log.uvicorn("Shutting down")
        self.log.uvicorn(f"Finished server process [{os.getpid()}]")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def run(entrypoint: str, args: list[str]) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    version = os.environ.get("VLLM_VERSION") or newest_version()
    try:
        return Standin(entrypoint, version).run(args)
    except Terminate:
        return 0


CLI_COMMANDS = ("chat", "complete", "serve", "bench", "collect-env", "run-batch")


def cli(args: list[str] | None = None) -> int:
    """The `vllm` command."""
    args = list(sys.argv[1:] if args is None else args)
    version = os.environ.get("VLLM_VERSION") or newest_version()
    if not args or args[0] in ("-h", "--help"):
        print(
            f"usage: vllm [-h] [-v] {{{','.join(CLI_COMMANDS)}}} ...\n\nvLLM CLI\n\n(gpufleet stand-in of vLLM {version})"
        )
        return 0 if args else 1
    if args[0] in ("-v", "--version"):
        print(version)
        return 0
    if args[0] != "serve":
        if args[0] in CLI_COMMANDS:
            print(f"vllm {args[0]}: not simulated by the gpufleet stand-in", file=sys.stderr)
            return 2
        choices = ", ".join(f"'{c}'" for c in CLI_COMMANDS)
        print(f"usage: vllm [-h] [-v] {{{','.join(CLI_COMMANDS)}}} ...", file=sys.stderr)
        print(f"vllm: error: argument subparser: invalid choice: '{args[0]}' (choose from {choices})", file=sys.stderr)
        return 2
    return run("serve", args[1:])


def api_server_main() -> int:
    return run("api_server", sys.argv[1:])
