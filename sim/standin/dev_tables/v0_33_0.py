"""Provisional vLLM 0.33.0 flag table for the stand-in (a subset, same schema as the generated tables).

Replaced by plugins/module_utils/vllm_flag_tables/ as soon as those exist.
"""

import json

TABLE = json.loads(
    r"""
{
 "version": "0.33.0",
 "generated": "provisional (sim/standin/dev_tables, hand-written subset)",
 "entrypoints": {
  "serve": {
   "model": "positional"
  },
  "api_server": {
   "model": "option"
  }
 },
 "actions": [
  {
   "option_strings": [
    "-h",
    "--help"
   ],
   "dest": "help",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "help"
  },
  {
   "option_strings": [
    "--host"
   ],
   "dest": "host",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--port"
   ],
   "dest": "port",
   "nargs": null,
   "type": "int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--uvicorn-log-level"
   ],
   "dest": "uvicorn_log_level",
   "nargs": null,
   "type": "str",
   "choices": [
    "critical",
    "debug",
    "error",
    "info",
    "trace",
    "warning"
   ],
   "kind": "store"
  },
  {
   "option_strings": [
    "--disable-uvicorn-access-log"
   ],
   "dest": "disable_uvicorn_access_log",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "store_true"
  },
  {
   "option_strings": [
    "--allow-credentials"
   ],
   "dest": "allow_credentials",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "store_true"
  },
  {
   "option_strings": [
    "--allowed-origins"
   ],
   "dest": "allowed_origins",
   "nargs": null,
   "type": "json",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--allowed-methods"
   ],
   "dest": "allowed_methods",
   "nargs": null,
   "type": "json",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--allowed-headers"
   ],
   "dest": "allowed_headers",
   "nargs": null,
   "type": "json",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--api-key"
   ],
   "dest": "api_key",
   "nargs": "+",
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--lora-modules"
   ],
   "dest": "lora_modules",
   "nargs": "+",
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--chat-template"
   ],
   "dest": "chat_template",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--response-role"
   ],
   "dest": "response_role",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--ssl-keyfile"
   ],
   "dest": "ssl_keyfile",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--ssl-certfile"
   ],
   "dest": "ssl_certfile",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--root-path"
   ],
   "dest": "root_path",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--middleware"
   ],
   "dest": "middleware",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "append"
  },
  {
   "option_strings": [
    "--enable-auto-tool-choice"
   ],
   "dest": "enable_auto_tool_choice",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "store_true"
  },
  {
   "option_strings": [
    "--tool-call-parser"
   ],
   "dest": "tool_call_parser",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--disable-fastapi-docs"
   ],
   "dest": "disable_fastapi_docs",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "store_true"
  },
  {
   "option_strings": [
    "--enable-request-id-headers"
   ],
   "dest": "enable_request_id_headers",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "store_true"
  },
  {
   "option_strings": [
    "--max-log-len"
   ],
   "dest": "max_log_len",
   "nargs": null,
   "type": "int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--model"
   ],
   "dest": "model",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--tokenizer"
   ],
   "dest": "tokenizer",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--revision"
   ],
   "dest": "revision",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--tokenizer-revision"
   ],
   "dest": "tokenizer_revision",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--code-revision"
   ],
   "dest": "code_revision",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--tokenizer-mode"
   ],
   "dest": "tokenizer_mode",
   "nargs": null,
   "type": "str",
   "choices": [
    "auto",
    "custom",
    "mistral",
    "slow"
   ],
   "kind": "store"
  },
  {
   "option_strings": [
    "--trust-remote-code",
    "--no-trust-remote-code"
   ],
   "dest": "trust_remote_code",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "boolean_optional"
  },
  {
   "option_strings": [
    "--download-dir"
   ],
   "dest": "download_dir",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--load-format"
   ],
   "dest": "load_format",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--dtype"
   ],
   "dest": "dtype",
   "nargs": null,
   "type": "str",
   "choices": [
    "auto",
    "bfloat16",
    "float",
    "float16",
    "float32",
    "half"
   ],
   "kind": "store"
  },
  {
   "option_strings": [
    "--kv-cache-dtype"
   ],
   "dest": "kv_cache_dtype",
   "nargs": null,
   "type": "str",
   "choices": [
    "auto",
    "fp8",
    "fp8_e4m3",
    "fp8_e5m2"
   ],
   "kind": "store"
  },
  {
   "option_strings": [
    "--max-model-len"
   ],
   "dest": "max_model_len",
   "nargs": null,
   "type": "human_int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--seed"
   ],
   "dest": "seed",
   "nargs": null,
   "type": "int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--served-model-name"
   ],
   "dest": "served_model_name",
   "nargs": "+",
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--quantization",
    "-q"
   ],
   "dest": "quantization",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--enforce-eager",
    "--no-enforce-eager"
   ],
   "dest": "enforce_eager",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "boolean_optional"
  },
  {
   "option_strings": [
    "--max-num-seqs"
   ],
   "dest": "max_num_seqs",
   "nargs": null,
   "type": "int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--max-num-batched-tokens"
   ],
   "dest": "max_num_batched_tokens",
   "nargs": null,
   "type": "human_int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--gpu-memory-utilization"
   ],
   "dest": "gpu_memory_utilization",
   "nargs": null,
   "type": "float",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--cpu-offload-gb"
   ],
   "dest": "cpu_offload_gb",
   "nargs": null,
   "type": "float",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--tensor-parallel-size",
    "-tp"
   ],
   "dest": "tensor_parallel_size",
   "nargs": null,
   "type": "int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--pipeline-parallel-size",
    "-pp"
   ],
   "dest": "pipeline_parallel_size",
   "nargs": null,
   "type": "int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--data-parallel-size",
    "-dp"
   ],
   "dest": "data_parallel_size",
   "nargs": null,
   "type": "int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--distributed-executor-backend"
   ],
   "dest": "distributed_executor_backend",
   "nargs": null,
   "type": "str",
   "choices": [
    "external_launcher",
    "mp",
    "ray",
    "uni"
   ],
   "kind": "store"
  },
  {
   "option_strings": [
    "--block-size"
   ],
   "dest": "block_size",
   "nargs": null,
   "type": "int",
   "choices": [
    1,
    8,
    16,
    32,
    64,
    128
   ],
   "kind": "store"
  },
  {
   "option_strings": [
    "--enable-prefix-caching",
    "--no-enable-prefix-caching"
   ],
   "dest": "enable_prefix_caching",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "boolean_optional"
  },
  {
   "option_strings": [
    "--enable-chunked-prefill",
    "--no-enable-chunked-prefill"
   ],
   "dest": "enable_chunked_prefill",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "boolean_optional"
  },
  {
   "option_strings": [
    "--enable-lora",
    "--no-enable-lora"
   ],
   "dest": "enable_lora",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "boolean_optional"
  },
  {
   "option_strings": [
    "--max-loras"
   ],
   "dest": "max_loras",
   "nargs": null,
   "type": "int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--max-lora-rank"
   ],
   "dest": "max_lora_rank",
   "nargs": null,
   "type": "int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--enable-sleep-mode",
    "--no-enable-sleep-mode"
   ],
   "dest": "enable_sleep_mode",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "boolean_optional"
  },
  {
   "option_strings": [
    "--disable-log-stats"
   ],
   "dest": "disable_log_stats",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "store_true"
  },
  {
   "option_strings": [
    "--compilation-config",
    "-O"
   ],
   "dest": "compilation_config",
   "nargs": null,
   "type": "json",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--limit-mm-per-prompt"
   ],
   "dest": "limit_mm_per_prompt",
   "nargs": null,
   "type": "json",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--hf-overrides"
   ],
   "dest": "hf_overrides",
   "nargs": null,
   "type": "json",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--override-generation-config"
   ],
   "dest": "override_generation_config",
   "nargs": null,
   "type": "json",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--generation-config"
   ],
   "dest": "generation_config",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--reasoning-parser"
   ],
   "dest": "reasoning_parser",
   "nargs": null,
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--headless"
   ],
   "dest": "headless",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "store_true"
  },
  {
   "option_strings": [
    "--api-server-count",
    "-asc"
   ],
   "dest": "api_server_count",
   "nargs": null,
   "type": "int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--enable-log-requests",
    "--no-enable-log-requests"
   ],
   "dest": "enable_log_requests",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "boolean_optional"
  },
  {
   "option_strings": [
    "--hf-token"
   ],
   "dest": "hf_token",
   "nargs": "?",
   "type": "str",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--async-scheduling",
    "--no-async-scheduling"
   ],
   "dest": "async_scheduling",
   "nargs": 0,
   "type": null,
   "choices": null,
   "kind": "boolean_optional"
  },
  {
   "option_strings": [
    "--max-cudagraph-capture-size"
   ],
   "dest": "max_cudagraph_capture_size",
   "nargs": null,
   "type": "int",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--structured-outputs-config"
   ],
   "dest": "structured_outputs_config",
   "nargs": null,
   "type": "json",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [
    "--kv-offloading-size"
   ],
   "dest": "kv_offloading_size",
   "nargs": null,
   "type": "float",
   "choices": null,
   "kind": "store"
  },
  {
   "option_strings": [],
   "dest": "model_tag",
   "nargs": "?",
   "type": "str",
   "choices": null,
   "kind": "positional"
  }
 ]
}
"""
)
