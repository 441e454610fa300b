"""vLLM's command line, rebuilt from a flag table with argparse: accepts what that vLLM version accepts.

The table (plugins/module_utils/_vllm/flag_tables/v<X_Y_Z>.py, schema in docs/vllm-flags.md) lists every action of
the real parser; this module registers each with the same option strings (visible and hidden), nargs, type,
choices and kind, and replays vLLM's FlexibleArgumentParser.parse_args before argparse runs: `--model` refused
(0.8/0.10) or moved to the front (0.3x), underscores in option names, `-O3`, dotted JSON keys
(`--compilation-config.level 3`). Argparse itself (the same module vLLM uses) does the rest: prefixes, `=value`,
values that look like options, nargs, choices.

Pure logic (no I/O besides argparse's own exit on bad input), unit-tested in tests/unit/sim/.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from .tables import version_key

DEFAULT_MODEL_OLD = "facebook/opt-125m"  # vLLM < 0.10
DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
SERVE_USAGE = "vllm serve [model_tag] [options]"
CLI_USAGE = "vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ..."

MODEL_OPTION_ERROR = (
    "With `vllm serve`, you should provide the model as a positional argument or in a config file instead of via "
    "the `--model` option."
)
MODEL_OPTION_WARNING = MODEL_OPTION_ERROR + " The `--model` option will be removed in a future version."
MODEL_FIRST_ERROR = (
    "`model` should be provided as the first positional argument when using `vllm serve`. "
    "i.e. `vllm serve <model> --<arg> <value>`."
)


class ParseError(Exception):
    """argparse's error message (raised instead of exiting by check())."""


class StartRefused(ValueError):
    """A ValueError vLLM's FlexibleArgumentParser raises before argparse runs (exit 1 with a traceback)."""


class ModelOptionRefused(StartRefused):
    """`vllm serve --model X` on versions that refuse it (0.8, 0.10)."""


class ModelNotFirst(StartRefused):
    """0.3x: `vllm serve --port 1 MODEL --served-model-name x` (with --served-model-name the model comes first)."""


# ---------------------------------------------------------------------------------------------------------------
# type functions (named like vLLM's: argparse shows the name in "invalid <name> value")


def human_readable_int(value: str, tera: bool = False) -> int:
    """vLLM's parser for sizes like 32k (x1000), 32K (x1024), 1m, 1M, 25.6k (t/T from 0.11 on: `tera`)."""
    value = value.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", value)
    if m:
        num, suffix = m.groups()
        decimal = {"k": 10**3, "m": 10**6, "g": 10**9, **({"t": 10**12} if tera else {})}
        binary = {"K": 2**10, "M": 2**20, "G": 2**30, **({"T": 2**40} if tera else {})}
        if suffix in decimal:
            return int(float(num) * decimal[suffix])
        if suffix in binary:
            if not num.isdigit():
                raise argparse.ArgumentTypeError(
                    f"Decimals are not allowed with binary suffixes like {suffix}. Did you mean to use "
                    f"{num}{suffix.lower()} instead?"
                )
            return int(num) * binary[suffix]
    return int(value)


def human_readable_int_or_auto(value: str, tera: bool = True) -> int:
    """0.3x's --max-model-len: also -1 / auto (= derive from the model)."""
    if value.strip() == "-1" or value.strip().lower() == "auto":
        return -1
    return human_readable_int(value, tera)


def loads(value: str) -> Any:
    return json.loads(value)


def str2bool(value: str) -> bool:
    v = value.lower()
    if v in ("true", "1", "yes", "y", "on", "t"):
        return True
    if v in ("false", "0", "no", "n", "off", "f"):
        return False
    raise ValueError(value)


def union_dict_and_str(value: str) -> Any:
    """vLLM's str-or-JSON: a JSON object when it looks like one ({...}), else the plain string."""
    if not re.match(r"(?s)^\s*{.*}\s*$", value):
        return value
    return json.loads(value)


