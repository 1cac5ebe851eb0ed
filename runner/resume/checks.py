"""The checks of a case with golden values and (optionally) a resume test.

The only place these kinds call the golden comparison: ``golden_stage`` (run vs golden) and
``resume_stage`` (run 2 vs run 1 after the resume iteration, with the same rules as a golden
comparison: run 1's series plays the golden). Kinds call nothing else in runner.compare.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from runner.records import Case, CheckResult

#: what a resume test compares when the case selects nothing (Megatron's default METRICS)
DEFAULT_METRICS = ("lm loss", "num-zeros")

Metrics = Mapping[str, Mapping[int, float]]


def selected_metrics(case: Case, default: Iterable[str] = DEFAULT_METRICS) -> list[str]:
    """``compare.select`` when the case has it, else ``default``."""
    select = (case.compare or {}).get("select")
    return [str(m) for m in select] if select else list(default)


def deterministic(case: Case) -> bool:
    return bool((case.compare or {}).get("deterministic", True))


def golden_stage(case: Case, metrics: Metrics, ctx: Any) -> list[CheckResult]:
    """Run vs the case's golden file (the golden rules; ``compare.select`` restricts the
    metrics compared, each selected one must be in the run)."""
    from runner.compare.golden import golden_checks

    select = (case.compare or {}).get("select")
    if not select:
        return golden_checks(case, metrics, ctx)
    missing = [m for m in select if m not in metrics]
    out = [CheckResult(f"golden:{m}", False, f"{m}: selected by the case but missing from the run")
           for m in missing]
    out.extend(c for c in golden_checks(case, metrics, ctx)
               if c.name == "golden" or c.name.split(":")[1] in select)
    return out


def resume_stage(case: Case, run1: Metrics, run2: Metrics, *, resume_iteration: int, train_iters: int,
                 names: Sequence[str], five_decimals: bool = False) -> list[CheckResult]:
    """Run 2 vs run 1 on every step after the resume iteration, for each metric in ``names``:
    the steps run 2 logged, then the metric's exact (unless the case is nondeterministic) and
    approximate checks with run 1 as the golden. ``five_decimals``: exact at 5 decimals
    (Megatron's rule for its own runs); otherwise bit-equal."""
    from runner.compare.golden import GoldenFile, GoldenSeries, check_metrics, rules_for

    after = list(range(resume_iteration + 1, train_iters + 1))
    checks: list[CheckResult] = []
    logged = sorted(run2.get(names[0], {})) if names else []
    if logged != after:
        checks.append(CheckResult("resume:steps", False,
                                  f"run2 logged steps {_span(logged)}, expected {after[0]}..{after[-1]} "
                                  f"(resumed from iteration {resume_iteration})" if after else
                                  f"nothing to compare after iteration {resume_iteration}"))
    rules = rules_for(case)
    series = {}
    for name in names:
        values = run1.get(name)
        if values is None:
            checks.append(CheckResult(f"resume:{name}", False, f"{name}: missing from run1 (nothing to compare)"))
            continue
        kept = {s: v for s, v in values.items() if s in set(after)}
        series[name] = GoldenSeries(after[0] if after else 0, after[-1] if after else 0, 1, kept)
    golden = GoldenFile(Path("run1"), series, {} if five_decimals else {"precision": "full"})
    compared_rules = {n: {**rules.get(n, {}), "checks": [c for c in rules.get(n, {}).get("checks", ["approximate"])
                                                          if c in ("deterministic", "approximate")] or ["approximate"]}
                      for n in series}
    checks.extend(check_metrics(golden, run2, rules=compared_rules, deterministic=deterministic(case),
                                label="resume"))
    return checks


def _span(steps: Sequence[int]) -> str:
    if not steps:
        return "none"
    return f"{steps[0]}..{steps[-1]} ({len(steps)} steps)"
