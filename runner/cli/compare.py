"""``runner compare GOLDEN ACTUAL``: a finished run's metrics against a golden file, offline."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from runner.cli.codes import EXIT_FAILED, EXIT_OK
from runner.records import CheckResult


def cmd_compare(ns: argparse.Namespace) -> int:
    from runner.compare.golden.offline import compare_offline, read_model_config, result_json
    from runner.plugins import PluginManager

    plugins = PluginManager()
    plugins.load(list(ns.plugins))
    config = read_model_config(ns.model_config) if ns.model_config else None
    result = compare_offline(ns.golden, ns.actual, config, plugins.checks.as_mapping())
    _print_checks(result.checks, result.notes)
    if ns.json_out:
        from runner.results import write_json_atomic

        write_json_atomic(Path(ns.json_out), result_json(result, ns.golden, ns.actual))
    return EXIT_OK if result.passed else EXIT_FAILED


def _print_checks(checks: Sequence[CheckResult], notes: Sequence[str]) -> None:
    for c in checks:
        state = "SKIP" if c.skipped else ("PASS" if c.passed else "FAIL")
        print(f"{state}  {c.name}" + (f"  {c.detail}" if c.detail and not c.passed else ""))
    for note in notes:
        print(f"note: {note}")
    failed = sum(1 for c in checks if not c.passed)
    print(f"{len(checks) - failed} passed, {failed} failed ({len(checks)} checks)")