def str_lower_underscore(value: str) -> str:
    """`lambda s: s.lower().replace("-", "_")` in front of the choices (0.3x backends: Deep-Gemm = deep_gemm)."""
    return value.lower().replace("-", "_")


LORA_FIELDS = {"name", "path", "base_model_name", "is_3d_lora_weight"}  # vLLM's LoRAModulePath


def lora_module(value: str) -> str:
    """One --lora-modules value as vLLM's LoRAParserAction reads it: name=path, or a JSON object with name, path."""
    if value == "" or ("=" in value and "," not in value):
        return value
    try:
        item = json.loads(value)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"Invalid JSON format for --lora-modules: {value}") from None
    if not isinstance(item, dict) or not {"name", "path"} <= set(item):
        raise argparse.ArgumentTypeError(f"Invalid fields for --lora-modules: {value} - name and path are required")
    unknown = sorted(set(item) - LORA_FIELDS)
    if unknown:  # LoRAModulePath(**item) refuses them
        raise argparse.ArgumentTypeError(f"Invalid fields for --lora-modules: {value} - unexpected {unknown[0]!r}")
    return value


def name_path(value: str) -> str:
    """0.8's PromptAdapterParserAction: name=path."""
    if value.count("=") != 1:
        raise argparse.ArgumentTypeError(f"expected name=path, got {value!r}")
    return value


def check_port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("Port must be an integer") from None
    if not 1024 <= port <= 65535:
        raise argparse.ArgumentTypeError("Port must be between 1024 and 65535")
    return port


_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "json": loads,
    "str_or_json": union_dict_and_str,
    "human_int": human_readable_int,
    "human_int_or_auto": human_readable_int_or_auto,
    "str_lower_underscore": str_lower_underscore,
    "lora_modules": lora_module,
    "name_path": name_path,
    "port": check_port,
    "bool": str2bool,
}


def _type_fn(action: dict[str, Any], version: tuple[int, ...]) -> Any:
    """The type function of a table action (None: the raw string), wrapped like vLLM's optional_type."""
    name = action.get("type")
    if name is None:
        return None
    base = _TYPES.get(name, str)  # an unknown type function (type_name) is kept as str, as the table says
    if name in ("human_int", "human_int_or_auto"):
        base = _sizes(base, tera=version >= (0, 11))  # 0.8/0.10 have no t/T suffixes
    if not action.get("optional"):
        return base

    def optional(value: str) -> Any:
        return None if value in ("", "None") else base(value)

    optional.__name__ = getattr(base, "__name__", "optional_type")
    return optional


def _sizes(base: Any, tera: bool) -> Any:
    def sizes(value: str) -> int:
        return base(value, tera)

    sizes.__name__ = base.__name__
    return sizes


# ---------------------------------------------------------------------------------------------------------------
# the parser


class _OnOff(argparse.Action):
    """An on/off flag with explicit option strings: the table's `negative` ones switch it off (vLLM 0.33's
    `--enable-x` / `--disable-x` / hidden `--no-enable-x`; 0.10's `--x` / `--no-x`)."""

    def __init__(self, option_strings: list[str], dest: str, negative: list[str] | None = None, **kwargs: Any):
        self.negative = set(negative or [])
        kwargs.setdefault("default", None)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, option_string not in self.negative)


class _Parser(argparse.ArgumentParser):
    raise_errors = False

    def error(self, message: str) -> Any:  # type: ignore[override]
        if self.raise_errors:
            raise ParseError(message)
        return super().error(message)


def entrypoint_actions(table: dict[str, Any], entrypoint: str = "serve") -> list[dict[str, Any]]:
    """The actions of one entrypoint's parser: the table's (= `vllm serve`'s) less `missing_dests`, with
    `extra_actions` replacing or adding actions (e.g. 0.8.5's api_server has no model_tag and no --config)."""
    ep = (table.get("entrypoints") or {}).get(entrypoint) or {}
    extra = {a["dest"]: a for a in ep.get("extra_actions") or []}
    missing = set(ep.get("missing_dests") or [])
    out = []
    for action in table.get("actions") or []:
        dest = action.get("dest")
        if dest in extra:
            out.append(extra.pop(dest))
        elif dest not in missing:
            out.append(action)
    return out + list(extra.values())


