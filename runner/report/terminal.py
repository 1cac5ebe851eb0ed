"""Live progress and the final verdict table (the ``terminal`` reporter).

On a terminal a live display (rich) shows a progress bar and each running case with its
launch and elapsed time; finished cases scroll above it, one line each. When the output is
not a terminal, or ``CI`` is set, or ``--progress plain``: the same one line per finished
case and nothing else, so CI logs stay readable.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Sequence, TextIO

from tabulate import tabulate

from runner.hookspecs import hookimpl
from runner.records import Case, CaseResult, Launch, LaunchOutcome, Verdict
from runner.report.base import Reporter, SessionSummary

if TYPE_CHECKING:
    from runner.run.session import Session

_COLORS = {
    Verdict.PASSED: "32", Verdict.XFAIL: "33", Verdict.SKIPPED: "33", Verdict.FAILED: "31",
    Verdict.ERROR: "31", Verdict.TIMEOUT: "31", Verdict.INFRA: "35", Verdict.XPASS: "31",
    Verdict.INTERRUPTED: "33",
}
ORDER = [Verdict.FAILED, Verdict.ERROR, Verdict.TIMEOUT, Verdict.INFRA, Verdict.XPASS, Verdict.PASSED,
         Verdict.XFAIL, Verdict.SKIPPED, Verdict.INTERRUPTED]


def _fmt_duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(s), 60)
    return f"{m}m{s:02d}s"


class _Live:
    """The rich live display: a progress bar and the running cases."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=out, force_terminal=True)
        self.running: dict[str, tuple[str, float]] = {}   # case id -> (launch name, started)
        self.done = self.total = 0
        self.started = time.monotonic()
        self.live = Live(console=self.console, refresh_per_second=4, transient=True, get_renderable=self.render)
        self.live.start()

    def render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        head = Table.grid(padding=(0, 1))
        head.add_row(ProgressBar(total=max(self.total, 1), completed=self.done, width=40),
                     Text(f"{self.done}/{self.total} done, {len(self.running)} running, "
                          f"{_fmt_duration(now - self.started)}"))
        rows = Table.grid(padding=(0, 2))
        for case_id, (launch, since) in list(self.running.items())[:20]:
            rows.add_row(Text("RUNNING", style="cyan"), Text(case_id), Text(f"[{launch}]", style="dim"),
                         Text(_fmt_duration(now - since)))
        return Group(head, rows)

    def print(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text.from_ansi(text), soft_wrap=True)

    def stop(self) -> None:
        self.live.stop()


class TerminalReporter(Reporter):
    id = "terminal"
    description = "live progress on a terminal (plain lines otherwise), the verdict table, the summary"

    def __init__(self, out: TextIO | None = None, *, verbose: int = 0, color: bool | None = None,
                 live: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.color = self.tty if color is None else color
        self.verbose = verbose
        self.want_live = (self.tty and not os.environ.get("CI")) if live is None else live
        self._live: _Live | None = None

    # -- plugin side ----------------------------------------------------------------------------
    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--progress", choices=["auto", "live", "plain"], default="auto",
                            help="live per-case status (a terminal), plain lines (logs); default: auto")

    @classmethod
    def create(cls, ns: argparse.Namespace, session: "Session") -> "TerminalReporter":
        mode = getattr(ns, "progress", "auto")
        live = None if mode == "auto" else mode == "live"
        return cls(verbose=getattr(ns, "verbose", 0), live=live)

    # hook implementations: the instance registers itself to hear about launches
    @hookimpl
    def runner_launch_started(self, launch: Launch, attempt: int) -> None:
        if self._live is not None:
            name = launch.name if attempt == 1 else f"{launch.name}, attempt {attempt}"
            self._live.running[launch.case_id] = (name, time.monotonic())

    @hookimpl
    def runner_launch_finished(self, outcome: LaunchOutcome) -> None:
        if self._live is not None:
            self._live.running.pop(outcome.launch.case_id, None)

    # -- reporter -------------------------------------------------------------------------------
    def session_start(self, session: "Session", cases: Sequence[Case]) -> None:
        if self.want_live and not session.options.dry_run:
            session.plugins.pm.register(self, name=f"terminal-live-{id(self)}")
            self._live = _Live(self.out)
            self._live.total = len(cases)

    def _c(self, verdict: Verdict, text: str) -> str:
        return f"\x1b[{_COLORS[verdict]}m{text}\x1b[0m" if self.color else text

    def _write(self, text: str) -> None:
        if self._live is not None:
            self._live.print(text.rstrip("\n"))
        else:
            self.out.write(text if text.endswith("\n") else text + "\n")
            self.out.flush()

    def progress(self, done: int, running: int, total: int) -> None:
        if self._live is not None:
            self._live.done, self._live.total = done, total

    def case_result(self, result: CaseResult) -> None:
        if self._live is not None:
            self._live.running.pop(result.case.id, None)
        line = f"{self._c(result.verdict, result.verdict.value):<8} {result.case.id} ({_fmt_duration(result.duration)})"
        if result.detail and (result.verdict is not Verdict.PASSED or self.verbose):
            line += f" - {result.detail}"
        if result.verdict in (Verdict.ERROR,) and self.verbose:
            for o in result.launches:
                if o.log_tail:
                    line += "\n    | " + o.log_tail.replace("\n", "\n    | ")
        self._write(line)

    def line(self, text: str) -> None:
        self._write(text)

    def session_finish(self, session: "Session", results: Sequence[CaseResult], summary: SessionSummary) -> None:
        self.close()
        self.table(results)
        self.summary(results, summary.duration)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def table(self, results: Sequence[CaseResult], *, detail_width: int = 110) -> None:
        if not results:
            return
        rows = []
        for r in results:
            detail = r.detail.replace("\n", " ")
            if len(detail) > detail_width:
                detail = detail[: detail_width - 3] + "..."
            rows.append([r.case.id, r.case.kind, r.backend, self._c(r.verdict, r.verdict.value),
                         _fmt_duration(r.duration), detail])
        self._write("\n" + tabulate(rows, headers=["case", "kind", "backend", "verdict", "duration", "detail"],
                                    tablefmt="simple"))

    def summary(self, results: Sequence[CaseResult], elapsed: float) -> str:
        counts = {v: 0 for v in ORDER}
        for r in results:
            counts[r.verdict] += 1
        parts = [f"{n} {v.value.lower()}" for v, n in counts.items() if n]
        text = ", ".join(parts) if parts else "no cases ran"
        line = f"== {text} in {_fmt_duration(elapsed)} =="
        worst = next((v for v in ORDER if counts[v] and v.is_failure), None)
        if worst is not None:
            line = self._c(worst, line)
        elif counts[Verdict.PASSED] and self.color:
            line = self._c(Verdict.PASSED, line)
        self._write("\n" + line)
        return text


@hookimpl
def runner_register_reporters(registry: Any) -> None:
    registry.add(TerminalReporter)
