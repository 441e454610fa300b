# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Version-aware vLLM command lines: check a whole argv against the flag table of a vLLM release.

The tables (``vllm_flag_tables/v<X_Y_Z>.py``) are dumped from the real vLLM parser by tools/vllm_flags/generate.py
(see docs/vllm-flags.md). This module mirrors what that parser does with an argv - ``vllm serve``'s
FlexibleArgumentParser pre-processing (``--max_model_len`` == ``--max-model-len``, ``--json-arg.key value``,
``-O3``) and argparse's rules (``--flag=value``, unique prefixes, values that look like options, nargs, type,
choices, ``--no-x``) - plus the checks vLLM runs before it starts (``--enable-auto-tool-choice`` needs
``--tool-call-parser``; ``vllm serve`` takes the model as a positional argument, the api_server entrypoint as
``--model``), so a bad argv is refused in the first second instead of after an image pull and minutes of start-up.

``argv`` is always what follows the entrypoint: ``vllm serve`` (entrypoint ``serve``) or
``python3 -m vllm.entrypoints.openai.api_server`` (entrypoint ``api_server``).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm.flag_tables import MODULES

ENTRYPOINTS = ("serve", "api_server")

# Hand-written: what replaced an option that a newer release no longer has (checked against the tables by the
# unit tests: every key exists in an older table and not in the newest). Keys are dests (option names with _).
RENAMES: dict[str, str] = {
    "swap_space": "it went with the V0 engine's CPU swap space; size the KV cache with --gpu-memory-utilization "
    "or --kv-cache-memory-bytes",
    "task": "use --runner (generate|pooling|draft) and --convert (embed|classify|reward) instead",
    "guided_decoding_backend": "use --structured-outputs-config.backend instead",
    "guided_decoding_disable_fallback": "use --structured-outputs-config.disable_fallback instead",
    "guided_decoding_disable_any_whitespace": "use --structured-outputs-config.disable_any_whitespace instead",
    "guided_decoding_disable_additional_properties": "use --structured-outputs-config.disable_additional_properties "
    "instead",
    "enable_reasoning": "--reasoning-parser alone enables reasoning",
    "cuda_graph_sizes": "use --cudagraph-capture-sizes (or --max-cudagraph-capture-size) instead",
    "override_pooler_config": "use --pooler-config instead",
    "rope_scaling": "set it through --hf-overrides instead",
    "rope_theta": "set it through --hf-overrides instead",
    "eplb_window_size": "use --eplb-config.window_size instead",
    "eplb_step_interval": "use --eplb-config.step_interval instead",
    "eplb_log_balancedness": "use --eplb-config.log_balancedness instead",
    "num_redundant_experts": "use --eplb-config.num_redundant_experts instead",
    "disable_mm_preprocessor_cache": "use --mm-processor-cache-gb 0 instead",
    "enable_multimodal_encoder_data_parallel": "use --mm-encoder-tp-mode data instead",
    "num_scheduler_steps": "multi-step scheduling went with the V0 engine",
    "use_v2_block_manager": "it is the only block manager",
    "preemption_mode": "the V1 engine always preempts by recompute",
}

# Flags whose value is a secret (--api-key, --hf-token): refused in an argv (see secret_flags()).
SECRET_DEST = re.compile(r"(?:^|_)(?:api_key|token|secret|password|passwd|credentials?)$")
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:[.+-].*)?$")


@dataclass
class Problem:
    """One thing wrong with an argv. ``kind``: parser (vLLM's parser refuses it), start (vLLM refuses to start
    after parsing), policy (vLLM accepts it but it is surely a mistake: ignored model, --help...)."""

    kind: str
    message: str


@dataclass
class _Index:
    table: dict[str, Any]
    version: str
    by_option: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_dest: dict[str, dict[str, Any]] = field(default_factory=dict)
    positionals: list[dict[str, Any]] = field(default_factory=list)
    long_options: list[str] = field(default_factory=list)
    bigrams: list[tuple[frozenset[str], str]] = field(default_factory=list)
    neg_number_options: bool = False