def build_parser(table: dict[str, Any], entrypoint: str = "serve") -> argparse.ArgumentParser:
    """An argparse parser with every action of the table (`entrypoint`: "serve" or "api_server")."""
    version = table.get("version", "0")
    vkey = version_key(version)
    ep = (table.get("entrypoints") or {}).get(entrypoint) or {}
    abbrev = bool(ep.get("allow_abbrev", True))
    if entrypoint == "serve":
        parser = _Parser(
            prog="vllm serve",
            usage=SERVE_USAGE,
            description="Launch a local OpenAI-compatible API server to serve LLM completions via HTTP.",
            allow_abbrev=abbrev,
            add_help=False,
        )
    else:
        parser = _Parser(
            prog="api_server.py",
            description="vLLM OpenAI-Compatible RESTful API server.",
            allow_abbrev=abbrev,
            add_help=False,
        )
    seen: set[str] = set()
    for act in entrypoint_actions(table, entrypoint):
        kind = act.get("kind") or "store"
        dest = act["dest"]
        if kind == "positional" or not act.get("option_strings"):
            parser.add_argument(dest, nargs=act.get("nargs") or "?", default=None)
            continue
        # every string the real parser registered: the visible ones and the hidden aliases (--no-enable-x)
        opts = [o for o in [*act["option_strings"], *(act.get("hidden_options") or [])] if o not in seen]
        if not opts:
            continue
        seen.update(opts)
        common: dict[str, Any] = {"dest": dest}
        if act.get("required"):
            common["required"] = True
        if kind == "help":
            parser.add_argument(*opts, action="help", help=argparse.SUPPRESS)
        elif kind == "version":
            parser.add_argument(*opts, action="version", version=version)
        elif kind == "boolean_optional":
            negative = act.get("negative")
            if negative is None:  # tables before `negative` existed: --no-x switches --x off
                negative = [o for o in opts if o.startswith("--no-")]
            parser.add_argument(*opts, action=_OnOff, negative=negative, **common)
        elif kind in ("store_true", "store_false", "count"):
            parser.add_argument(*opts, action=kind, **common)
        elif kind in ("store_const", "append_const"):  # custom nargs=0 actions: the flag is on
            parser.add_argument(*opts, action=kind, const=True, **common)
        else:  # store, append (and custom actions that take values)
            kwargs = dict(common)
            conv = _type_fn(act, vkey)
            if conv is not None:
                kwargs["type"] = conv
            nargs = act.get("nargs")
            if nargs == "...":
                nargs = argparse.REMAINDER
            if nargs is not None:
                kwargs["nargs"] = nargs
                if nargs == "?":
                    kwargs["const"] = True  # e.g. a bare --hf-token: use the token of `huggingface-cli login`
            if act.get("choices") is not None:
                kwargs["choices"] = act["choices"]
            if kind == "append":
                kwargs["action"] = "append"
            parser.add_argument(*opts, **kwargs)
    return parser


# ---------------------------------------------------------------------------------------------------------------
# FlexibleArgumentParser.parse_args, before argparse


def _nested(keys: list[str], value: Any) -> Any:
    for key in reversed(keys):
        value = {key: value}
    return value


def _merge(original: dict[str, Any], update: dict[str, Any]) -> None:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(original.get(k), dict):
            _merge(original[k], v)
        elif isinstance(v, list) and isinstance(original.get(k), list):
            original[k] += v
        else:
            original[k] = v


