# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Generate model repos for the fake Hugging Face hub (sim/hub/fakehub.py).

Layout of a hub root (all plain files, so a running fakehub sees changes at once)::

    <root>/<org>/<name>/repo.json        refs, commits (file lists with size, git oid, sha256), gating, options
    <root>/<org>/<name>/blobs/<sha256>   file contents, content-addressed (commits share unchanged files)

Every `make_repo` call makes a NEW commit on `branch` (the branch moves; tags may point at it), so "a revision
change" is one more call. A model commit holds: config.json, generation_config.json, tokenizer files, N
safetensors shards with valid headers (+ model.safetensors.index.json when N > 1), README.md, .gitattributes,
optionally original/ consolidated duplicates (what vLLM does not need), or a single .gguf file instead.

CLI: python sim/hub/make_repo.py ROOT ORG/NAME [--shards N] [--shard-bytes B] [--branch main] [--tag v1] [--gated]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import time
from pathlib import Path
from typing import Any

_BLOCK = 1 << 20


def _repo_dir(root: str | os.PathLike, repo_id: str) -> Path:
    if repo_id.count("/") != 1 or ".." in repo_id:
        raise ValueError(f"repo_id must be ORG/NAME, got {repo_id!r}")
    return Path(root) / repo_id


def load_repo(root: str | os.PathLike, repo_id: str) -> dict[str, Any]:
    p = _repo_dir(root, repo_id) / "repo.json"
    if not p.exists():
        return {"id": repo_id, "gated": False, "private": False, "tokens": [], "refs": {}, "commits": {}}
    return json.loads(p.read_text())


def save_repo(root: str | os.PathLike, repo_id: str, repo: dict[str, Any]) -> None:
    d = _repo_dir(root, repo_id)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"repo.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(repo, indent=1, sort_keys=True))
    os.replace(tmp, d / "repo.json")


def set_repo_options(root: str | os.PathLike, repo_id: str, **options: Any) -> None:
    """Change gating/private/tokens/throttle_bps (bytes per second per response, 0 = full speed) of a repo."""
    repo = load_repo(root, repo_id)
    repo.update(options)
    save_repo(root, repo_id, repo)


def _fill(seed: int, n: int) -> bytes:
    """n deterministic pseudo-random bytes (cheap: one hashed 1 MiB block, varied per seed)."""
    block = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(_BLOCK // 32))
    reps, rest = divmod(n, len(block))
    return block * reps + block[:rest]


def safetensors_bytes(n_data: int, seed: int, tensor: str = "model.weight") -> bytes:
    """A valid safetensors file: u64 header length, JSON header, then exactly n_data bytes of U8 data."""
    header = {"__metadata__": {"format": "pt"}, tensor: {"dtype": "U8", "shape": [n_data], "data_offsets": [0, n_data]}}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + _fill(seed, n_data)


def _store(rdir: Path, path: str, data: bytes | Path) -> dict[str, Any]:
    blobs = rdir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256()
    if isinstance(data, Path):
        size = data.stat().st_size
        with data.open("rb") as f:
            while chunk := f.read(_BLOCK * 8):
                sha.update(chunk)
    else:
        size = len(data)
        sha.update(data)
    digest = sha.hexdigest()
    blob = blobs / digest
    if not blob.exists():
        tmp = blobs / f".{digest}.{os.getpid()}.tmp"
        if isinstance(data, Path):
            try:
                os.link(data, tmp)
            except OSError:
                shutil.copyfile(data, tmp)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, blob)
    lfs = size >= 1024 * 10 or path.endswith((".safetensors", ".gguf", ".pth", ".bin"))
    if lfs:
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {size}\n".encode()
        oid = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    else:
        raw = data if isinstance(data, bytes) else data.read_bytes()
        oid = hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()
    return {"size": size, "sha256": digest, "oid": oid, "lfs": lfs}


def write_safetensors(path: Path, n_data: int, seed: int, tensor: str = "model.weight") -> Path:
    """Stream a valid safetensors file of n_data data bytes to `path` (for big shards)."""
    header = {"__metadata__": {"format": "pt"}, tensor: {"dtype": "U8", "shape": [n_data], "data_offsets": [0, n_data]}}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    block = _fill(seed, _BLOCK * 4)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        left = n_data
        while left:
            k = min(left, len(block))
            f.write(block[:k])
            left -= k
    return path


_BIG = 64 << 20


