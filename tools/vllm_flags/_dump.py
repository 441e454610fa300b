# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs INSIDE the throwaway venv of one vLLM version (started by generate.py or tests/realparser).

It selects vLLM's CPU platform before vLLM is imported anywhere, builds the parsers exactly as the two entrypoints
build them (``vllm serve`` = the vLLM CLI's top-level parser + the serve subcommand; ``python3 -m
vllm.entrypoints.openai.api_server`` = ``make_arg_parser(FlexibleArgumentParser(...))``) and then does one of:

  probe                      import everything the parsers need; print ``MISSING <module>`` for the first module
                             that is not installed, or ``OK``
  dump OUT.json              write every action of both parsers (+ entrypoint facts and cross-flag rules, each
                             verified against the real parser) as JSON
  parse IN.json OUT.json     IN = [{"entrypoint": "serve"|"api_server", "argv": [...]}, ...]; run each argv
                             through the real parser (and the serve validation vLLM runs before start); write
                             [{"ok": bool, "error": str|null}, ...]

vLLM logs to stdout, so results go to files, never to stdout. Python 3.9+ syntax (old vLLM venvs).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class ParserError(Exception):
    """argparse's error() turned into an exception (the real one prints and exits 2)."""


def _raise_instead_of_exit(self: argparse.ArgumentParser, message: str) -> None:
    raise ParserError(message)


def select_cpu_platform() -> None:
    """Make vLLM resolve the CPU platform (0.10.x ignores VLLM_TARGET_DEVICE for an installed CUDA wheel)."""
    from vllm import platforms
    from vllm.platforms.cpu import CpuPlatform

    if hasattr(platforms, "_current_platform"):
        # Lazy platform (0.7+): vllm.platforms.__getattr__ returns this once it is set.
        platforms._current_platform = CpuPlatform()
    else:
        platforms.current_platform = CpuPlatform()
    # Keep the plugin resolution honest too, should anything ask for it again.
    plugins = getattr(platforms, "builtin_platform_plugins", None)
    if isinstance(plugins, dict):
        for name in list(plugins):
            plugins[name] = (lambda: "vllm.platforms.cpu.CpuPlatform") if name == "cpu" else (lambda: None)


def _import_first(*names: str):
    last: Exception | None = None
    for dotted in names:
        module, _dot, attr = dotted.rpartition(".")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not exc.name or not (module == exc.name or module.startswith(exc.name + ".")):
                raise  # a dependency is missing, not the module we look for
            last = exc
            continue
        if hasattr(mod, attr):
            return getattr(mod, attr)
        last = AttributeError(dotted)
    raise ImportError(f"none of {names} found: {last}")


def build_parsers():
    """Return (top_parser, serve_parser, serve_cmd, api_parser, validate_fn)."""
    select_cpu_platform()
    flexible = _import_first("vllm.utils.argparse_utils.FlexibleArgumentParser", "vllm.utils.FlexibleArgumentParser")
    # vllm.entrypoints.openai.cli_args until ~0.1x, vllm.entrypoints.common.cli_args later
    make_arg_parser = _import_first(
        "vllm.entrypoints.common.cli_args.make_arg_parser", "vllm.entrypoints.openai.cli_args.make_arg_parser"
    )
    validate = _import_first(
        "vllm.entrypoints.common.cli_args.validate_parsed_serve_args",
        "vllm.entrypoints.openai.cli_args.validate_parsed_serve_args",
    )
    serve_mod = importlib.import_module("vllm.entrypoints.cli.serve")
    import vllm.entrypoints.openai.api_server  # noqa: F401  (the module the old entrypoint runs)

    # vllm.entrypoints.cli.main.main(), reduced to the serve subcommand.
    top = flexible(description="vLLM CLI")
    top.add_argument("-v", "--version", action="version", version="x")
    subparsers = top.add_subparsers(required=False, dest="subparser")
    serve_cmd = next(c for c in serve_mod.cmd_init() if c.name == "serve")
    serve_parser = serve_cmd.subparser_init(subparsers)
    serve_parser.set_defaults(dispatch_function=serve_cmd.cmd)

    # vllm/entrypoints/openai/api_server.py, `if __name__ == "__main__":`
    api = make_arg_parser(flexible(description="vLLM OpenAI-Compatible RESTful API server."))
    return top, serve_parser, serve_cmd, api, validate


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_one(parsers, entrypoint: str, argv: list[str]) -> str | None:
    """Run argv through the real parser + pre-start validation; return the error text or None."""
    top, _serve_parser, serve_cmd, api, validate = parsers
    argparse.ArgumentParser.error = _raise_instead_of_exit  # type: ignore[method-assign]
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            if entrypoint == "serve":
                args = top.parse_args(["serve", *argv])
                serve_cmd.validate(args)
            else:
                args = api.parse_args(list(argv))
                validate(args)
    except ParserError as exc:
        return f"error: {exc}"
    except SystemExit as exc:  # --help / --version, or an old argparse path
        return f"exit {exc.code}: {sink.getvalue().strip()[-300:]}"
    except Exception as exc:  # ValueError / TypeError raised by vLLM's own checks
        return f"{type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# dump


