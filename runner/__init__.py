"""dist-spec-runner: declarative YAML test specs for distributed training.

The public API: what plugins (backends, case kinds) and users import. Everything else under
``runner`` is internal and may change. The architecture and the plugin contract are
described in docs/architecture.md.

The names are loaded on first use (PEP 562): every rank runs ``python -m runner.worker``,
which imports this package first, and a rank needs none of pluggy, the hook specs or the
backend contract.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: each public name -> the module that defines it
_WHERE = {
    **dict.fromkeys(("CaseError", "SpecError", "UsageError"), "runner.errors"),
    **dict.fromkeys(("hookimpl", "hookspec"), "runner.hookspecs"),
    **dict.fromkeys(("CaseKind", "CompareContext", "LaunchPlan"), "runner.plan.kind"),
    **dict.fromkeys(("Case", "CaseResult", "CheckResult", "Launch", "LaunchOutcome", "Outcome", "Resources",
                     "Verdict"), "runner.records"),
    **dict.fromkeys(("Backend", "BackendOption", "Capacity", "Handle", "JobState", "Rendered", "job_name",
                     "outcome_from_records"), "runner.run.backend"),
    "WorkerContext": "runner.worker.context",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