def expand_dotted(args: list[str]) -> list[str]:
    """`--compilation-config.level 3` / `--hf-overrides.a.b=1` / `--x.list+ a,b`: merged per option into one JSON
    object, appended at the end as `--option JSON` (vLLM >= 0.10; any token starting with - that has a dot)."""
    delete: set[int] = set()
    merged: dict[str, dict[str, Any]] = {}
    for i, arg in enumerate(args):
        if i in delete or not (arg.startswith("-") and "." in arg):
            continue
        if "=" in arg:
            key_part, value_str = arg.split("=", 1)
            if "." not in key_part:
                continue  # the dot was in the value
        else:
            if i + 1 >= len(args):
                continue  # no value: argparse refuses the token itself
            key_part, value_str = arg, args[i + 1]
            delete.add(i + 1)
        if key_part.endswith("+"):
            key_part = key_part[:-1]
            value_str = json.dumps(value_str.split(","))
        key, *keys = key_part.split(".")
        try:
            value: Any = json.loads(value_str)
        except json.JSONDecodeError:
            value = value_str
        _merge(merged.setdefault(key, {}), _nested(keys, value))
        delete.add(i)
    out = [a for i, a in enumerate(args) if i not in delete]
    for key, value in merged.items():
        out += [key, json.dumps(value)]
    return out


def normalize(args: list[str], features: Mapping[str, Any] | None = None) -> list[str]:
    """Underscores in option names (`--max_model_len` = `--max-model-len`, up to the first '.') and `-O`
    shorthands as that version rewrites them (`O_shorthand`: "-O" = 0.10's -O3 -> -O.level=3,
    "--optimization-level" = 0.3x's -O3 -> --optimization-level 3)."""
    features = features if features is not None else {"underscore_names": True}
    shorthand = features.get("O_shorthand")
    dotted = features.get("dotted_json", False)
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg.startswith("--") and features.get("underscore_names", True):
            key, eq, value = arg.partition("=")
            head, dot, tail = key[2:].partition(".")
            out.append("--" + head.replace("_", "-") + dot + tail + eq + value)
        elif shorthand == "--optimization-level" and arg.startswith("-O") and arg != "-O":
            out += ["--optimization-level", arg[3:] if arg[2] == "=" else arg[2:]]
        elif shorthand == "-O" and dotted and arg.startswith("-O") and arg != "-O" and arg[2] != ".":
            out.append("-O.level=" + (arg[3:] if arg[2] == "=" else arg[2:]))
        elif arg == "-O" and shorthand and dotted and i + 1 < len(args) and args[i + 1] in ("0", "1", "2", "3"):
            out.append("--optimization-level" if shorthand == "--optimization-level" else "-O.level")
        else:
            out.append(arg)
    return out


def preprocess(
    table: dict[str, Any], args: list[str], entrypoint: str = "serve", refuse: bool = True
) -> tuple[list[str], list[str]]:
    """What FlexibleArgumentParser.parse_args does to argv before argparse: (argv for argparse, warnings).

    With `refuse`, raises ModelOptionRefused / ModelNotFirst where that version raises its ValueError.
    """
    args = [str(a) for a in args]
    features = table.get("features") or {}
    ep = (table.get("entrypoints") or {}).get(entrypoint) or {}
    warnings: list[str] = []
    if entrypoint == "serve":
        if ep.get("model_option") == "refused" and "--model" in args:
            if refuse:
                raise ModelOptionRefused(MODEL_OPTION_ERROR)
        elif features.get("model_option_moved_first"):
            idx = next((i for i, a in enumerate(args) if re.match(r"^--model(=.+|$)", a)), None)
            if idx is not None:
                warnings.append(MODEL_OPTION_WARNING)
                if args[idx] != "--model":
                    args = [args[idx][len("--model=") :], *args[:idx], *args[idx + 1 :]]
                elif idx + 1 < len(args):  # (a bare --model at the end is left to argparse: expects a value)
                    args = [args[idx + 1], *args[:idx], *args[idx + 2 :]]
        if (
            refuse
            and features.get("model_first_with_served_name")
            and args
            and args[0].startswith("-")
            and not any(re.match(r"^--config(=.+|$)", a) for a in args)
            and any(re.match(r"^--served[-_]model[-_]name(=.+|$)", a) for a in args)
        ):
            raise ModelNotFirst(MODEL_FIRST_ERROR)
    args = normalize(args, features)
    if features.get("dotted_json"):
        args = expand_dotted(args)
    return args, warnings