def _type_info(fn) -> tuple[str | None, bool, str | None]:
    """(type name for the table, accepts "None"/"" as null, qualname when it is not a known type)."""
    if fn is None:
        return None, False, None
    optional = False
    for _depth in range(6):
        qual = getattr(fn, "__qualname__", "") or ""
        if "optional_type" in qual:
            optional = True
        cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if callable(c.cell_contents)]
        if "parse_dataclass" in qual:
            return "json", optional, None
        if not cells or qual.split(".")[-1] in (
            "union_dict_and_str",
            "human_readable_int",
            "human_readable_int_or_auto",
        ):
            break
        fn = cells[0]
    qual = getattr(fn, "__qualname__", repr(fn))
    name = qual.split(".")[-1]
    if fn is int:
        return "int", optional, None
    if fn is float:
        return "float", optional, None
    if fn is str:
        return "str", optional, None
    if fn is json.loads or name == "loads":
        return "json", optional, None
    if name == "human_readable_int":
        return "human_int", optional, None
    if name in ("from_cli", "from_json"):  # 0.8.x config classes parsed from a JSON (or Python literal) string
        return "json", optional, None
    if name == "human_readable_int_or_auto":
        return "human_int_or_auto", optional, None
    if name == "union_dict_and_str":
        return "str_or_json", optional, None
    if fn is bool or name in ("str2bool", "strtobool", "_str2bool"):
        return "bool", optional, None
    if name == "check_port":
        return "port", optional, None
    if name == "<lambda>":
        try:  # e.g. `lambda s: s.lower().replace("-", "_")` in front of choices
            if fn("Ab-C") == "ab_c":
                return "str_lower_underscore", optional, None
        except Exception:
            pass
    if isinstance(fn, type):  # e.g. an Enum class or another constructor
        return "str", optional, f"{fn.__module__}.{qual}"
    return "str", optional, f"{getattr(fn, '__module__', '?')}.{qual}"


def _kind(action: argparse.Action) -> str:
    if not action.option_strings:
        return "positional"
    pairs = [
        (argparse.BooleanOptionalAction, "boolean_optional"),
        (argparse._StoreTrueAction, "store_true"),
        (argparse._StoreFalseAction, "store_false"),
        (argparse._StoreConstAction, "store_const"),
        (argparse._AppendConstAction, "append_const"),
        (argparse._AppendAction, "append"),
        (argparse._CountAction, "count"),
        (argparse._HelpAction, "help"),
        (argparse._VersionAction, "version"),
        (argparse._ExtendAction, "append"),
        (argparse._StoreAction, "store"),
    ]
    for cls, kind in pairs:
        if isinstance(action, cls):
            return kind
    # A custom action: describe it by how many values it takes.
    return "store_const" if action.nargs == 0 else "store"


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(getattr(value, "value", value))


def custom_action(action: argparse.Action) -> bool:
    return not type(action).__module__.startswith("argparse")


def _negative(parser: argparse.ArgumentParser, action: argparse.Action, option: str) -> bool:
    """Whether this option string of an on/off flag switches it off (asked of the action itself)."""
    ns = argparse.Namespace()
    action(parser, ns, None, option)
    return getattr(ns, action.dest) is False


def _actions(parser: argparse.ArgumentParser, deprecated: set) -> list[dict]:
    registered: dict[int, list[str]] = {}
    for opt, action in parser._option_string_actions.items():
        registered.setdefault(id(action), []).append(opt)
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        tname, optional, custom = _type_info(action.type)
        nargs = action.nargs
        if nargs == argparse.REMAINDER:
            nargs = "..."
        # long options first, otherwise argparse's order (the first one is the one help shows first)
        visible = sorted(action.option_strings, key=lambda s: not s.startswith("--"))
        entry = {
            "option_strings": visible,
            "dest": action.dest,
            "nargs": nargs,
            "type": tname,
            "choices": None if action.choices is None else [_jsonable(c) for c in action.choices],
            "kind": _kind(action),
        }
        if type(action).__name__ == "LoRAParserAction":  # name=path or {"name": ..., "path": ...} per value
            entry["type"] = "lora_modules"
        elif type(action).__name__ == "PromptAdapterParserAction":  # name=path per value
            entry["type"] = "name_path"
        elif custom_action(action) and entry["kind"] != "boolean_optional":
            entry["action"] = type(action).__name__
        hidden = sorted(set(registered.get(id(action), [])) - set(visible))
        if hidden:  # e.g. --no-enable-x, still accepted but left out of --help
            entry["hidden_options"] = hidden
        if entry["kind"] == "boolean_optional":
            entry["negative"] = sorted(o for o in visible + hidden if _negative(parser, action, o))
        if optional:
            entry["optional"] = True
        if custom:
            entry["type_name"] = custom
        if action.required:
            entry["required"] = True
        if action in deprecated or getattr(action, "deprecated", False):
            entry["deprecated"] = True
        out.append(entry)
    out.sort(key=lambda a: (a["kind"] != "positional", a["option_strings"][:1] or [a["dest"]], a["dest"]))
    return out


