"""``main``: parse, run the command, and turn every error into an exit code, here and only
here (one line on stderr for a usage error: exit 4; a traceback only for a bug: exit 3)."""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import Callable, Sequence

from runner.cli.codes import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from runner.cli.parser import build_parser
from runner.cli.session_setup import load_plugins, loaded
from runner.errors import UsageError
from runner.plugin_options import preparse_plugins, takes_plugin_options


def _schema(ns: argparse.Namespace) -> int:
    from runner.spec.editor_schema import cmd_schema

    return cmd_schema(ns, loaded(ns)[1])


#: command name -> "module:function"; the module is imported only when its command runs, so
#: `runner --help`, `list`, `validate` and dry runs import nothing they do not use
COMMANDS: dict[str, str] = {
    "run": "runner.cli.run:cmd_run", "golden": "runner.cli.run:cmd_golden",
    "list": "runner.cli.cases:cmd_list", "validate": "runner.cli.cases:cmd_validate",
    "show": "runner.cli.cases:cmd_show", "plugins": "runner.cli.plugin_list:cmd_plugins",
    "compare": "runner.cli.compare:cmd_compare", "schema": "runner.cli.main:_schema",
    "history": "runner.history.show:cmd_history",
}


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    if name not in COMMANDS:
        raise UsageError(f"unknown command {name!r}")
    module, _, func = COMMANDS[name].partition(":")
    command: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), func)
    return command


def _print_version() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        print(f"runner {version('dist-spec-runner')}")
    except PackageNotFoundError:
        print("runner (not installed)")
    return EXIT_OK


def _dispatch(args: list[str]) -> int:
    # for the commands that take plugins' options, plugins load before the command line is
    # parsed, so those options exist; other commands load them when they need them
    preloaded = load_plugins(preparse_plugins(args)) if takes_plugin_options(args) else None
    parser = build_parser(preloaded[1] if preloaded else None)
    ns = parser.parse_args(args)
    if preloaded:
        ns._loaded = preloaded
    if ns.version:
        return _print_version()
    if ns.command is None:
        parser.print_help()
        return EXIT_USAGE
    return _command(ns.command)(ns)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception:  # noqa: BLE001 - an internal error: the one place a traceback is right
        traceback.print_exc()
        print("error: internal error (the traceback above is a bug in the runner or a plugin)", file=sys.stderr)
        return EXIT_INTERNAL
