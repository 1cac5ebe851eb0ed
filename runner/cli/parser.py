"""The argument parser of every command (argparse errors are usage errors: exit 4, not 2)."""
from __future__ import annotations

import argparse
from typing import NoReturn

from runner.errors import UsageError
from runner.plugin_options import add_plugin_options


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 by default; usage errors are 4
        raise UsageError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser, *, paths: bool = True) -> None:
    if paths:
        p.add_argument("paths", nargs="*", metavar="PATH",
                       help="spec files or directories (default: the configured paths, else specs/)")
        p.add_argument("-k", dest="keyword", metavar="EXPR",
                       help="only cases whose id contains these words (and/or/not, parentheses; tags and kinds match too)")
        p.add_argument("--platform", help="force the platform (cpu, dgx_h100, ...); default: detected")
    p.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                   help="load a plugin module; -p no:NAME blocks one")
    if paths:
        p.add_argument("--overlay", metavar="FILE",
                       help="Megatron cases: a YAML overlay of MODEL_ARGS/ENV_VARS/resources/golden_dir")
        p.add_argument("--megatron-entry", metavar="ENTRY",
                       help="Megatron cases: the training entry (builtin, path/to/pretrain_gpt.py, '-m module')")


def _run_options(p: argparse.ArgumentParser, *, golden: bool = False) -> None:
    p.add_argument("--backend", help="backend id (default: configured, else local)")
    p.add_argument("--backend-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend option (repeatable); see `runner plugins`")
    p.add_argument("--jobs", "-j", type=int, default=None, help="cases run at once (default: as many as fit)")
    p.add_argument("--results-dir", help="results root (default: runner-results/run-<time>)")
    p.add_argument("--golden-dir", help="golden root (default: golden/)")
    p.add_argument("--environment", default=None, help="Megatron environment in golden file names (default: dev)")
    p.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failing case")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--no-reuse", dest="reuse", action="store_false",
                   help="start fresh ranks for every launch (default: cases of poolable kinds that share a "
                        "shape run one after another in one warm pool of ranks)")
    if not golden:
        p.add_argument("--dry-run", action="store_true", help="print each launch as it would be submitted")


def build_parser(plugins: "object | None" = None) -> argparse.ArgumentParser:
    """The parser; with a loaded PluginManager, reporters' and plugins' options are added to
    ``run`` and ``golden update`` (``runner_addoption``)."""
    parser = _Parser(prog="runner", description="Declarative YAML test specs for distributed training.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    run = sub.add_parser("run", help="run cases and print the verdict table")
    _common(run)
    _run_options(run)
    add_plugin_options(run, plugins)

    lst = sub.add_parser("list", help="list the collected cases")
    _common(lst)

    val = sub.add_parser("validate", help="check spec files (and golden files) without running anything")
    _common(val)
    val.add_argument("--golden-dir", help="golden root (default: golden/)")
    val.add_argument("--environment", default=None, help="golden environment (default: dev)")

    show = sub.add_parser("show", help="show a fully expanded case and its rendered launches")
    show.add_argument("case", metavar="CASE_ID", help="a case id (file::name) or a unique case name")
    _common(show)
    show.add_argument("--backend", help="render launches for this backend (default: local)")
    show.add_argument("--backend-opt", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument("--results-dir", help="results root used in the rendering")

    plg = sub.add_parser("plugins", help="list plugins, backends and case kinds and where they come from")
    _common(plg, paths=False)

    golden = sub.add_parser("golden", help="golden values: update")
    gsub = golden.add_subparsers(dest="golden_command", parser_class=_Parser)
    upd = gsub.add_parser("update", help="run cases and write their golden files for this platform")
    _common(upd)
    _run_options(upd, golden=True)
    upd.add_argument("--only-failing", action="store_true",
                     help="rewrite only goldens whose check failed (or that are missing)")

    cmp_ = sub.add_parser("compare", help="compare a finished run's metrics with a golden file (runs nothing)")
    cmp_.add_argument("golden", metavar="GOLDEN", help="a golden file (Megatron's format)")
    cmp_.add_argument("actual", metavar="ACTUAL",
                      help="a TensorBoard log dir, a metrics JSONL file, or a golden-format JSON file")
    cmp_.add_argument("--model-config", metavar="FILE",
                      help="Megatron's model_config.yaml: METRICS, nondeterministic ENV_VARS, TEST_TYPE")
    cmp_.add_argument("--json", dest="json_out", metavar="FILE", help="write every check to FILE")
    _common(cmp_, paths=False)
    add_plugin_options(upd, plugins)

    sch = sub.add_parser("schema", help="print the JSON Schema of spec files (suite + every kind's args)")
    _common(sch, paths=False)
    sch.add_argument("--output", "-o", metavar="FILE", help="write it to FILE instead of stdout")

    hist = sub.add_parser("history", help="a case's recent verdicts and metric drift (from the local history)")
    hist.add_argument("case", metavar="CASE", help="a case id (file::name), a case name, or the end of one")
    hist.add_argument("--limit", "-n", type=int, default=20, help="how many runs (default: 20)")
    hist.add_argument("--store", metavar="FILE", help="the history file (default: .runner/history.sqlite)")
    _common(hist, paths=False)
    return parser
