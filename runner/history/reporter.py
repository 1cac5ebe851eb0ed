"""The ``history`` reporter: appends every case's record to the history store, and tells, in a
failing golden case's detail, whether the case passed before on this platform.

``--history FILE`` picks the store (default ``<project>/.runner/history.sqlite``);
``--no-history`` records nothing.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from runner.history.store import (DEFAULT_PATH, HistoryStore, RunRecord, file_hash, fingerprint_hash,
                                  git_revision, metric_figures)
from runner.hookspecs import hookimpl
from runner.records import CaseResult, Verdict
from runner.report.base import Reporter, SessionSummary

if TYPE_CHECKING:
    from runner.run.session import Session


def store_path(session: "Session", explicit: str | None = None) -> Path:
    path = Path(explicit or DEFAULT_PATH)
    return path if path.is_absolute() else session.root / path


class HistoryReporter(Reporter):
    id = "history"
    description = "appends each case's verdict and key figures to .runner/history.sqlite (`runner history CASE`)"

    def __init__(self, session: "Session", path: Path) -> None:
        from runner.platforms import fingerprint

        self.store = HistoryStore(path)
        self.session = session
        self.fingerprint = fingerprint(session.platform)
        self.fp_hash = fingerprint_hash(self.fingerprint)
        self.git_rev = git_revision(session.root)
        self.started = time.time()
        self._golden: dict[str, str | None] = {}

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--history", dest="history_path", metavar="FILE",
                            help="the run history (default: .runner/history.sqlite in the project)")
        parser.add_argument("--no-history", action="store_true", help="do not record this run in the history")

    @classmethod
    def create(cls, ns: argparse.Namespace, session: "Session") -> "HistoryReporter | None":
        if getattr(ns, "no_history", False) or getattr(ns, "dry_run", False):
            return None
        return cls(session, store_path(session, getattr(ns, "history_path", None)))

    def golden_hash(self, result: CaseResult) -> str | None:
        case = result.case
        if case.id not in self._golden:
            digest = None
            try:
                from runner.compare.golden import golden_path_for

                if self.session.plugins.kind(case.kind).case_uses_golden(case):
                    digest = file_hash(golden_path_for(case, self.session.golden_root,
                                                       self.session.environment_for(case)))
            except Exception:  # noqa: BLE001 - the history never fails a run
                digest = None
            self._golden[case.id] = digest
        return self._golden[case.id]

    def annotate(self, result: CaseResult) -> CaseResult:
        if result.verdict is not Verdict.FAILED:
            return result
        if not any(c.name.startswith("golden") and not c.passed for c in result.checks):
            return result
        try:
            note = self.verdict_note(result)
        except (sqlite3.Error, OSError) as exc:
            note = f"history unavailable: {exc}"
        return replace(result, detail=f"{result.detail} [history: {note}]",
                       info={**dict(result.info), "history": note})

    def verdict_note(self, result: CaseResult) -> str:
        """Stale golden or regression: what the history of this case on this platform says."""
        earlier = [r for r in self.store.runs(result.case.id, limit=200, before=self.started)
                   if r.fingerprint_hash == self.fp_hash]
        if not earlier:
            return "no earlier run on this platform"
        golden = self.golden_hash(result)
        passes = [r for r in earlier if r.verdict == Verdict.PASSED.value]
        same = [r for r in passes if r.golden_hash == golden]
        if same:
            last = same[0]
            return (f"PASSED on this platform with this golden file before (last {_when(last.at)}"
                    f"{', rev ' + last.git_rev if last.git_rev else ''}): a regression since then")
        if passes:
            return (f"PASSED on this platform before ({_when(passes[0].at)}) but against a different golden file: "
                    "the golden changed since")
        return (f"never passed on this platform ({len(earlier)} earlier run{'s' if len(earlier) != 1 else ''}): "
                "the golden may be stale or recorded elsewhere")

    def session_finish(self, session: "Session", results: Sequence[CaseResult], summary: SessionSummary) -> None:
        try:
            self.store.append([self.record(r, summary) for r in results])
        except (sqlite3.Error, OSError) as exc:  # the history never fails a run
            print(f"warning: the run was not recorded in the history {self.store.path}: {exc}", file=sys.stderr)

    def record(self, result: CaseResult, summary: SessionSummary) -> RunRecord:
        from runner.results import ResultsDir

        metrics: dict[str, Any] = {}
        for o in result.launches:
            found = ResultsDir(o.launch.results_dir).metrics()
            if found:
                metrics = metric_figures(found)
                break
        info = {k: v for k, v in result.info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return RunRecord(at=self.started, session=summary.results_dir, case_id=result.case.id,
                         case_name=result.case.name, kind=result.case.kind, platform=self.session.platform,
                         fingerprint_hash=self.fp_hash, fingerprint=self.fingerprint, git_rev=self.git_rev,
                         verdict=result.verdict.value, duration=round(result.duration, 3), detail=result.detail[:500],
                         golden_hash=self.golden_hash(result), figures={"metrics": metrics, "info": info})


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


@hookimpl
def runner_register_reporters(registry: Any) -> None:
    registry.add(HistoryReporter)
