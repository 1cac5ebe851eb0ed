"""dist-spec-runner: declarative YAML test specs for distributed training.

The public API: what plugins (backends, case kinds) and users import. Everything else under
``runner`` is internal and may change. The architecture and the plugin contract are
described in docs/architecture.md.
"""
from __future__ import annotations

from runner.errors import CaseError, SpecError, UsageError
from runner.hookspecs import hookimpl, hookspec
from runner.plan.kind import CaseKind, CompareContext, LaunchPlan
from runner.records import (
    Case,
    CaseResult,
    CheckResult,
    Launch,
    LaunchOutcome,
    Outcome,
    Resources,
    Verdict,
)
from runner.run.backend import (
    Backend,
    BackendOption,
    Capacity,
    Handle,
    JobState,
    Rendered,
    job_name,
    outcome_from_records,
)
from runner.worker.context import WorkerContext

__all__ = [
    "Backend",
    "BackendOption",
    "Capacity",
    "Case",
    "CaseError",
    "CaseKind",
    "CaseResult",
    "CheckResult",
    "CompareContext",
    "Handle",
    "JobState",
    "Launch",
    "LaunchOutcome",
    "LaunchPlan",
    "Outcome",
    "Rendered",
    "Resources",
    "SpecError",
    "UsageError",
    "Verdict",
    "WorkerContext",
    "hookimpl",
    "hookspec",
    "job_name",
    "outcome_from_records",
]
