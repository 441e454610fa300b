"""`python3 -m vllm.entrypoints.openai.api_server` (the 0.8.x image entrypoint): model via --model."""

import sys

from standin.main import api_server_main

if __name__ == "__main__":
    sys.exit(api_server_main())
