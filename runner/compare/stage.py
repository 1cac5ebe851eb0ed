"""The comparison stage: between the launches' results and the case's verdict.

A case kind declares *what* to compare (``CaseKind.comparisons``) with the typed requests
below; this stage reads the results dirs, finds and loads the golden file (the one place that
does), runs the registered checks and returns ``CheckResult``s. Kinds no longer re-read files
or call comparison helpers themselves.

- ``GoldenMetrics(launch, source, metrics)``: that launch's metrics (JSON lines or TensorBoard)
  vs the case's golden file, with the case's ``compare`` options (select, deterministic,
  per-metric rules);
- ``RunAgreement(reference, candidate, after_step, metrics)``: a resumed run against the
  run it resumed from, on the steps after ``after_step`` (exact; approximate when the case
  allows nondeterminism);
- ``CapturePairs(launch, reference, candidate)``: two tensor captures of one launch, rank by
  rank (bitwise, or ``compare.tensors`` mode/rtol/atol).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from runner.compare.golden.evaluate import Metrics, builtin_checks, check_metrics, series_agreement
from runner.compare.golden.files import golden_path_for, load_golden
from runner.compare.golden.rules import CompareOptions
from runner.records import Case, CheckResult, LaunchOutcome
from runner.results import ResultsDir


@dataclass(frozen=True)
class GoldenMetrics:
    launch: str = "main"
    source: str = "jsonl"                         # "jsonl" | "tensorboard"
    metrics: tuple[str, ...] | None = None        # only these of the run's metrics (None: all)


@dataclass(frozen=True)
class RunAgreement:
    reference: str
    candidate: str
    after_step: int
    metrics: tuple[str, ...]
    source: str = "jsonl"
    label: str = "resume"
    decimals: int | None = None                   # exact at this many decimals (Megatron's own runs: 5)


@dataclass(frozen=True)
class CapturePairs:
    reference: str                                # capture names
    candidate: str
    launch: str = "main"


Comparison = Union[GoldenMetrics, RunAgreement, CapturePairs]


def read_launch_metrics(results_dir: str | Path, source: str = "jsonl") -> dict[str, dict[int, float]]:
    rd = ResultsDir(results_dir)
    if source == "tensorboard":
        from runner.tensorboard import read_scalars

        return read_scalars(rd.tensorboard_dir)
    return rd.metrics()


class ComparisonStage:
    """Runs a case's declared comparisons; ``ctx`` is a runner.plan.kind.CompareContext."""

    def __init__(self, case: Case, outcomes: Sequence[LaunchOutcome], ctx: Any,
                 checks: Mapping[str, Any] | None = None) -> None:
        self.case, self.ctx = case, ctx
        self.outcomes = {o.launch.name: o for o in outcomes}
        self.checks = dict(checks) if checks is not None else builtin_checks()
        self.options = CompareOptions.from_case(case)
        self._metrics: dict[tuple[str, str], dict[str, dict[int, float]]] = {}

    def metrics(self, launch: str, source: str = "jsonl") -> dict[str, dict[int, float]]:
        key = (launch, source)
        if key not in self._metrics:
            outcome = self.outcomes.get(launch)
            self._metrics[key] = read_launch_metrics(outcome.launch.results_dir, source) if outcome else {}
        return self._metrics[key]

    def run(self, comparisons: Sequence[Comparison]) -> list[CheckResult]:
        out: list[CheckResult] = []
        for c in comparisons:
            if isinstance(c, GoldenMetrics):
                out.extend(self.golden(c))
            elif isinstance(c, RunAgreement):
                out.extend(self.agreement(c))
            elif isinstance(c, CapturePairs):
                out.extend(self.captures(c))
            else:
                raise TypeError(f"unknown comparison request {c!r}")
        return out

    def golden(self, c: GoldenMetrics) -> list[CheckResult]:
        path = golden_path_for(self.case, self.ctx.golden_root, self.ctx.environment)
        if not path.is_file():
            if self.ctx.allow_missing_golden:
                return [CheckResult("golden", True, f"no golden file yet ({path})", skipped=True)]
            return [CheckResult("golden", False, f"golden file not found: {path} (create it with `runner golden update`)")]
        if c.launch not in self.outcomes:
            return [CheckResult("golden", False, f"no launch named '{c.launch}' to compare with the golden")]
        run = self.metrics(c.launch, c.source)
        if c.metrics is not None:
            run = {k: v for k, v in run.items() if k in c.metrics}
        return check_metrics(load_golden(path), run, self.options, checks=self.checks)

    def agreement(self, c: RunAgreement) -> list[CheckResult]:
        absent = [n for n in (c.reference, c.candidate) if n not in self.outcomes]
        if absent:
            return [CheckResult(c.label, False, f"no launch named '{absent[0]}' to compare")]
        ref: Metrics = self.metrics(c.reference, c.source)
        cand: Metrics = self.metrics(c.candidate, c.source)
        return series_agreement(ref, cand, c.metrics, c.after_step, deterministic=self.options.deterministic,
                                decimals=c.decimals, label=c.label)

    def captures(self, c: CapturePairs) -> list[CheckResult]:
        from runner.compare.tensors import compare_tensor_trees, path_key

        outcome = self.outcomes.get(c.launch)
        if outcome is None:
            return [CheckResult("captures", False, f"no launch named '{c.launch}' to compare")]
        rd = ResultsDir(outcome.launch.results_dir)
        tensors = dict((self.case.compare or {}).get("tensors", {}) or {})
        bitwise = tensors.get("mode", "bitwise") == "bitwise"
        ranks = sorted(set(range(outcome.launch.world_size)) | set(rd.capture_ranks(c.reference))
                       | set(rd.capture_ranks(c.candidate)))
        out: list[CheckResult] = []
        for rank in ranks:
            name = f"captures:rank{rank}"
            missing = [n for n in (c.reference, c.candidate) if not rd.capture_file(n, rank).is_file()]
            if missing:
                out.append(CheckResult(name, False, f"rank {rank}: capture '{missing[0]}' is missing",
                                       data={"rank": rank, "missing": missing}))
                continue
            ref, cand = rd.load_capture(c.reference, rank), rd.load_capture(c.candidate, rank)
            found = [replace(m, key=path_key(m.key)) for m in
                     compare_tensor_trees(ref, cand, bitwise=bitwise, rtol=float(tensors.get("rtol", 0.0)),
                                          atol=float(tensors.get("atol", 0.0)))]
            if not found:
                out.append(CheckResult(name, True, data={"rank": rank, "tensors": len(ref)}))
                continue
            more = f" (+{len(found) - 1} more differing tensors)" if len(found) > 1 else ""
            out.append(CheckResult(name, False, f"rank {rank}: {found[0].describe()}{more}",
                                   data={"rank": rank, "mismatches": [m.describe() for m in found]}))
        return out


def compare_case(kind: Any, case: Case, outcomes: Sequence[LaunchOutcome], ctx: Any,
                 checks: Mapping[str, Any] | None = None) -> list[CheckResult]:
    """Every check of a case: the kind's own ``compare`` and its declared ``comparisons``."""
    out = list(kind.compare(case, outcomes, ctx))
    declared = kind.comparisons(case, outcomes)
    if declared:
        out.extend(run_comparisons(case, outcomes, ctx, declared, checks))
    return out


def run_comparisons(case: Case, outcomes: Sequence[LaunchOutcome], ctx: Any, comparisons: Sequence[Comparison],
                    checks: Mapping[str, Any] | None = None) -> list[CheckResult]:
    return ComparisonStage(case, outcomes, ctx, checks).run(comparisons)
