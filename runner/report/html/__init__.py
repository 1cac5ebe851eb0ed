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
from runner.report.base import SessionSummary
from runner.report.files import FileReporter, write_report

if TYPE_CHECKING:
    from runner.run.session import Session

INSTALL_HINT = "pip install 'dist-spec-runner[html]'"


class HTMLReporter(FileReporter):
    id = "html"
    description = "--html FILE: one self-contained page: verdicts, metric curves vs golden, tensor diffs, logs"
    option, dest = "--html", "html_path"
    help = "write an HTML report with plots (needs matplotlib: the 'html' extra)"

    @classmethod
    def wanted(cls, ns: argparse.Namespace) -> bool:
        if getattr(ns, "dry_run", False):
            return False
        try:
            import matplotlib  # noqa: F401  (only: is it there?)
        except ImportError:
            raise UsageError(f"--html needs matplotlib, which is not installed: {INSTALL_HINT}") from None
        return True

    def write(self, session: "Session", results: Sequence[CaseResult], summary: SessionSummary) -> None:
        write_html(Path(self.path), session, results, summary)


def write_html(path: Path, session: "Session", results: Sequence[CaseResult], summary: SessionSummary) -> None:
    from runner.report.html.collect import case_view
    from runner.report.html.page import render_page
    from runner.report.html.plots import heatmap_svg, metric_svg

    views = [case_view(session, r) for r in results]
    text = render_page(views, summary, metric_svg=metric_svg, heatmap_svg=heatmap_svg)
    write_report(Path(path), text)
    try:
        Path(path).chmod(0o644)
    except OSError as exc:
        raise UsageError(f"cannot write report {path}: {exc.strerror or exc}") from None


@hookimpl
def runner_register_reporters(registry: Any) -> None:
    registry.add(HTMLReporter)
