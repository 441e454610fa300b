"""vLLM's command line, rebuilt from a flag table with argparse: accepts what that vLLM version accepts.

Pure logic (no I/O besides argparse's own exit on bad input), unit-tested in tests/unit/sim/.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from .tables import version_key

DEFAULT_MODEL_OLD = "facebook/opt-125m"  # vLLM < 0.10
DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
SERVE_USAGE = "vllm serve [model_tag] [options]"


def human_readable_int(value: str) -> int:
    """vLLM's parser for sizes like 32k (x1000), 32K (x1024), 1m, 1M, 25.6k."""
    value = value.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG])", value)
    if m:
        num, suffix = m.groups()
        mult = {"k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}[suffix]
        if suffix.isupper() and "." in num:
            raise ValueError(f"Decimals are not allowed with binary suffixes like {suffix}")
        return int(float(num) * mult)
    return int(value)


def loads(value: str) -> Any:
    return json.loads(value)


def str2bool(value: str) -> bool:
    v = value.lower()
    if v in ("true", "1", "yes", "y", "on"):
        return True
    if v in ("false", "0", "no", "n", "off"):
        return False
    raise ValueError(value)


def str_or_json(value: str) -> Any:
    """vLLM's optional JSON: a JSON object/array when it parses as one, else the plain string."""
    if value.strip().startswith(("{", "[")):
        return json.loads(value)
    return value


_TYPES: dict[str | None, Any] = {
    "str_or_json": str_or_json,
    "lora_modules": str,
    None: None,
    "str": str,
    "int": int,
    "float": float,
    "json": loads,
    "human_int": human_readable_int,
    "bool": str2bool,
}


def _nargs(n: Any) -> Any:
    return None if n in (None, "null") else n


def build_parser(table: dict[str, Any], entrypoint: str = "serve") -> argparse.ArgumentParser:
    """An argparse parser with every action of the table (`entrypoint`: "serve" or "api_server")."""
    version = table.get("version", "0")
    ep = (table.get("entrypoints") or {}).get(entrypoint) or {}
    old = bool(ep.get("allow_abbrev", version_key(version) < (0, 10)))
    positional_ok = ep.get("model_positional", "accepted" if entrypoint == "serve" else "refused") == "accepted"
    if entrypoint == "serve":
        parser = argparse.ArgumentParser(
            prog="vllm serve",
            usage=SERVE_USAGE,
            description="Launch a local OpenAI-compatible API server to serve LLM completions via HTTP.",
            allow_abbrev=old,
            add_help=False,
        )
    else:
        parser = argparse.ArgumentParser(
            prog="api_server.py",
            description="vLLM OpenAI-Compatible RESTful API server.",
            allow_abbrev=old,
            add_help=False,
        )
    actions = ep.get("actions") or table.get("actions") or []
    seen: set[str] = set()
    for act in actions:
        kind = act.get("kind") or "store"
        opts = [o for o in act.get("option_strings") or [] if o not in seen]
        dest = act.get("dest")
        if kind == "positional" or (not opts and not act.get("option_strings")):
            if not positional_ok:
                continue  # e.g. the 0.8.x module entrypoint takes the model as --model only
            parser.add_argument(dest, nargs=_nargs(act.get("nargs")) or "?", default=None)
            continue
        if not opts:
            continue
        seen.update(opts)
        if kind == "help":
            parser.add_argument(*opts, action="help", help=argparse.SUPPRESS)
        elif kind == "version":
            parser.add_argument(*opts, action="version", version=version)
        elif kind in ("store_true", "store_false"):
            parser.add_argument(*opts, dest=dest, action=kind)
        elif kind == "count":
            parser.add_argument(*opts, dest=dest, action="count")
        elif kind == "boolean_optional":
            # The table lists both --x and --no-x (argparse adds the negative form itself from --x).
            neg = set(act.get("negative") or [o for o in opts if o.startswith("--no-") and "--" + o[5:] in opts])
            pos = [o for o in opts if o not in neg]
            parser.add_argument(*pos, dest=dest, action=argparse.BooleanOptionalAction, default=None)
        else:
            kwargs: dict[str, Any] = {"dest": dest}
            conv = _TYPES.get(act.get("type"), str)
            choices = act.get("choices")
            if conv is not None:
                kwargs["type"] = conv
            nargs = _nargs(act.get("nargs"))
            if nargs is not None:
                kwargs["nargs"] = nargs
            if choices:
                kwargs["choices"] = choices
                if conv is None:
                    kwargs["type"] = type(choices[0]) if not isinstance(choices[0], str) else str
            if kind == "append":
                kwargs["action"] = "append"
            parser.add_argument(*opts, **kwargs)
    return parser


def normalize(argv: list[str]) -> list[str]:
    """vLLM's FlexibleArgumentParser accepts --max_model_len as --max-model-len (underscores before a '.')."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg.partition("=")
            head, dot, tail = key[2:].partition(".")
            out.append("--" + head.replace("_", "-") + dot + tail + eq + value)
        else:
            out.append(arg)
    return out


def expand_dotted(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--compilation-config.level 3` / `--hf-overrides.a.b=1` → one JSON value per option (vLLM >= 0.10)."""
    known = {o for a in parser._actions for o in a.option_strings}
    merged: dict[str, dict[str, Any]] = {}
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        head, dot, path = key.partition(".")
        if arg.startswith("--") and dot and head in known:
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            try:
                parsed: Any = json.loads(value)
            except ValueError:
                parsed = value
            node = merged.setdefault(head, {})
            if head not in out:
                out.append(head)
            parts = path.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = parsed
        else:
            out.append(arg)
        i += 1
    result = []
    for arg in out:
        result.append(arg)
        if arg in merged:
            result.append(json.dumps(merged[arg]))
    return result


def check_rules(table: dict[str, Any], ns: argparse.Namespace, entrypoint: str) -> str | None:
    """The table's cross-flag rules; returns the error line of the first one broken (vLLM raises it)."""
    rules = table.get("rules")
    if rules is None:  # provisional tables: the one rule every version has
        rules = [{"if_set": "enable_auto_tool_choice", "requires": "tool_call_parser",
                  "message": "TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser"}]  # fmt: skip
    for rule in rules:
        if entrypoint not in rule.get("entrypoints", [entrypoint]):
            continue
        if not getattr(ns, rule.get("if_set", ""), None):
            continue
        missing = rule.get("requires") and not getattr(ns, rule["requires"], None)
        conflict = rule.get("conflicts") and getattr(ns, rule["conflicts"], None)
        if missing or conflict:
            return rule.get("message") or f"ValueError: --{rule['if_set']} conflicts with its companion flags"
    return None


class ModelOptionRefused(ValueError):
    """`vllm serve --model X` on versions that refuse it."""


def parse(table: dict[str, Any], argv: list[str], entrypoint: str = "serve") -> tuple[argparse.Namespace, list[str]]:
    """Parse argv like that vLLM version does. Returns (namespace, warnings).

    Unknown flags / bad values exit 2 through argparse (its usual message on stderr). On the `serve` entrypoint
    `--model` raises ModelOptionRefused before 0.11 and is a warning after, as in vLLM.
    """
    features = table.get("features") or {}
    if features.get("underscore_names", True):
        argv = normalize(argv)
    warnings: list[str] = []
    version = version_key(table.get("version", "0"))
    ep = (table.get("entrypoints") or {}).get(entrypoint) or {}
    if any(a == "--model" or a.startswith("--model=") for a in argv):
        default = "accepted" if entrypoint != "serve" else ("refused" if version < (0, 11) else "warning")
        mode = ep.get("model_option", default)
        if mode == "refused":
            msg = ep.get("model_option_error") or (
                "ValueError: With `vllm serve`, you should provide the model as a positional argument or in a "
                "config file instead of via the `--model` option."
            )
            raise ModelOptionRefused(msg.split(": ", 1)[1] if msg.startswith("ValueError: ") else msg)
        if mode != "accepted" or (entrypoint == "serve" and version >= (0, 11)):
            warnings.append(
                ep.get("model_option_warning")
                or "With `vllm serve`, you should provide the model as a positional argument or in a config file "
                "instead of via the `--model` option. The `--model` option will be removed in a future version."
            )
    parser = build_parser(table, entrypoint)
    if features.get("dotted_json", version >= (0, 10)):
        argv = expand_dotted(argv, parser)
    ns = parser.parse_args(argv)
    tag = getattr(ns, "model_tag", None)
    if tag:
        ns.model = tag
    if not getattr(ns, "model", None):
        ns.model = DEFAULT_MODEL_OLD if version < (0, 10) else DEFAULT_MODEL
    return ns, warnings


def lora_modules(values: list[str] | None, base_model: str) -> list[dict[str, str]]:
    """--lora-modules entries (`name=path` or JSON objects) as dicts with name, path, base_model_name."""
    out = []
    for item in values or []:
        item = item.strip()
        if item.startswith("{"):
            d = json.loads(item)
            out.append(
                {"name": d["name"], "path": d["path"], "base_model_name": d.get("base_model_name") or base_model}
            )
        else:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"Invalid LoRA module format: {item}. Expected 'name=path' or a JSON object.")
            out.append({"name": name, "path": path, "base_model_name": base_model})
    return out


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def get(ns: argparse.Namespace, name: str, default: Any = None) -> Any:
    """An option's value, or default when that version has no such option or it was not given."""
    v = getattr(ns, name, None)
    return default if v is None else v


def non_default_args(ns: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in sorted(vars(ns).items()) if v not in (None, False, [], "") and k != "help"}
