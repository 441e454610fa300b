"""Filter: read relative paths on stdin, print those the collection build ships (galaxy.yml build_ignore).

The same rule as ansible-galaxy's build: a path is left out when it, or a directory above it, matches a build_ignore
pattern (fnmatch) or one of ansible-galaxy's own defaults. Used by hack/sanity.sh."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# ansible-galaxy's own exclusions (ansible.galaxy.collection, _build_files_manifest_walk)
DEFAULTS = ["galaxy.yml", "galaxy.yaml", ".git", "*.pyc", "*.retry", "tests/output", "*.tar.gz"]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat) for p in prefixes for pat in patterns)


def main() -> int:
    meta = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    patterns = [*DEFAULTS, *(meta.get("build_ignore") or [])]
    for line in sys.stdin:
        path = line.rstrip("\n")
        if path and (path == "galaxy.yml" or not ignored(path, patterns)):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
