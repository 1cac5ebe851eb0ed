"""Plugins' command-line options: read ``-p NAME`` before parsing, then let reporters and
``runner_addoption`` add their options to ``runner run`` / ``runner golden update``."""
from __future__ import annotations

import argparse
from typing import Sequence

from runner.errors import UsageError


def add_plugin_options(p: argparse.ArgumentParser, plugins: "object | None") -> None:
    if plugins is None:
        return
    for reg in plugins.reporters.items():  # type: ignore[attr-defined]
        try:
            reg.cls.add_options(p)
        except argparse.ArgumentError as exc:
            raise UsageError(f"reporter '{reg.id}' (plugin '{reg.plugin}'): {exc}") from None
    try:
        plugins.hook.runner_addoption(parser=p)  # type: ignore[attr-defined]
    except argparse.ArgumentError as exc:
        raise UsageError(f"a plugin's runner_addoption: {exc}") from None


PLUGIN_OPTION_COMMANDS = ("run", "golden")


def takes_plugin_options(argv: Sequence[str]) -> bool:
    command = next((a for a in argv if not a.startswith("-")), None)
    return command in PLUGIN_OPTION_COMMANDS


def preparse_plugins(argv: Sequence[str]) -> list[str]:
    """The ``-p NAME`` / ``-pNAME`` values of a command line, read before it is parsed."""
    out: list[str] = []
    it = iter(argv)
    for tok in it:
        if tok == "--":
            break
        if tok == "-p":
            value = next(it, None)
            if value is not None:
                out.append(value)
        elif tok.startswith("-p") and not tok.startswith("--") and len(tok) > 2:
            out.append(tok[2:].lstrip("="))
    return out
