"""Metric checks, registered by name like any plugin's (``runner_register_checks``).

A check compares one metric of a run with a reference series (a golden file's, or run 1's in
a resume test) and returns one ``CheckResult``. The built-ins (Megatron's semantics; see
``runner.compare.golden.series`` for the arithmetic):

- ``deterministic``: every step equal (rounded to 5 decimals against a Megatron golden);
  skipped when the case allows nondeterminism;
- ``approximate``: ``isclose`` per step, passes when ``mean(close) >= 1 - k/N``;
- ``median``: ``iteration-time``: the median over the steady window (absolute steps 5-20 when
  the last finite golden step is <= 25, else 30-45; if the window holds no finite golden step,
  the first 4 finite steps at or after its start), run's missing steps as +inf, ``isclose``;
- ``bitwise``: every step equal at full precision, whatever the golden's precision;
  skipped when the case allows nondeterminism;
- ``close``: ``isclose`` on every step, no failing step allowed;
- ``timing``: load-proof iteration time: the median over the same window of
  ``iteration-cpu-time`` (the CPU seconds of each rank's main thread during the step, mean over
  ranks: what the step computed, which a busy machine does not change; see
  ``workloads.common.timing``), run vs golden: fails when the run's is more than ``1 + rtol``
  times the golden's (a faster run passes; its ratio is in the check's data). Without
  ``iteration-cpu-time`` in both (Megatron's files, GPU runs, user scripts) it compares the raw
  wall-clock median with the rule's rtol and says so.

A plugin adds a check with a class like these and ``registry.add(MyCheck)`` in its
``runner_register_checks(registry)`` hook; specs then name it in ``compare.metrics.<m>.checks``.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from runner.hookspecs import hookimpl
from runner.records import CheckResult

if TYPE_CHECKING:   # numpy and the golden modules load when a check runs, not when plugins load
    import numpy as np

    from runner.compare.golden.files import GoldenFile, GoldenSeries
    from runner.compare.golden.rules import Rule
    from runner.compare.golden.series import Aligned

CPU_TIME_METRIC = "iteration-cpu-time"


@dataclass(frozen=True, eq=False)
class MetricJob:
    """Everything a check may look at for one metric."""

    metric: str
    golden: GoldenSeries                       # the reference series
    actual: Mapping[int, float]                # the run's series (step -> value)
    rule: Rule
    decimals: int | None = None                # 5 against Megatron's files, None for ours
    label: str = "golden"
    reference: GoldenFile | None = None        # the whole golden file (companion metrics)
    run: Mapping[str, Mapping[int, float]] | None = None   # every metric of the run

    @property
    def name(self) -> str:
        return f"{self.label}:{self.metric}"

    @cached_property
    def aligned(self) -> "Aligned":
        from runner.compare.golden.series import align

        return align(self.golden, self.actual, self.decimals)


class MetricCheck(abc.ABC):
    id: ClassVar[str]
    description: ClassVar[str] = ""
    #: exact checks are skipped when the case allows nondeterminism
    exact: ClassVar[bool] = False

    @abc.abstractmethod
    def run(self, job: MetricJob) -> CheckResult:
        """Compare ``job.actual`` with ``job.golden`` under ``job.rule``."""


def _np():
    import numpy

    return numpy


def _series():
    from runner.compare.golden import series

    return series


def _per_step(job: MetricJob, check: str, close: "np.ndarray", passed: bool, what: str, suffix: str = "",
              **extra: Any) -> CheckResult:
    S = _series()
    al = job.aligned
    bad = ~close
    failed = int(bad.sum())
    data = {"steps_compared": len(al), "steps_failed": failed, "mismatches": S.mismatches(al, bad), **extra}
    if passed:
        return CheckResult(f"{job.name}:{check}", True, data=data)
    first = S.describe(data["mismatches"][0]) if data["mismatches"] else "no step"
    detail = f"{job.metric} {what}: {failed}/{len(al)} steps differ{suffix}; first at {first}"
    return CheckResult(f"{job.name}:{check}", False, detail, data=data)


def _every_step_close(job: MetricJob, check: str, actual: "np.ndarray", what: str, rtol: float = 0.0,
                      atol: float = 0.0, note: str = "") -> CheckResult:
    """``actual`` (the run's values, rounded or raw) close to the golden's at every step (equal
    with the default tolerances of 0); a failure's detail ends with ``note``."""
    close = _series().isclose(actual, job.aligned.expected, rtol, atol)
    res = _per_step(job, check, close, bool(_np().all(close)), what)
    return res if res.passed or not note else CheckResult(res.name, False, res.detail + note, data=res.data)


class Deterministic(MetricCheck):
    id = "deterministic"
    description = "every step equal (Megatron's files: the run rounded to their 5 decimals)"
    exact = True

    def run(self, job: MetricJob) -> CheckResult:
        prec = "" if job.decimals is None else f" (exact at the golden's {job.decimals}-decimal precision)"
        return _every_step_close(job, self.id, job.aligned.actual, "exact", note=prec)


class Bitwise(MetricCheck):
    id = "bitwise"
    description = "every step equal at full precision, whatever the golden's precision"
    exact = True

    def run(self, job: MetricJob) -> CheckResult:
        return _every_step_close(job, self.id, job.aligned.raw, "bitwise")


class Approximate(MetricCheck):
    id = "approximate"
    description = "numpy.isclose per step (relative to the golden); mean(close) >= 1 - k/N"

    def run(self, job: MetricJob) -> CheckResult:
        al, r = job.aligned, job.rule
        close = _series().isclose(al.actual, al.expected, r.rtol, r.atol)
        n = len(al)
        allowed = _series().allowed_failures(n) if n > 1 else 0
        return _per_step(job, self.id, close, _series().approximate_passes(close), f"approximate (rtol {r.rtol:g})",
                         f", at most {allowed} allowed", allowed=allowed)


class Close(MetricCheck):
    id = "close"
    description = "numpy.isclose on every step, no failing step allowed"

    def run(self, job: MetricJob) -> CheckResult:
        r = job.rule
        return _every_step_close(job, self.id, job.aligned.actual, f"close (rtol {r.rtol:g}, atol {r.atol:g})",
                                 r.rtol, r.atol)


def timing_window(golden: "GoldenSeries", rule: "Rule") -> tuple[list[int], str]:
    """Megatron's iteration-time steps: (steps, how chosen); no steps -> the reason."""
    np = _np()
    finite = np.sort(golden.steps[np.isfinite(golden.values)])
    if not len(finite):
        return [], "the golden has no finite values"
    if rule.window is not None:
        lo, hi = rule.window
        chosen = finite[(finite >= lo) & (finite <= hi)].tolist()
        return chosen, (f"steps {lo}-{hi}" if chosen else f"the golden has no finite steps in window {lo}-{hi}")
    lo, hi = (5, 20) if finite[-1] <= 25 else (30, 45)
    chosen = finite[(finite >= lo) & (finite <= hi)].tolist()
    if chosen:
        return chosen, f"steps {lo}-{hi}"
    chosen = finite[finite >= lo][:4].tolist()
    if chosen:
        return chosen, f"steps {chosen[0]}-{chosen[-1]} (first finite steps from {lo}: window {lo}-{hi} is empty)"
    return [], f"the golden has no finite values at or after step {lo}"


def _window_values(al: "Aligned", steps: list[int]) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """expected, actual and missing at the window's steps."""
    np = _np()
    mask = np.isin(al.steps, np.asarray(steps, dtype=np.int64))
    return al.expected[mask], al.actual[mask], al.missing[mask]


def _median(values: "Sequence[float] | np.ndarray") -> float:
    np = _np()
    return float(np.median(np.asarray(values, dtype=np.float64)))


def _values_at(source: Any, steps: list[int]) -> "np.ndarray":
    """A series' values at ``steps`` (missing -> +inf)."""
    from runner.compare.golden.files import GoldenSeries

    np = _np()
    at = GoldenSeries(0, 0, 1, np.asarray(steps, dtype=np.int64), np.zeros(len(steps)))
    return _series().align(at, source, None).raw


class Median(MetricCheck):
    id = "median"
    description = "median over Megatron's steady window (5-20 / 30-45, first-4-finite fallback), isclose"

    def run(self, job: MetricJob) -> CheckResult:
        r = job.rule
        steps, how = timing_window(job.golden, r)
        if not steps:
            return CheckResult(f"{job.name}:{self.id}", False, f"{job.metric} median: {how} (nothing to compare)")
        exp_v, act_v, miss = _window_values(job.aligned, steps)
        exp, act = _median(exp_v), _median(act_v)
        np = _np()
        passed = bool(_series().isclose(np.array([act]), np.array([exp]), r.rtol, r.atol)[0])
        missing = job.aligned.steps[np.isin(job.aligned.steps, steps) & job.aligned.missing].tolist()
        data = {"expected_median": _j(exp), "actual_median": _j(act), "window": [steps[0], steps[-1]],
                "steps": steps, "missing_steps": missing}
        detail = "" if passed else (f"{job.metric} median over {how}: expected {exp:.6g}, got {act:.6g} "
                                    f"(rtol {r.rtol:g})" + (f"; {len(missing)} step(s) missing from the run"
                                                            if missing else ""))
        return CheckResult(f"{job.name}:{self.id}", passed, detail, data=data)


def _j(v: float) -> Any:
    return v if math.isfinite(v) else str(v)


class Timing(MetricCheck):
    id = "timing"
    description = ("median of iteration-cpu-time (the step's CPU seconds) over the steady window, run vs "
                   "golden, at most 1 + rtol times the golden's (falls back to median without it)")

    def run(self, job: MetricJob) -> CheckResult:
        r = job.rule
        gcpu = job.reference.metrics.get(CPU_TIME_METRIC) if job.reference is not None else None
        acpu = (job.run or {}).get(CPU_TIME_METRIC)
        if gcpu is None or acpu is None:
            res = Median().run(job)
            note = f"no {CPU_TIME_METRIC} recorded: raw median compared"
            return CheckResult(f"{job.name}:{self.id}", res.passed, f"{res.detail} ({note})" if res.detail else "",
                               data={**res.data, "note": note})
        steps, how = timing_window(job.golden, r)
        if not steps:
            return CheckResult(f"{job.name}:{self.id}", False, f"{job.metric} timing: {how} (nothing to compare)")
        exp = _median(_values_at(gcpu, steps))
        act = _median(_values_at(acpu, steps))          # a missing run step counts as +inf
        ratio = act / exp if exp > 0 else math.inf
        bound = 1.0 + r.rtol
        passed = bool(ratio <= bound)        # one-sided: a slower step fails, a faster one is reported
        raw_exp, raw_act = _median(_values_at(job.golden, steps)), _median(_values_at(job.actual, steps))
        data = {"cpu_expected_median_s": _j(exp), "cpu_actual_median_s": _j(act), "ratio": _j(ratio),
                "bound": bound, "window": [steps[0], steps[-1]],
                "raw_expected_median_s": _j(raw_exp), "raw_actual_median_s": _j(raw_act)}
        contention = _contention(job, gcpu, acpu, steps)
        if contention is not None:
            data["contention"] = round(contention, 3)
        if not passed and contention is not None and contention > CONTENTION_LIMIT:
            # The ranks waited for a CPU far more than when the golden was recorded: a saturated
            # machine inflates CPU time too (cache and core sharing), so the figure says nothing
            # about the code. A real compute slowdown stretches wall and CPU time alike and is
            # judged.
            note = (f"{job.metric} timing not judged: the machine was saturated (wall/CPU time per step "
                    f"{contention:.3g}x the golden's, over {CONTENTION_LIMIT:g}x); CPU time {ratio:.3g}x the golden's")
            return CheckResult(f"{job.name}:{self.id}", True, note, skipped=True, data={**data, "inconclusive": True})
        detail = "" if passed else (
            f"{job.metric} timing over {how}: the step's CPU time is {ratio:.3g}x the golden's (allowed up to "
            f"{bound:.3g}x; {CPU_TIME_METRIC} median {act:.4g}s vs {exp:.4g}s; "
            f"wall median {raw_act:.4g}s vs {raw_exp:.4g}s)")
        return CheckResult(f"{job.name}:{self.id}", passed, detail, data=data)


#: how much more a run's steps may wait for a CPU (wall / CPU time per step, over the golden's)
#: before a timing failure is put down to a saturated machine rather than to the code
CONTENTION_LIMIT = 1.5


def _contention(job: MetricJob, gcpu: Any, acpu: Any, steps: list[int]) -> float | None:
    """Median wall/CPU time per step of the run over the golden's (None where unknown)."""
    np = _np()
    with np.errstate(divide="ignore", invalid="ignore"):
        run = _values_at(job.actual, steps) / _values_at(acpu, steps)
        gold = _values_at(job.golden, steps) / _values_at(gcpu, steps)
    run, gold = run[np.isfinite(run)], gold[np.isfinite(gold)]
    if not len(run) or not len(gold) or _median(gold) <= 0:
        return None
    return _median(run) / _median(gold)


BUILTIN_CHECKS: tuple[type[MetricCheck], ...] = (Deterministic, Approximate, Median, Bitwise, Close, Timing)


@hookimpl
def runner_register_checks(registry: Any) -> None:
    for cls in BUILTIN_CHECKS:
        registry.add(cls)