# Cross-flag rules vLLM checks before start; each is kept only when the real parser confirms it.
CANDIDATE_RULES = [
    {
        "id": "auto_tool_choice_needs_parser",
        "if_set": "enable_auto_tool_choice",
        "requires": "tool_call_parser",
        "probe_bad": ["--enable-auto-tool-choice"],
        "probe_good": ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
    },
    {
        "id": "log_outputs_needs_log_requests",
        "if_set": "enable_log_outputs",
        "requires": "enable_log_requests",
        "probe_bad": ["--enable-log-outputs"],
        "probe_good": ["--enable-log-outputs", "--enable-log-requests"],
    },
    {
        "id": "enable_reasoning_needs_parser",
        "if_set": "enable_reasoning",
        "requires": "reasoning_parser",
        "probe_bad": ["--enable-reasoning"],
        "probe_good": ["--enable-reasoning", "--reasoning-parser", "deepseek_r1"],
    },
    {
        "id": "dp_multi_port_needs_dp_size",
        "if_set": "data_parallel_multi_port_external_lb",
        "requires": "data_parallel_size",
        "requires_min": 2,
        "probe_bad": ["--data-parallel-multi-port-external-lb", "--data-parallel-size-local", "2"],
        "probe_good": ["--data-parallel-multi-port-external-lb", "--data-parallel-size", "2", "-dpl", "2"],
    },
    {
        "id": "dp_multi_port_needs_dp_size_local",
        "if_set": "data_parallel_multi_port_external_lb",
        "requires": "data_parallel_size_local",
        "requires_min": 2,
        "probe_bad": ["--data-parallel-multi-port-external-lb", "--data-parallel-size", "2"],
        "probe_good": ["--data-parallel-multi-port-external-lb", "--data-parallel-size", "2", "-dpl", "2"],
    },
    {
        "id": "grpc_port_needs_rust_frontend",
        "if_set": "grpc_port",
        "requires_env": {"VLLM_USE_RUST_FRONTEND": "1"},
        "probe_bad": ["--grpc-port", "50051"],
        "probe_good": ["--grpc-port", "50051"],
        "probe_good_env": {"VLLM_USE_RUST_FRONTEND": "1"},
    },
    {
        "id": "per_request_metrics_needs_log_stats",
        "if_set": "enable_per_request_metrics",
        "conflicts": "disable_log_stats",
        "probe_bad": ["--enable-per-request-metrics", "--disable-log-stats"],
        "probe_good": ["--enable-per-request-metrics"],
    },
]

# FlexibleArgumentParser rewrites that differ between releases: each probed on the real parser (any probe ok = on).
FEATURE_PROBES = {
    "underscore_names": [["--max_model_len", "128"]],
    "dotted_json": [["--hf-overrides.foo", "1"], ["--compilation-config.level", "3"]],
    "O_shorthand": [["-O3"]],
}


