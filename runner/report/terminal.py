"""Live progress and the final verdict table."""
from __future__ import annotations

import shutil
import sys
import time
from typing import Sequence, TextIO

from tabulate import tabulate

from runner.records import CaseResult, Verdict

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


class TerminalReporter:
    def __init__(self, out: TextIO | None = None, *, verbose: int = 0, color: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.color = self.tty if color is None else color
        self.verbose = verbose
        self._bar_shown = False
        self.started = time.monotonic()

    def _c(self, verdict: Verdict, text: str) -> str:
        return f"\x1b[{_COLORS[verdict]}m{text}\x1b[0m" if self.color else text

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.out.write("\r\x1b[2K")
            self._bar_shown = False

    def progress(self, done: int, running: int, total: int) -> None:
        if not self.tty or total == 0:
            return
        width = max(10, min(40, shutil.get_terminal_size((80, 20)).columns - 40))
        filled = int(width * done / total)
        bar = "#" * filled + "-" * (width - filled)
        elapsed = _fmt_duration(time.monotonic() - self.started)
        self.out.write(f"\r\x1b[2K[{bar}] {done}/{total} done, {running} running, {elapsed}")
        self.out.flush()
        self._bar_shown = True

    def case_result(self, result: CaseResult) -> None:
        self._clear_bar()
        line = f"{self._c(result.verdict, result.verdict.value):<8} {result.case.id} ({_fmt_duration(result.duration)})"
        if result.detail and (result.verdict is not Verdict.PASSED or self.verbose):
            line += f" - {result.detail}"
        self.out.write(line + "\n")
        if result.verdict in (Verdict.ERROR,) and self.verbose:
            for o in result.launches:
                if o.log_tail:
                    self.out.write("    | " + o.log_tail.replace("\n", "\n    | ") + "\n")
        self.out.flush()

    def line(self, text: str) -> None:
        self._clear_bar()
        self.out.write(text + "\n")
        self.out.flush()

    def table(self, results: Sequence[CaseResult], *, detail_width: int = 110) -> None:
        self._clear_bar()
        if not results:
            return
        rows = []
        for r in results:
            detail = r.detail.replace("\n", " ")
            if len(detail) > detail_width:
                detail = detail[: detail_width - 3] + "..."
            rows.append([r.case.id, r.case.kind, r.backend, self._c(r.verdict, r.verdict.value),
                         _fmt_duration(r.duration), detail])
        self.out.write("\n" + tabulate(rows, headers=["case", "kind", "backend", "verdict", "duration", "detail"],
                                       tablefmt="simple") + "\n")
        self.out.flush()

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
        self.out.write("\n" + line + "\n")
        self.out.flush()
        return text
