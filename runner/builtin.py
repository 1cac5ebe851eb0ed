"""The runner's own hook implementations (registered first, before entry points)."""
from __future__ import annotations

from typing import Sequence

from runner.hookspecs import hookimpl
from runner.records import Case, LaunchOutcome, Outcome


@hookimpl(trylast=True)
def runner_should_retry(case: Case, outcome: LaunchOutcome, attempt: int) -> bool:
    """INFRA failures are retried while attempts <= retries; nothing else is."""
    return outcome.outcome is Outcome.INFRA and attempt <= case.retries


@hookimpl(trylast=True)
def runner_plan_launches(case: Case) -> Sequence | None:
    return None  # the session asks the case's kind