def _parse_args(parser: argparse.ArgumentParser, args: list[str], entrypoint: str) -> argparse.Namespace:
    """parse_args; unrecognized arguments of `vllm serve` are reported by the top-level `vllm` parser."""
    ns, extra = parser.parse_known_args(args)
    if extra:
        message = f"unrecognized arguments: {' '.join(extra)}"
        if entrypoint == "serve" and not getattr(parser, "raise_errors", False):
            _Parser(prog="vllm", usage=CLI_USAGE, add_help=False).error(message)
        parser.error(message)
    return ns


def parse(table: dict[str, Any], args: list[str], entrypoint: str = "serve") -> tuple[argparse.Namespace, list[str]]:
    """Parse argv like that vLLM version does. Returns (namespace, warnings).

    Unknown flags / bad values exit 2 through argparse (its usual message on stderr). On the `serve` entrypoint
    `--model` raises ModelOptionRefused (0.8, 0.10) or is moved to the front with a warning (0.3x).
    """
    processed, warnings = preprocess(table, args, entrypoint)
    parser = build_parser(table, entrypoint)
    ns = _parse_args(parser, processed, entrypoint)
    for act in entrypoint_actions(table, entrypoint):
        if act.get("deprecated") and getattr(ns, act["dest"], None) not in (None, False):
            warnings.append(f"argument '{act['dest']}' is deprecated")
    version = version_key(table.get("version", "0"))
    tag = getattr(ns, "model_tag", None) if entrypoint == "serve" else None
    if tag:
        ns.model = tag
    if not getattr(ns, "model", None):
        ns.model = DEFAULT_MODEL_OLD if version < (0, 10) else DEFAULT_MODEL
    return ns, warnings


def check(
    table: dict[str, Any], args: list[str], entrypoint: str = "serve", parser: argparse.ArgumentParser | None = None
) -> str | None:
    """The parser's verdict alone: argparse's error message, or None when it accepts argv (the ValueErrors of
    `vllm serve --model` and the cross-flag rules are start-up checks, not parser errors; --help counts as
    accepted). `parser`: build_parser(table, entrypoint) when checking many argv."""
    processed, _warnings = preprocess(table, args, entrypoint, refuse=False)
    parser = parser or build_parser(table, entrypoint)
    parser.raise_errors = True  # type: ignore[attr-defined]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _parse_args(parser, processed, entrypoint)
    except ParseError as exc:
        return str(exc)
    except SystemExit:  # --help / --version
        return None
    return None


def check_rules(
    table: dict[str, Any], ns: argparse.Namespace, entrypoint: str, env: Mapping[str, str] | None = None
) -> str | None:
    """The table's cross-flag rules (validate_parsed_serve_args & co.); the error line of the first one broken."""
    env = os.environ if env is None else env
    for rule in table.get("rules") or []:
        if not getattr(ns, rule.get("if_set", ""), None):
            continue
        message = rule.get("message") or f"ValueError: --{rule['if_set'].replace('_', '-')} is refused here"
        if entrypoint in rule.get("refused_on", ()):
            return message
        if entrypoint not in rule.get("entrypoints", ()):
            continue
        if "requires" in rule:
            value = getattr(ns, rule["requires"], None)
            if "requires_min" in rule:
                if not isinstance(value, (int, float)) or value < rule["requires_min"]:
                    return message
            elif not value:
                return message
        if rule.get("conflicts") and getattr(ns, rule["conflicts"], None):
            return message
        for key, want in (rule.get("requires_env") or {}).items():
            if str(env.get(key, "")) != str(want):
                return message
    return None


# ---------------------------------------------------------------------------------------------------------------
# values for the rest of the stand-in


def lora_modules(values: list[str] | None, base_model: str) -> list[dict[str, str]]:
    """--lora-modules entries (`name=path` or JSON objects) as dicts with name, path, base_model_name."""
    out = []
    for item in values or []:
        item = (item or "").strip()
        if not item:
            continue
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
