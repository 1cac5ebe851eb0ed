"""The case-kind contract: what a kind of test is, how it runs, what it compares.

A case kind never knows backends. Its module must import without torch (the CLI lists,
validates and dry-runs without it); heavy code lives behind ``entry`` and is imported only
inside ranks, and ``compare`` imports torch lazily when it loads captures.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from runner.records import Case, CheckResult, LaunchOutcome


@dataclass(frozen=True)
class LaunchPlan:
    """One launch as a kind plans it; the runner adds resources, env, paths and job names."""

    name: str                                  # "main", "run1", "run2", ...
    entry: str                                 # "module:function" run in every rank
    args: Mapping[str, Any] = field(default_factory=dict)


class CaseKind(abc.ABC):
    #: static id used as ``kind:`` in specs
    id: ClassVar[str]
    description: ClassVar[str] = ""
    #: JSON Schema (draft 2020-12) of the case's ``args``; unknown args are rejected
    args_schema: ClassVar[Mapping[str, Any]] = {"type": "object"}
    #: True when cases of this kind compare with golden values (the runner then checks, at
    #: collection, that each case's golden file exists and parses)
    uses_golden: ClassVar[bool] = False

    def validate(self, case: Case) -> None:
        """Semantic checks beyond the schema; raise runner.errors.CaseError(key, message)."""

    @abc.abstractmethod
    def plan(self, case: Case) -> Sequence[LaunchPlan]:
        """The launches of one case, run in order (a later one may read an earlier one's dir)."""

    @abc.abstractmethod
    def compare(self, case: Case, outcomes: Sequence[LaunchOutcome], ctx: "CompareContext") -> Sequence[CheckResult]:
        """Checks over the finished launches' results dirs (all COMPLETED)."""

    def case_uses_golden(self, case: Case) -> bool:
        """Whether this case compares with golden values (default: the kind's ``uses_golden``)."""
        return self.uses_golden

    def expected_steps(self, case: Case) -> tuple[int, int] | None:
        """First and last step the case will log (checked against the golden's range), or None."""
        return None

    def golden_metrics(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Mapping[str, Mapping[int, float]] | None:
        """The metrics ``runner golden update`` records for this case (metric -> step -> value),
        or None when the kind has no golden values."""
        return None

    def info(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Mapping[str, Any]:
        """Extra facts for the report (e.g. the overlapped/reference time ratio)."""
        return {}

    def describe(self, case: Case) -> Sequence[str]:
        """Lines ``runner show`` prints about the case besides its JSON (e.g. resolved functions)."""
        return ()


@dataclass(frozen=True)
class CompareContext:
    """What compare() may use besides the results dirs."""

    golden_root: Path                          # the project's golden/ directory
    platform: str
    environment: str = "dev"
    allow_missing_golden: bool = False         # True under `runner golden update`
