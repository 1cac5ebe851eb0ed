"""A third-party metric check: ``final`` — the run's value at the golden's last step must be
within ``rtol`` of the golden's (numpy.isclose, relative to the golden)."""
from __future__ import annotations

import math

from runner.compare.checks import MetricCheck, MetricJob
from runner.records import CheckResult


class FinalValue(MetricCheck):
    id = "final"
    description = "the value at the golden's last step, within rtol of the golden's"

    def run(self, job: MetricJob) -> CheckResult:
        al = job.aligned
        last = int(al.steps.argmax())
        expected, actual = float(al.expected[last]), float(al.actual[last])
        close = abs(actual - expected) <= job.rule.atol + job.rule.rtol * abs(expected)
        detail = "" if close else (f"{job.metric} final: step {int(al.steps[last])}: expected {expected!r}, got "
                                   f"{'missing' if math.isinf(actual) else repr(actual)} (rtol {job.rule.rtol:g})")
        return CheckResult(f"{job.name}:{self.id}", close, detail,
                           data={"step": int(al.steps[last]), "expected": expected, "actual": actual})
