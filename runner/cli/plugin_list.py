"""``runner plugins``: plugins, what each registered, and the backends' options."""
from __future__ import annotations

import argparse
from typing import Any

from runner.cli.codes import EXIT_INTERNAL, EXIT_OK
from runner.cli.session_setup import loaded

#: (registry attribute of the PluginManager, what its entries are called)
_REGISTRIES = (("backends", "backend"), ("kinds", "case kind"), ("reporters", "reporter"),
               ("sources", "case source"), ("layouts", "ckpt layout"))


def _registered_rows(plugins: Any) -> list[list[str]]:
    return [[r.id, what, r.plugin, r.origin, getattr(r.cls, "description", "")]
            for attr, what in _REGISTRIES for r in getattr(plugins, attr).items()]


def _backend_options(plugins: Any) -> None:
    from runner.run.backend import option_help

    for r in plugins.backends.items():
        opts = getattr(r.cls, "options", {}) or {}
        if opts:
            print(f"\nbackend '{r.id}' options (--backend-opt KEY=VALUE):")
            for k, v in sorted(opts.items()):
                print(f"  {k:<20} {option_help(v)}")


def cmd_plugins(ns: argparse.Namespace) -> int:
    from tabulate import tabulate

    _, plugins = loaded(ns)
    rows = [[p.name, p.origin, p.module, ("FAILED: " + p.error) if p.error else "ok"] for p in plugins.plugins]
    print(tabulate(rows, headers=["plugin", "from", "module", "status"]))
    print()
    print(tabulate(_registered_rows(plugins), headers=["id", "type", "plugin", "from", "description"]))
    _backend_options(plugins)
    return EXIT_INTERNAL if any(p.error for p in plugins.plugins) else EXIT_OK