_INDEX: dict[tuple[str, str], _Index] = {}


# ---------------------------------------------------------------------------------------------------------------
# versions and tables


def is_secret(action: Mapping[str, Any]) -> bool:
    """Whether a table action takes a secret string (api_key, hf_token; not max_prompt_adapter_token, an int)."""
    return action["kind"] == "store" and action.get("type") == "str" and bool(SECRET_DEST.search(action["dest"]))


def secret_flags() -> list[str]:
    """The flags of every table whose value is a secret (a store action named like api_key, *_token, *_secret)."""
    out = set()
    for version in MODULES:
        for action in MODULES[version].TABLE["actions"]:
            if is_secret(action):
                out.update(o for o in action["option_strings"] if o.startswith("--"))
    return sorted(out)


def _version_key(version: str) -> tuple[int, int, int] | None:
    m = _VERSION.match(version.strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def known_versions() -> list[str]:
    """The vLLM releases that have a flag table, oldest first."""
    return sorted(MODULES, key=lambda v: _version_key(v) or (0, 0, 0))


def newest_version() -> str:
    return known_versions()[-1]


def resolve_version(version: str | None) -> tuple[str, str | None]:
    """The table version for a vLLM version (+ a warning when it is not an exact release with a table).

    ``0.10.2``, ``v0.10.2`` and ``0.10.2.post1`` / ``0.10.2+cu128`` use the 0.10.2 table; anything else (nightly,
    latest, a commit, a release without a table) uses the newest table, with a warning saying so.
    """
    text = str(version or "").strip()
    key = _version_key(text)
    if key is not None:
        exact = f"{key[0]}.{key[1]}.{key[2]}"
        if exact in MODULES:
            return exact, None
    newest = newest_version()
    if not text:
        why = "no vLLM version given"
    elif key is None:
        why = f"vLLM version {text!r} is not a release number (nightly, latest or a commit)"
    else:
        why = f"vLLM {text} has no flag table (tables: {', '.join(known_versions())})"
    return newest, (
        f"{why}: the argv is checked against the newest table, vLLM {newest}; a flag that release lacks may "
        f"still be fine. Set validate_args: false to skip the check, or add the table with "
        f"tools/vllm_flags/generate.py."
    )


def table_for(version: str | None) -> tuple[dict[str, Any], str | None]:
    """(flag table, warning or None); unknown versions get the newest table and a warning."""
    resolved, warning = resolve_version(version)
    return MODULES[resolved].TABLE, warning


def _index(version: str, entrypoint: str) -> _Index:
    """Lookup structures for one table + entrypoint, built once per process."""
    cached = _INDEX.get((version, entrypoint))
    if cached is not None:
        return cached
    table = MODULES[version].TABLE
    ep = table["entrypoints"].get(entrypoint, {})
    # an entrypoint's parser = the main (serve) actions less missing_dests, with extra_actions replacing/adding
    extra = {a["dest"]: a for a in ep.get("extra_actions", [])}
    missing = set(ep.get("missing_dests", [])) | set(extra)
    actions = [a for a in table["actions"] if a["dest"] not in missing] + list(extra.values())
    idx = _Index(table=table, version=version)
    for action in actions:
        if action["kind"] == "positional":
            idx.positionals.append(action)
            continue
        idx.by_dest.setdefault(action["dest"], action)
        for opt in action["option_strings"] + action.get("hidden_options", []):
            idx.by_option[opt] = action
            if _NEGATIVE_NUMBER.match(opt):
                idx.neg_number_options = True
    idx.long_options = sorted(o for o in idx.by_option if o.startswith("--"))
    idx.bigrams = [(_bigrams(o), o) for o in idx.long_options]
    _INDEX[(version, entrypoint)] = idx
    return idx


def _entrypoint(entrypoint: str) -> str:
    if entrypoint not in ENTRYPOINTS:
        raise GpufleetError(
            f"unknown vLLM entrypoint {entrypoint!r}: use 'serve' (vllm serve) or 'api_server' "
            "(python3 -m vllm.entrypoints.openai.api_server)",
            failure_class="bad_args",
        )
    return entrypoint


# ---------------------------------------------------------------------------------------------------------------
# values


def _human_int(value: str) -> int:
    """vLLM's human_readable_int: 1k = 1000, 1K = 1024, 25.6k; decimals only with k/m/g."""
    value = value.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", value)
    if m:
        number, suffix = m.groups()
        decimal = {"k": 10**3, "m": 10**6, "g": 10**9}
        binary = {"K": 2**10, "M": 2**20, "G": 2**30}
        if suffix in decimal:
            return int(float(number) * decimal[suffix])
        if suffix in binary:
            if not number.isdigit():
                raise ValueError(
                    f"decimals are not allowed with the binary suffix {suffix} (did you mean {number}{suffix.lower()}?)"
                )
            return int(number) * binary[suffix]
    try:
        return int(value)
    except ValueError:
        raise ValueError("not an integer (or one like 4096, 32k, 1M)") from None


def _convert(action: dict[str, Any], value: str) -> Any:
    """The value as vLLM's type function turns it; ValueError with a readable reason when it refuses it."""
    kind = action.get("type")
    if action.get("optional") and value in ("", "None"):
        return None
    if kind == "str_lower_underscore":  # `lambda s: s.lower().replace("-", "_")` before the choices
        return value.lower().replace("-", "_")
    if kind == "human_int_or_auto" and (value.strip() == "-1" or value.strip().lower() == "auto"):
        return -1
    if kind in ("int", "float", "human_int", "human_int_or_auto", "port"):
        try:
            number: Any = float(value) if kind == "float" else int(value)
        except ValueError:
            if kind in ("human_int", "human_int_or_auto"):
                return _human_int(value)  # 32k, 1M; raises its own ValueError
            raise ValueError("not a number" if kind == "float" else "not an integer") from None
        if kind == "port" and not 1024 <= number <= 65535:
            raise ValueError("a port must be between 1024 and 65535")
        return number
    if kind == "json" or (kind == "str_or_json" and re.match(r"(?s)^\s*{.*}\s*$", value)):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    if kind == "lora_modules":  # vLLM's LoRAParserAction: name=path, or a JSON object with name and path
        if value == "" or ("=" in value and "," not in value):
            return value
        try:
            item = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("not name=path nor a JSON object") from None
        if not isinstance(item, dict) or not {"name", "path"} <= set(item):
            raise ValueError('a JSON LoRA module needs "name" and "path"')
        return value
    if kind == "name_path":  # vLLM 0.8's PromptAdapterParserAction: name=path
        if value.count("=") != 1:
            raise ValueError("expected name=path")
        return value
    if kind == "bool":
        low = value.lower()
        if low in ("1", "true", "yes", "y", "on", "t"):
            return True
        if low in ("0", "false", "no", "n", "off", "f"):
            return False
        raise ValueError("not a boolean (true/false)")
    return value


def _fmt_choices(choices: list[Any]) -> str:
    return ", ".join(str(c) for c in choices)


# ---------------------------------------------------------------------------------------------------------------
# the argv walk


def _is_option_like(token: str, idx: _Index) -> bool:
    """argparse's rule for whether a token starts an option (else it is a value/positional)."""
    if not token or token[0] != "-" or token == "-":
        return False
    if token == "--":
        return True
    if _NEGATIVE_NUMBER.match(token) and not idx.neg_number_options:
        return False
    return " " not in token


def _normalize(token: str, features: dict[str, Any]) -> tuple[str, str | None, bool]:
    """FlexibleArgumentParser's rewriting: (option, explicit value or None, dotted json sub-key)."""
    explicit: str | None = None
    if "=" in token:
        token, explicit = token.split("=", 1)
    dotted = False
    if token.startswith("--"):
        head, dot, rest = token[2:].partition(".")
        if features.get("underscore_names", True):
            head = head.replace("_", "-")
        if dot and features.get("dotted_json", True):
            dotted = True
            token = "--" + head
        else:
            token = "--" + head + dot + rest
    elif token.startswith("-O") and len(token) > 2:
        shorthand = features.get("O_shorthand")
        if shorthand == "--optimization-level":  # 0.3x: -O3 / -Odecode / -O=3 -> --optimization-level X
            whole = token + ("=" + explicit if explicit is not None else "")
            return "--optimization-level", whole[3:] if whole[2] == "=" else whole[2:], False
        if shorthand == "-O" and token[2] == ".":  # 0.10: -O.level=3, a key of --compilation-config
            return "-O", explicit, True
    return token, explicit, dotted


def _lookup(option: str, idx: _Index, allow_abbrev: bool) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """(action, attached value from a short option like -q4, error)."""
    action = idx.by_option.get(option)
    if action is not None:
        return action, None, None
    if option.startswith("--"):
        if allow_abbrev:
            matches = [o for o in idx.long_options if o.startswith(option)]
            if len(matches) == 1:
                return idx.by_option[matches[0]], None, None
            if len(matches) > 1:
                return None, None, f"ambiguous option {option}: could be {', '.join(matches[:6])}"
        return None, None, None
    short = idx.by_option.get(option[:2])
    if short is not None and len(option) > 2:
        return short, option[2:], None
    if allow_abbrev:
        matches = sorted(o for o in idx.by_option if not o.startswith("--") and o.startswith(option))
        if len(matches) == 1:
            return idx.by_option[matches[0]], None, None
    return None, None, None


def _bigrams(option: str) -> frozenset[str]:
    word = option.lstrip("-")
    return frozenset(word[i : i + 2] for i in range(len(word) - 1))


def _close(option: str, idx: _Index) -> list[str]:
    """difflib's close matches among the flags, run on the 12 flags sharing most letter pairs (fast: no
    SequenceMatcher over 400 flags per typo)."""
    mine = _bigrams(option)
    if not mine:
        return []
    scored = sorted(((len(mine & pairs), name) for pairs, name in idx.bigrams), reverse=True)[:12]
    return difflib.get_close_matches(option, [name for score, name in scored if score], n=3, cutoff=0.75)


def _unknown(option: str, idx: _Index) -> str:
    """Message for an unknown flag: other releases that have it, the replacement, close names."""
    version = idx.version
    dest = option.lstrip("-").replace("-", "_")
    bare = dest[3:] if dest.startswith("no_") else dest
    elsewhere = [v for v in known_versions() if v != version and option in _index(v, "serve").by_option]
    msg = f"{option} is not a flag of vLLM {version}"
    if elsewhere:
        msg += f" (it exists in vLLM {', '.join(elsewhere)})"
    hint = RENAMES.get(dest) or RENAMES.get(bare)
    if hint:
        msg += f"; {hint}"
    close = _close(option, idx)
    if close and not hint:
        msg += f"; did you mean {' or '.join(close)}?"
    return msg


def _problems(argv: list[str], version: str, entrypoint: str, env: Mapping[str, Any] | None) -> list[Problem]:
    idx = _index(version, entrypoint)
    ep = idx.table["entrypoints"].get(entrypoint, {})
    features = idx.table.get("features", {})
    allow_abbrev = ep.get("allow_abbrev", True)
    problems: list[Problem] = []
    seen: dict[str, Any] = {}  # dest -> last value (True/False for flags)
    positionals: list[str] = []
    used_model_option: str | bool = False

    def bad(kind: str, message: str) -> None:
        problems.append(Problem(kind, message))

    i, n = 0, len(argv)
    while i < n:
        token = str(argv[i])
        i += 1
        if token == "--":
            positionals.extend(str(t) for t in argv[i:])
            break
        if not _is_option_like(token, idx):
            positionals.append(token)
            continue
        option, explicit, dotted = _normalize(token, features)
        if (
            token == "-O"
            and features.get("O_shorthand") == "--optimization-level"
            and i < n
            and str(argv[i]) in ("0", "1", "2", "3")
        ):
            option = "--optimization-level"
        action, attached, error = _lookup(option, idx, allow_abbrev)
        if error or action is None:
            bad("parser", error or _unknown(option, idx))
            if explicit is None:  # skip the unknown flag's value(s): one mistake, one message
                while i < n and not _is_option_like(str(argv[i]), idx):
                    i += 1
            continue
        if attached is not None:
            explicit = attached
        name = "/".join(action["option_strings"][:1]) or action["dest"]
        kind = action["kind"]
        if action["dest"] == "model":
            # vLLM refuses the exact token `--model` after `vllm serve` (`--model=X` slips through its check)
            used_model_option = "exact" if token == "--model" else (used_model_option or "other")
        if kind in ("help", "version"):
            bad("policy", f"{option} makes vLLM print its {kind} and exit instead of serving")
            continue
        if is_secret(action):
            bad(
                "policy",
                f"{name} carries a secret, which would show in the container's argv, labels, manifest and ps; set it "
                "as environment instead (vllm_container api_key, hf_token or secret_env)",
            )
        if kind in ("store_true", "store_false", "boolean_optional", "store_const", "append_const", "count"):
            if explicit is not None:
                bad("parser", f"{option} is an on/off flag and takes no value (got {option}={explicit})")
                continue
            if dotted:
                bad("parser", f"{token}: {name} takes no value, it has no keys")
                continue
            if kind == "boolean_optional":
                negative = action.get("negative")
                if negative is None:
                    negative = [o for o in action["option_strings"] if o.startswith("--no-")]
                seen[action["dest"]] = option not in negative
            else:
                seen[action["dest"]] = kind != "store_false"
            continue
        # options that take values
        nargs = action.get("nargs")
        values: list[str] = []
        if dotted:
            # --json-arg.key value / --json-arg.key=value: one value, merged into a JSON object by vLLM.
            if explicit is None:
                if i >= n:
                    bad("parser", f"{token} expects a value")
                    continue
                explicit = str(argv[i])
                i += 1
            seen[action["dest"]] = {}
            continue
        if explicit is not None:
            values = [explicit]
            if isinstance(nargs, int) and nargs > 1:
                bad("parser", f"{option} expects {nargs} values, not an attached ={explicit}")
                continue
        else:
            while i < n and not _is_option_like(str(argv[i]), idx):
                if nargs in (None, "?") and values:
                    break
                if isinstance(nargs, int) and len(values) >= nargs:
                    break
                values.append(str(argv[i]))
                i += 1
            need = 1 if nargs in (None, "+") else (nargs if isinstance(nargs, int) else 0)
            if len(values) < need:
                what = "a value" if need == 1 else f"{need} values"
                if nargs == "+":
                    what = "one or more values"
                bad("parser", f"{option} expects {what}")
                continue
        converted = []
        failed = False
        for value in values:
            try:
                conv = _convert(action, value)
            except ValueError as exc:
                bad("parser", f"{option} {value!r}: {exc}")
                failed = True
                break
            choices = action.get("choices")
            if choices is not None and conv not in choices:
                shown = "None" if conv is None else repr(value)
                bad("parser", f"{option}: invalid choice {shown} (choose from {_fmt_choices(choices)})")
                failed = True
                break
            converted.append(conv)
        if failed:
            continue
        if nargs in (None, "?"):
            seen[action["dest"]] = converted[0] if converted else True
        else:
            seen[action["dest"]] = converted

    # positionals: each table positional takes one ('?' / None) or more ('*', '+'); the rest are unrecognized
    slots = idx.positionals
    model_positional = None
    rest = list(positionals)
    for action in slots:
        if rest:
            if action.get("nargs") in ("*", "+"):
                taken, rest = rest, []
            else:
                taken, rest = rest[:1], rest[1:]
            if action["dest"] == "model_tag" and taken:
                model_positional = taken[0]
        elif action.get("nargs") in (None, "+"):
            bad("parser", f"missing the positional argument {action['dest']}")
    if rest:
        if entrypoint == "api_server" and not slots:
            bad("parser", f"unrecognized arguments: {' '.join(rest)} (api_server takes the model as --model MODEL)")
        else:
            bad("parser", f"unrecognized arguments: {' '.join(rest)}")

    # model: positional for `vllm serve`, --model for the api_server entrypoint
    if entrypoint == "serve":
        if used_model_option and model_positional is not None and features.get("model_option_moved_first"):
            bad(
                "parser",
                f"the model is given twice, as {model_positional!r} and with --model: vLLM {version} moves --model "
                "to the front and then refuses the positional one; keep only the positional model",
            )
        if (
            features.get("model_first_with_served_name")
            and not used_model_option
            and argv
            and str(argv[0]).startswith("-")
            and "config" not in seen
            and "served_model_name" in seen
        ):
            bad(
                "start",
                f"with --served-model-name, vllm serve of vLLM {version} wants the model as the FIRST argument "
                "(vllm serve MODEL --served-model-name NAME ...)",
            )
        if used_model_option and ep.get("model_option") == "refused":
            bad(
                "start" if used_model_option == "exact" else "policy",
                f"vllm serve of vLLM {version} refuses --model: give the model as the first positional "
                "argument (vllm serve MODEL ...)",
            )
        if model_positional is None and not used_model_option and "config" not in seen:
            bad("policy", "no model: vllm serve takes the model as the first positional argument (vllm serve MODEL)")
    else:
        if model_positional is not None:
            bad(
                "policy",
                f"the api_server entrypoint ignores the positional {model_positional!r}: give the model as "
                "--model MODEL",
            )
        elif not used_model_option and "config" not in seen:
            bad("policy", "no model: the api_server entrypoint takes the model as --model MODEL")

    # cross-flag rules confirmed against the real parser
    for rule in idx.table.get("rules", []):
        if not seen.get(rule["if_set"]):
            continue
        first = _flag_name(idx, rule["if_set"])
        if entrypoint in rule.get("refused_on", ()):
            bad("start", f"{first} is refused by the {entrypoint} entrypoint of vLLM {version} ({rule['message']})")
            continue
        if entrypoint not in rule.get("entrypoints", ()):
            continue
        if "requires" in rule:
            needed = _flag_name(idx, rule["requires"])
            value = seen.get(rule["requires"])
            if "requires_min" in rule:
                if not isinstance(value, (int, float)) or value < rule["requires_min"]:
                    bad(
                        "start",
                        f"{first} requires {needed} {rule['requires_min']} or more (vLLM {version} refuses to start)",
                    )
            elif not value:
                bad("start", f"{first} requires {needed} (vLLM {version} refuses to start without it)")
        if "conflicts" in rule and seen.get(rule["conflicts"]):
            bad(
                "start",
                f"{first} cannot be combined with {_flag_name(idx, rule['conflicts'])} (vLLM {version} refuses to start)",
            )
        for key, want in rule.get("requires_env", {}).items():
            if env is None or str(env.get(key, "")) != want:
                bad(
                    "start",
                    f"{first} requires {key}={want} in the container environment (vLLM {version} refuses to start)",
                )
    return problems


def _flag_name(idx: _Index, dest: str) -> str:
    action = idx.by_dest.get(dest)
    return action["option_strings"][0] if action and action["option_strings"] else "--" + dest.replace("_", "-")


def problems(
    argv: list[str], version: str | None, entrypoint: str = "serve", env: Mapping[str, Any] | None = None
) -> tuple[list[Problem], str | None]:
    """(problems with their kind, version warning or None); see validate_argv."""
    resolved, warning = resolve_version(version)
    return _problems([str(a) for a in argv], resolved, _entrypoint(entrypoint), env), warning


def validate_argv(
    argv: list[str], version: str | None, entrypoint: str = "serve", env: Mapping[str, Any] | None = None
) -> list[str]:
    """Everything wrong with argv for this vLLM version and entrypoint, one message each; [] = fine.

    ``env``: the container's environment, for the few flags that need a variable set (e.g. --grpc-port).
    """
    found, _warning = problems(argv, version, entrypoint, env)
    return [p.message for p in found]


_ARGV_FIX = (
    ". Fix the engine options or extra_args for this vLLM version (or set validate_args: false if the image's vLLM "
    "is known to take them)"
)


def check_argv(
    argv: list[str], version: str | None, entrypoint: str = "serve", env: Mapping[str, Any] | None = None
) -> list[str]:
    """Raise GpufleetError(failure_class='bad_args') listing every problem; return warnings (unknown version)."""
    found, warning = problems(argv, version, entrypoint, env)
    if found:
        resolved, _warning = resolve_version(version)
        head = f"the vLLM {entrypoint} argv does not fit vLLM {version or resolved}"
        if warning:
            head += f" (checked against the table of vLLM {resolved})"
        raise GpufleetError(
            head + ": " + "; ".join(p.message for p in found) + _ARGV_FIX,
            failure_class="bad_args",
            problems=[p.message for p in found],
            vllm_version=str(version or ""),
            table_version=resolved,
            entrypoint=entrypoint,
        )
    return [warning] if warning else []


# ---------------------------------------------------------------------------------------------------------------
# typed options -> flags


def flag_for(option: str, version: str | None, entrypoint: str = "serve") -> str:
    """The command-line flag of a typed option (``max_model_len`` or ``--max-model-len``) in this vLLM version.

    Raises GpufleetError naming the version, the releases that have it and the replacement when the chosen
    version does not have the option.
    """
    resolved, _warning = resolve_version(version)
    idx = _index(resolved, _entrypoint(entrypoint))
    dest = option.lstrip("-").replace("-", "_")
    action = idx.by_dest.get(dest) or idx.by_option.get("--" + dest.replace("_", "-"))
    if action is not None and action["option_strings"]:
        return action["option_strings"][0]
    flag = "--" + dest.replace("_", "-")
    have = [v for v in known_versions() if dest in _index(v, entrypoint).by_dest]
    msg = f"option {dest} ({flag}) does not exist in vLLM {version or resolved}"
    if resolved != str(version or ""):
        msg += f" (checked against the table of vLLM {resolved})"
    if have:
        msg += f"; vLLM {', '.join(have)} {'has' if len(have) == 1 else 'have'} it"
    if dest in RENAMES:
        msg += f"; {RENAMES[dest]}"
    else:
        close = _close(flag, idx)
        if close:
            msg += f" (did you mean {' or '.join(close)}?)"
    raise GpufleetError(
        msg + ". Remove the option or choose a vLLM version that has it.",
        failure_class="bad_args",
        option=dest,
        vllm_version=str(version or ""),
        table_version=resolved,
    )


def argv_for(options: dict[str, Any], version: str | None, entrypoint: str = "serve") -> list[str]:
    """Typed options (dest -> value; None = leave out) as flags of this version, in the given order.

    Booleans: ``--x`` / ``--no-x`` (or ``--x`` / nothing for a plain on-switch); lists: one flag, several values
    (nargs) or the flag repeated (append); dicts: JSON.
    """
    resolved, _warning = resolve_version(version)
    idx = _index(resolved, _entrypoint(entrypoint))
    out: list[str] = []
    for name, value in options.items():
        if value is None:
            continue
        flag = flag_for(name, version, entrypoint)
        action = idx.by_option[flag]
        kind = action["kind"]
        if kind in ("boolean_optional", "store_true", "store_false"):
            if not isinstance(value, bool):
                raise GpufleetError(f"option {name} ({flag}) is on/off: give true or false, not {value!r}")
            if kind == "boolean_optional":
                negative = [o for o in action["option_strings"] if o in action.get("negative", [])]
                out.append(flag if value else (negative[0] if negative else "--no-" + flag[2:]))
            elif value == (kind == "store_true"):
                out.append(flag)
            continue
        if isinstance(value, dict):
            values = [json.dumps(value, sort_keys=True, separators=(",", ":"))]
        elif isinstance(value, (list, tuple)):
            values = [json.dumps(v) if isinstance(v, (dict, list)) else _scalar(v) for v in value]
        else:
            values = [_scalar(value)]
        if kind == "append":
            for v in values:
                out += [flag, v]
        elif action.get("nargs") in (None, "?") and len(values) > 1:
            raise GpufleetError(f"option {name} ({flag}) takes one value in vLLM {resolved}, got {len(values)}")
        else:
            out += [flag, *values]
    return out


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
