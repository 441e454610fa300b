"""`vllm` console script of the stand-in."""

import sys

from standin.main import cli


def main() -> None:
    sys.exit(cli())


if __name__ == "__main__":
    main()
