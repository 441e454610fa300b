"""A stand-in for vLLM's OpenAI-compatible server, for the gpufleet test bed (stdlib only).

It parses vLLM's real flags per version (the flag tables), resolves the model like vLLM, prints vLLM-like logs
and serves the HTTP API deployment tooling touches; failures are injected through STANDIN_* env vars.
See sim/standin/README.md.
"""