def model_files(
    *,
    shards: int = 2,
    shard_bytes: int = 4096,
    tokenizer: bool = True,
    original: bool = False,
    gguf: bool = False,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    workdir: Path | None = None,
) -> dict[str, bytes | Path]:
    """The files of one model commit (path -> bytes, or a file under `workdir` for shards over 64 MiB)."""

    def shard(name: str, n: int, sd: int, tensor: str) -> bytes | Path:
        if n >= _BIG and workdir is not None:
            return write_safetensors(workdir / name, n, sd, tensor)
        return safetensors_bytes(n, sd, tensor)

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2}
    cfg.update(config or {})
    cfg["_fakehub_seed"] = seed
    files: dict[str, bytes | Path] = {
        "config.json": json.dumps(cfg, indent=2).encode(),
        "generation_config.json": b'{"bos_token_id": 1, "eos_token_id": 2}',
        "README.md": f"# fake model (seed {seed})\n".encode(),
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    }
    if tokenizer:
        files["tokenizer.json"] = json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}}).encode()
        files["tokenizer_config.json"] = b'{"model_max_length": 2048}'
        files["special_tokens_map.json"] = b'{"bos_token": "<s>", "eos_token": "</s>"}'
    if gguf:
        files["model-Q4_K_M.gguf"] = b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + _fill(seed, max(shard_bytes, 64))
        return files
    if shards == 1:
        files["model.safetensors"] = shard("model.safetensors", shard_bytes, seed, "model.weight")
    else:
        weight_map = {}
        total = 0
        for i in range(1, shards + 1):
            name = f"model-{i:05d}-of-{shards:05d}.safetensors"
            tensor = f"model.layers.{i - 1}.weight"
            files[name] = shard(name, shard_bytes, seed * 1000 + i, tensor)
            weight_map[tensor] = name
            total += shard_bytes
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        files["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    if original:
        files["original/params.json"] = b'{"dim": 64}'
        files["original/consolidated.00.pth"] = _fill(seed + 7, max(shard_bytes, 1024))
    return files


def commit_files(
    root: str | os.PathLike,
    repo_id: str,
    files: dict[str, bytes | Path],
    *,
    branch: str = "main",
    tags: tuple[str, ...] | list[str] = (),
    message: str = "",
) -> str:
    """Record `files` as a new commit on `branch` (and `tags`); return the commit sha."""
    rdir = _repo_dir(root, repo_id)
    repo = load_repo(root, repo_id)
    entries = {path: _store(rdir, path, data) for path, data in sorted(files.items())}
    parent = repo["refs"].get(branch)
    sha = hashlib.sha1(
        json.dumps([parent, entries, branch, message, time.time_ns()], sort_keys=True).encode()
    ).hexdigest()
    repo["commits"][sha] = {
        "files": entries,
        "parent": parent,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "message": message,
    }
    repo["refs"][branch] = sha
    for t in tags:
        repo["refs"][t] = sha
    save_repo(root, repo_id, repo)
    return sha


def make_repo(
    root: str | os.PathLike,
    repo_id: str,
    *,
    branch: str = "main",
    tags: tuple[str, ...] | list[str] = (),
    shards: int = 2,
    shard_bytes: int = 4096,
    tokenizer: bool = True,
    original: bool = False,
    gguf: bool = False,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    drop_files: tuple[str, ...] | list[str] = (),
    extra_files: dict[str, bytes] | None = None,
    gated: bool | None = None,
    private: bool | None = None,
    tokens: list[str] | None = None,
) -> str:
    """Make a new commit of a generated model on `branch`; return its sha. See the module docstring."""
    work = _repo_dir(root, repo_id) / ".work"
    work.mkdir(parents=True, exist_ok=True)
    files = model_files(
        workdir=work,
        shards=shards,
        shard_bytes=shard_bytes,
        tokenizer=tokenizer,
        original=original,
        gguf=gguf,
        seed=seed,
        config=config,
    )
    for f in drop_files:
        files.pop(f, None)
    files.update(extra_files or {})
    try:
        sha = commit_files(root, repo_id, files, branch=branch, tags=tags, message=f"seed {seed}")
    finally:
        for p in work.iterdir():
            p.unlink()
    opts = {k: v for k, v in (("gated", gated), ("private", private), ("tokens", tokens)) if v is not None}
    if opts:
        set_repo_options(root, repo_id, **opts)
    return sha


def adapter_files(
    *, seed: int = 0, rank: int = 8, base_model: str = "org/base", data_bytes: int = 4096
) -> dict[str, bytes]:
    """The files of a LoRA adapter repo (what vLLM's --lora-modules loads): adapter_config.json and
    adapter_model.safetensors with a valid header, plus a README."""
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "v_proj"],
           "base_model_name_or_path": base_model, "task_type": "CAUSAL_LM", "_fakehub_seed": seed}  # fmt: skip
    return {
        "adapter_config.json": json.dumps(cfg, indent=2).encode(),
        "adapter_model.safetensors": safetensors_bytes(data_bytes, seed, "base_model.model.lora_A.weight"),
        "README.md": f"# fake LoRA adapter (seed {seed})\n".encode(),
    }


def make_adapter_repo(root: str | os.PathLike, repo_id: str, *, branch: str = "main", seed: int = 0, **kw: Any) -> str:
    """A new commit of a generated LoRA adapter on `branch` (adapter_files); returns its sha."""
    return commit_files(root, repo_id, adapter_files(seed=seed, **kw), branch=branch, message=f"adapter seed {seed}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("root")
    ap.add_argument("repo_id")
    ap.add_argument("--branch", default="main")
    ap.add_argument("--tag", action="append", default=[])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--shard-bytes", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--original", action="store_true")
    ap.add_argument("--gguf", action="store_true")
    ap.add_argument("--no-tokenizer", action="store_true")
    ap.add_argument("--gated", action="store_true")
    ap.add_argument("--token", action="append", default=None, help="a token allowed to read a gated/private repo")
    a = ap.parse_args()
    sha = make_repo(
        a.root,
        a.repo_id,
        branch=a.branch,
        tags=a.tag,
        shards=a.shards,
        shard_bytes=a.shard_bytes,
        seed=a.seed,
        original=a.original,
        gguf=a.gguf,
        tokenizer=not a.no_tokenizer,
        gated=a.gated or None,
        tokens=a.token,
    )
    print(sha)


if __name__ == "__main__":
    main()
