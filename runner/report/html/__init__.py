"""The ``html`` reporter: ``--html FILE`` writes one self-contained page (see docs/reports.md).

Plots are drawn with matplotlib (the ``html`` extra) as inline SVG; without matplotlib,
``--html`` is a usage error that says what to install.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from runner.errors import UsageError
from runner.hookspecs import hookimpl
from runner.records import CaseResult
from runner.report.base import Reporter, SessionSummary

if TYPE_CHECKING:
    from runner.run.session import Session

INSTALL_HINT = "pip install 'dist-spec-runner[html]'"


class HTMLReporter(Reporter):
    id = "html"
    description = "--html FILE: one self-contained page: verdicts, metric curves vs golden, tensor diffs, logs"

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--html", dest="html_path", metavar="FILE",
                            help="write an HTML report with plots (needs matplotlib: the 'html' extra)")

    @classmethod
    def create(cls, ns: argparse.Namespace, session: "Session") -> "HTMLReporter | None":
        path = getattr(ns, "html_path", None)
        if not path or getattr(ns, "dry_run", False):
            return None
        try:
            import matplotlib  # noqa: F401  (only: is it there?)
        except ImportError:
            raise UsageError(f"--html needs matplotlib, which is not installed: {INSTALL_HINT}") from None
        return cls(Path(path))

    def session_finish(self, session: "Session", results: Sequence[CaseResult], summary: SessionSummary) -> None:
        write_html(self.path, session, results, summary)


def write_html(path: Path, session: "Session", results: Sequence[CaseResult], summary: SessionSummary) -> None:
    from runner.report.html.collect import case_view
    from runner.report.html.page import render_page
    from runner.report.html.plots import heatmap_svg, metric_svg
    from runner.results import write_bytes_atomic

    views = [case_view(session, r) for r in results]
    text = render_page(views, summary, metric_svg=metric_svg, heatmap_svg=heatmap_svg)
    try:
        write_bytes_atomic(Path(path), text.encode())
        Path(path).chmod(0o644)
    except OSError as exc:
        raise UsageError(f"cannot write report {path}: {exc.strerror or exc}") from None


@hookimpl
def runner_register_reporters(registry: Any) -> None:
    registry.add(HTMLReporter)
