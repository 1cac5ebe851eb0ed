"""From launch outcomes and checks to one verdict per case.

Checks come from the case kind's ``compare`` and from the comparison stage
(``runner.compare.stage``) running what the kind declares in ``comparisons``.
"""
from __future__ import annotations

import traceback
from typing import Any, Mapping, Sequence

from runner.errors import UsageError
from runner.records import Case, CaseResult, CheckResult, LaunchOutcome, Outcome, Verdict

_OUTCOME_VERDICT = {
    Outcome.ERROR: Verdict.ERROR,
    Outcome.TIMEOUT: Verdict.TIMEOUT,
    Outcome.INFRA: Verdict.INFRA,
    Outcome.INTERRUPTED: Verdict.INTERRUPTED,
}


def decide(session: Any, case: Case, outcomes: Sequence[LaunchOutcome], *, backend: str,
           duration: float) -> CaseResult:
    kind = session.plugins.kind(case.kind)
    bad = next((o for o in outcomes if o.outcome is not Outcome.COMPLETED), None)
    if bad is not None:
        verdict = _OUTCOME_VERDICT[bad.outcome]
        detail = f"{bad.launch.name}: {bad.detail}" if len(outcomes) > 1 or bad.launch.name != "main" else bad.detail
        return _xfail(CaseResult(case, verdict, detail, duration, backend, tuple(outcomes)))
    checks: list[CheckResult] = []
    try:
        from runner.compare.stage import compare_case

        checks.extend(compare_case(kind, case, outcomes, session.compare_context(case),
                                   session.plugins.checks.as_mapping()))
        for extra in session.plugins.hook.runner_case_checks(case=case, outcomes=outcomes):
            checks.extend(extra or [])
    except UsageError as exc:
        return _xfail(CaseResult(case, Verdict.ERROR, f"comparison: {exc}", duration, backend, tuple(outcomes)))
    except Exception as exc:  # noqa: BLE001 - a kind's compare bug is this case's error, not a crash
        tb = traceback.format_exc(limit=3)
        return _xfail(CaseResult(case, Verdict.ERROR, f"comparison raised {type(exc).__name__}: {exc}",
                                 duration, backend, tuple(outcomes), info={"traceback": tb}))
    info: dict[str, Any] = {}
    try:
        info = dict(kind.info(case, outcomes))
    except Exception as exc:  # noqa: BLE001
        info = {"info_error": f"{type(exc).__name__}: {exc}"}
    failed = [c for c in checks if not c.passed]
    if not checks:
        verdict, detail = Verdict.ERROR, "the case kind made no checks"
    elif all(c.skipped for c in checks):   # e.g. the ranks found the case cannot run here
        return CaseResult(case, Verdict.SKIPPED, checks[0].detail or checks[0].name, duration, backend,
                          tuple(outcomes), tuple(checks), info)
    elif failed:
        verdict, detail = Verdict.FAILED, failed[0].detail or failed[0].name
        if len(failed) > 1:
            detail += f" (+{len(failed) - 1} more failed check{'s' if len(failed) > 2 else ''})"
    else:
        verdict, detail = Verdict.PASSED, passed_detail(info, checks)
    return _xfail(CaseResult(case, verdict, detail, duration, backend, tuple(outcomes), tuple(checks), info))


def passed_detail(info: Mapping[str, Any], checks: Sequence[CheckResult]) -> str:
    """A passed case's detail: the kind's summary, and every check that could not judge (said why)."""
    not_judged = [c.detail for c in checks if c.skipped and c.data.get("inconclusive")]
    return "; ".join(d for d in (str(info.get("summary", "")), *not_judged) if d)


def _xfail(result: CaseResult) -> CaseResult:
    case = result.case
    if not case.xfail:
        return result
    if result.verdict in (Verdict.FAILED, Verdict.ERROR):
        return CaseResult(case, Verdict.XFAIL, f"{case.xfail}: {result.detail}", result.duration, result.backend,
                          result.launches, result.checks, result.info)
    if result.verdict is Verdict.PASSED:
        return CaseResult(case, Verdict.XPASS, f"expected to fail ({case.xfail}) but passed", result.duration,
                          result.backend, result.launches, result.checks, result.info)
    return result


def skipped(case: Case, reason: str, backend: str) -> CaseResult:
    return CaseResult(case, Verdict.SKIPPED, reason, 0.0, backend)