def dump(out_path: str) -> None:
    parsers = build_parsers()
    top, serve_parser, _serve_cmd, api, _validate = parsers
    flexible = type(top)
    deprecated = set(getattr(flexible, "_deprecated", ()) or ())
    serve_actions = _actions(serve_parser, deprecated)
    api_actions = _actions(api, deprecated)

    import vllm

    version = getattr(vllm, "__version__", "?")
    entrypoints: dict = {}
    for name, model_argv_pos, model_argv_opt in (
        ("serve", ["facebook/opt-125m"], ["--model", "facebook/opt-125m"]),
        ("api_server", ["facebook/opt-125m"], ["--model", "facebook/opt-125m"]),
    ):
        err_opt = parse_one(parsers, name, model_argv_opt)
        err_pos = parse_one(parsers, name, model_argv_pos)
        parser = serve_parser if name == "serve" else api
        has_positional = any(not a.option_strings for a in parser._actions if a.dest != "subparser")
        if name == "serve":
            model = "positional"
        else:
            model = "option"
        info = {
            "model": model,
            "model_option": "accepted" if err_opt is None else "refused",
            "model_positional": "accepted" if (has_positional and err_pos is None) else "refused",
            "allow_abbrev": bool(parser.allow_abbrev),
            "command": ["vllm", "serve"]
            if name == "serve"
            else ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        }
        if err_opt is not None:
            info["model_option_error"] = _short(err_opt)
        entrypoints[name] = info
    if api_actions != serve_actions:  # e.g. 0.8.5: model_tag and --config come with the serve subcommand only
        serve_by_dest = {a["dest"]: a for a in serve_actions}
        api_by_dest = {a["dest"]: a for a in api_actions}
        missing = sorted(set(serve_by_dest) - set(api_by_dest))
        extra = [a for a in api_actions if serve_by_dest.get(a["dest"]) != a]
        if missing:
            entrypoints["api_server"]["missing_dests"] = missing
        if extra:
            entrypoints["api_server"]["extra_actions"] = extra

    rules = []
    dests = {a["dest"] for a in serve_actions}
    for rule in CANDIDATE_RULES:
        other = rule.get("requires") or rule.get("conflicts")
        if rule["if_set"] not in dests or (other and other not in dests):
            continue
        found = {
            k: rule[k] for k in ("id", "if_set", "requires", "requires_min", "conflicts", "requires_env") if k in rule
        }
        found["entrypoints"], found["refused_on"] = [], []
        for ep in ("serve", "api_server"):
            base = ["facebook/opt-125m"] if ep == "serve" else ["--model", "facebook/opt-125m"]
            bad = parse_one(parsers, ep, base + rule["probe_bad"])
            saved = dict(os.environ)
            os.environ.update(rule.get("probe_good_env", {}))
            try:
                good = parse_one(parsers, ep, base + rule["probe_good"])
            finally:
                os.environ.clear()
                os.environ.update(saved)
            if bad is not None and good is None:
                found["entrypoints"].append(ep)
                found["message"] = _short(bad)
            elif bad is not None and parse_one(parsers, ep, base) is None:
                found["refused_on"].append(ep)  # e.g. --grpc-port on the api_server entrypoint: never accepted
                found.setdefault("message", _short(bad))
        if found["entrypoints"] or found["refused_on"]:
            if not found["refused_on"]:
                del found["refused_on"]
            rules.append(found)

    features: dict = {
        name: any(parse_one(parsers, "serve", ["facebook/opt-125m", *argv]) is None for argv in probes)
        for name, probes in FEATURE_PROBES.items()
    }
    if features["O_shorthand"]:
        # -O3 is either the -O option itself (compilation config) or rewritten to --optimization-level 3
        features["O_shorthand"] = "-O" if "-O" in serve_parser._option_string_actions else "--optimization-level"
    # 0.3x: `vllm serve --port 1 MODEL --served-model-name x` is refused: the model must come first
    features["model_first_with_served_name"] = (
        parse_one(parsers, "serve", ["--port", "8001", "facebook/opt-125m", "--served-model-name", "x"]) is not None
    )
    # 0.3x: `--model X` is moved to the front (a positional model as well is then one too many)
    features["model_option_moved_first"] = (
        parse_one(parsers, "serve", ["--port", "8001", "--model", "facebook/opt-125m"]) is None
    )

    table = {
        "version": version,
        "features": features,
        "entrypoints": entrypoints,
        "rules": rules,
        "actions": serve_actions,
    }
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(table, fh, sort_keys=True, indent=1)


def main() -> int:
    cmd = sys.argv[1]
    if cmd == "probe":
        try:
            build_parsers()
        except ModuleNotFoundError as exc:
            print(f"MISSING {exc.name}")
            import traceback

            traceback.print_exc(limit=-3)
            return 3
        except RuntimeError as exc:  # fastapi: 'Form data requires "python-multipart" ... pip install python-multipart'
            m = re.search(r"pip install ([A-Za-z0-9_.\-]+)", str(exc))
            if not m:
                raise
            print(f"MISSING {m.group(1)}")
            return 3
        print("OK")
        return 0
    if cmd == "dump":
        dump(sys.argv[2])
        return 0
    if cmd == "parse":
        with open(sys.argv[2], encoding="utf-8") as fh:
            cases = json.load(fh)
        parsers = build_parsers()
        results = []
        for case in cases:
            err = parse_one(parsers, case.get("entrypoint", "serve"), case["argv"])
            results.append({"ok": err is None, "error": err})
        with open(sys.argv[3], "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
