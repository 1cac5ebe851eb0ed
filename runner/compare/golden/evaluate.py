"""A run's metrics against a golden file (or run 2 against run 1): which metrics, which checks.

Megatron's semantics: with a selection (``compare.select``, Megatron's ``METRICS``) exactly
those metrics are checked and each must be in the golden and in the run; without one every
metric of the golden is checked and must be in the run. An empty golden series fails. Exact
checks are skipped (reported as skipped) when the case allows nondeterminism.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

from runner.compare.golden.files import GoldenFile, GoldenSeries
from runner.compare.golden.rules import CompareOptions
from runner.records import CheckResult

Metrics = Mapping[str, Mapping[int, float]]


def builtin_checks() -> dict[str, Any]:
    from runner.compare.checks import BUILTIN_CHECKS

    return {c.id: c for c in BUILTIN_CHECKS}


def check_metrics(golden: GoldenFile, actual: Metrics, options: CompareOptions | None = None, *,
                  checks: Mapping[str, Any] | None = None, label: str = "golden",
                  decimals: int | None | Literal["auto"] = "auto") -> list[CheckResult]:
    from runner.compare.checks import MetricJob

    options = options or CompareOptions()
    checks = checks if checks is not None else builtin_checks()
    dec = golden.decimals if isinstance(decimals, str) else decimals   # "auto": the file's own
    out: list[CheckResult] = []
    for name in options.metrics_to_check(list(golden.metrics)):
        rule = options.rule(name, full_precision=golden.full_precision)
        if rule.skip:
            out.append(CheckResult(f"{label}:{name}", True, "skipped by the case's compare options", skipped=True))
            continue
        series = golden.metrics.get(name)
        if series is None:
            out.append(CheckResult(f"{label}:{name}", False, f"{name}: selected for comparison but not in "
                                                               f"{golden.path.name}"))
            continue
        run = actual.get(name)
        if run is None:
            out.append(CheckResult(f"{label}:{name}", False,
                                   f"{name}: {'selected' if options.select is not None else 'listed in ' + golden.path.name}"
                                   f" but missing from the run"))
            continue
        if len(series) == 0:
            out.append(CheckResult(f"{label}:{name}", False, f"{name}: the golden series has no values"))
            continue
        job = MetricJob(name, series, run, rule, dec, label, golden, actual)
        for check_id in rule.checks:
            cls = checks.get(check_id)
            if cls is None:
                out.append(CheckResult(f"{label}:{name}:{check_id}", False, f"{name}: unknown check '{check_id}'"))
                continue
            if cls.exact and not options.deterministic:
                out.append(CheckResult(f"{label}:{name}:{check_id}", True, "nondeterministic run: exact check skipped",
                                       skipped=True))
                continue
            out.append(cls().run(job))
    return out


def series_agreement(reference: Metrics, candidate: Metrics, metrics: Sequence[str], after_step: int, *,
                     deterministic: bool = True, decimals: int | None = None, rtol: float = 0.05,
                     label: str = "resume") -> list[CheckResult]:
    """Run 2 against run 1 on the steps after ``after_step`` (Megatron's resume test), with run
    1's series as the golden: exact (``resume:<metric>:deterministic``; skipped when the case is
    nondeterministic) and approximate (``resume:<metric>:approximate``)."""
    from runner.compare.checks import Approximate, Deterministic, MetricJob
    from runner.compare.golden.rules import Rule

    out: list[CheckResult] = []
    for name in metrics:
        ref = {s: (v if decimals is None else round(v, decimals))
               for s, v in (reference.get(name) or {}).items() if s > after_step}
        if not ref:
            out.append(CheckResult(f"{label}:{name}", False, f"{name}: the reference run logged no step after {after_step}"))
            continue
        series = GoldenSeries.from_mapping(dict(sorted(ref.items())))
        run = candidate.get(name) or {}
        job = MetricJob(name, series, run, Rule(("approximate",), rtol=rtol), decimals, label)
        if deterministic:
            out.append(Deterministic().run(job))
        out.append(Approximate().run(job))
    return out
