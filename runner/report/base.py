"""The reporter contract: what a report plugin implements.

A reporter is a class registered with ``runner_register_reporters(registry)``. Its
``add_options`` adds its own command-line options to ``runner run`` (and ``runner golden
update``); ``create`` looks at the parsed options and returns an instance when the reporter
is wanted (``--html FILE`` given, say) or None. The instance then hears about the session as
it goes: ``session_start`` with the collected cases, ``progress`` and ``case_result`` while
cases run, ``line`` for the runner's own messages, ``session_finish`` with every result.

The terminal, JSON, JUnit XML and HTML reporters are built this way (``runner/report/``),
exactly as a third-party package would write one.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from runner.records import Case, CaseResult

if TYPE_CHECKING:
    from runner.run.session import Session


@dataclass(frozen=True)
class SessionSummary:
    """What a finished session hands its reporters besides the results."""

    platform: str
    backend: str
    results_dir: str
    duration: float
    exit_code: int
    interrupted: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"platform": self.platform, "backend": self.backend, "results_dir": self.results_dir,
                "duration": round(self.duration, 3), "exit_code": self.exit_code, **dict(self.extra)}


class Reporter:
    #: static id (``runner plugins`` lists it; ``-p no:<plugin>`` blocks its plugin)
    id: ClassVar[str]
    description: ClassVar[str] = ""

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        """Add this reporter's command-line options (called before the command line is parsed)."""

    @classmethod
    def create(cls, ns: argparse.Namespace, session: "Session") -> "Reporter | None":
        """An instance when the options ask for this report, else None."""
        return None

    def session_start(self, session: "Session", cases: Sequence[Case]) -> None:
        """Cases are collected and about to run."""

    def line(self, text: str) -> None:
        """A message of the runner for the user (only interactive reporters show it)."""

    def progress(self, done: int, running: int, total: int) -> None:
        """Called as cases start and finish."""

    def annotate(self, result: CaseResult) -> CaseResult:
        """A chance to add to a result before any reporter sees it (the history reporter says
        whether a failing case passed before); return it unchanged by default."""
        return result

    def case_result(self, result: CaseResult) -> None:
        """A case has its verdict."""

    def session_finish(self, session: "Session", results: Sequence[CaseResult], summary: SessionSummary) -> None:
        """Every case is done (or the session was interrupted): write the report."""

    def close(self) -> None:
        """The session ends abnormally (an exception): release terminals and files."""


class ReporterSet(Reporter):
    """The reporters of one session, called in registration order."""

    id = "all"

    def __init__(self, reporters: Sequence[Reporter]) -> None:
        self.reporters = list(reporters)
        self._annotated: dict[str, CaseResult] = {}

    @classmethod
    def from_registry(cls, registry: Any, ns: argparse.Namespace, session: "Session") -> "ReporterSet":
        made = (reg.cls.create(ns, session) for reg in registry.items())
        return cls([r for r in made if r is not None])

    def session_start(self, session: "Session", cases: Sequence[Case]) -> None:
        for r in self.reporters:
            r.session_start(session, cases)

    def line(self, text: str) -> None:
        for r in self.reporters:
            r.line(text)

    def progress(self, done: int, running: int, total: int) -> None:
        for r in self.reporters:
            r.progress(done, running, total)

    def annotate(self, result: CaseResult) -> CaseResult:
        for r in self.reporters:
            result = r.annotate(result)
        return result

    def case_result(self, result: CaseResult) -> None:
        result = self._annotated[result.case.id] = self.annotate(result)
        for r in self.reporters:
            r.case_result(result)

    def annotated(self, results: Sequence[CaseResult]) -> list[CaseResult]:
        """The session's results as the reporters saw them (annotations included)."""
        return [self._annotated.get(r.case.id, r) for r in results]

    def close(self) -> None:
        for r in self.reporters:
            r.close()

    def session_finish(self, session: "Session", results: Sequence[CaseResult], summary: SessionSummary) -> None:
        for r in self.reporters:
            r.session_finish(session, results, summary)
