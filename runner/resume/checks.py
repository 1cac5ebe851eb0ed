"""What a case with golden values and (optionally) a resume test asks the comparison stage for.

Kinds call these helpers from ``comparisons`` (the requests the stage runs:
``runner.compare.stage``) and ``compare`` (the checks that need no comparison: a missing
rewind record); nothing here reads metrics or golden files itself.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from runner.compare.stage import Comparison, GoldenMetrics, RunAgreement
from runner.records import Case, CheckResult, LaunchOutcome

#: what a resume test compares when the case selects nothing (Megatron's default METRICS)
DEFAULT_METRICS = ("lm loss", "num-zeros")


def selected_metrics(case: Case, default: Iterable[str] = DEFAULT_METRICS) -> list[str]:
    """``compare.select`` when the case has it, else ``default``."""
    select = (case.compare or {}).get("select")
    return [str(m) for m in select] if select else list(default)


def resume_iteration(outcomes: Sequence[LaunchOutcome], run2: str = "run2") -> int | None:
    """The iteration run 2 resumed from, as its rewind record says (None: no record)."""
    from runner.resume.worker import read_record

    for o in outcomes:
        if o.launch.name == run2:
            record = read_record(o.launch.results_dir) or {}
            return int(record["iteration"]) if "iteration" in record else None
    return None


def rewind_checks(outcomes: Sequence[LaunchOutcome], run2: str = "run2") -> list[CheckResult]:
    """A resumed run that left no rewind record is a failure of its own (nothing to compare)."""
    if any(o.launch.name == run2 for o in outcomes) and resume_iteration(outcomes, run2) is None:
        return [CheckResult("resume:rewind", False, f"{run2} left no rewind record (resume/rewound.json)")]
    return []


def resume_comparisons(case: Case, outcomes: Sequence[LaunchOutcome], *, golden: bool, run1: str = "run1",
                       run2: str = "run2", source: str = "jsonl", metrics: Sequence[str] | None = None,
                       golden_metrics: tuple[str, ...] | None = None,
                       decimals: int | None = None) -> list[Comparison]:
    """Run 1 against the golden values (when the case has them) and run 2 against run 1 after
    the resume iteration, on ``metrics`` (default: the case's selected metrics)."""
    out: list[Comparison] = []
    if golden:
        out.append(GoldenMetrics(run1, source, golden_metrics))
    after = resume_iteration(outcomes, run2)
    if after is not None:
        names = tuple(metrics if metrics is not None else selected_metrics(case))
        out.append(RunAgreement(run1, run2, after, names, source=source, decimals=decimals))
    return out
