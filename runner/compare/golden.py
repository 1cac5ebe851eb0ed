"""Golden values in Megatron-LM's JSON format, and the checks that compare a run with them.

File: ``golden/<case name>/golden_values_{environment}_{platform}.json``. Top level: metric
name -> ``{"start_step": 1, "end_step": N, "step_interval": 1, "values": {"<step>": number |
"nan"}}`` — real Megatron files load as they are. Files written by ``runner golden update``
add one key, ``"__meta__"``, holding the platform fingerprint and ``"precision": "full"``
(values stored with full float precision, so "exact" means bit-equal). Files without it are
Megatron's, whose values are rounded to 5 decimals: there the exact check compares the run's
values rounded the same way, and says so in its detail.

Default rules (Megatron's), overridable per case under ``compare.metrics.<name>``:

=======================  ===============================================================
metric                   checks
=======================  ===============================================================
lm loss                  deterministic (exact) + approximate rtol 0.05
num-zeros                deterministic + approximate rtol 0.20
mem-*-bytes              approximate rtol 0.05
iteration-time           median over the steady window, two-sided rtol 0.05
other metrics            approximate rtol 0.05
=======================  ===============================================================

approximate passes when the fraction of close steps is >= 1 - k/N, k = min(max(N//100, 1), 50);
a golden "nan" matches a missing (or nan) step; a golden metric missing from the run fails;
when the case allows nondeterminism (``compare.deterministic: false``) exact checks are skipped.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from deepdiff import DeepDiff
from deepdiff.model import CUSTOM_FIELD
from deepdiff.operator import BaseOperator

from runner.errors import UsageError
from runner.records import Case, CheckResult
from runner.results import write_json_atomic

LEGACY_DECIMALS = 5
META_KEY = "__meta__"

DEFAULT_RULES: dict[str, dict[str, Any]] = {
    "lm loss": {"checks": ["deterministic", "approximate"], "rtol": 0.05},
    "num-zeros": {"checks": ["deterministic", "approximate"], "rtol": 0.20},
    "mem-allocated-bytes": {"checks": ["approximate"], "rtol": 0.05},
    "mem-max-allocated-bytes": {"checks": ["approximate"], "rtol": 0.05},
    "iteration-time": {"checks": ["median"], "rtol": 0.05},
}
FALLBACK_RULE: dict[str, Any] = {"checks": ["approximate"], "rtol": 0.05}


@dataclass(frozen=True)
class GoldenSeries:
    start_step: int
    end_step: int
    step_interval: int
    values: Mapping[int, float]          # nan for Megatron's "nan"

    @property
    def steps(self) -> list[int]:
        return sorted(self.values)


@dataclass(frozen=True)
class GoldenFile:
    path: Path
    metrics: Mapping[str, GoldenSeries]
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def full_precision(self) -> bool:
        return self.meta.get("precision") == "full"

    def step_range(self) -> tuple[int, int]:
        starts = [s.start_step for s in self.metrics.values()]
        ends = [s.end_step for s in self.metrics.values()]
        return (min(starts), max(ends)) if starts else (0, 0)


# -- files --------------------------------------------------------------------------------------
def golden_filename(environment: str, platform: str) -> str:
    return f"golden_values_{environment}_{platform}.json"


def find_golden(golden_root: Path, case_name: str, environment: str, platform: str) -> Path | None:
    """golden_root/<case>/golden_values_{env}_{platform}.json, else golden_values_{env}.json."""
    folder = Path(golden_root) / case_name
    for name in (golden_filename(environment, platform), f"golden_values_{environment}.json"):
        if (folder / name).is_file():
            return folder / name
    return None


def golden_path_for(case: Case, golden_root: Path, environment: str) -> Path:
    """Where this case's golden file is (explicit ``golden.file`` or the default name)."""
    explicit = case.golden.get("file") if case.golden else None
    if explicit:
        p = Path(explicit)
        if not p.is_absolute():
            p = Path(case.spec_file).parent / p
        return p
    root = Path(case.golden["dir"]) if case.golden and case.golden.get("dir") else golden_root
    if not root.is_absolute() and case.golden and case.golden.get("dir"):
        root = Path(case.spec_file).parent / root
    name = case.golden.get("name", case.name) if case.golden else case.name
    env = case.golden.get("environment", environment) if case.golden else environment
    found = find_golden(root, name, env, case.platform)
    return found or root / name / golden_filename(env, case.platform)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise UsageError(f"{where}: expected a number or \"nan\", got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() == "nan":
        return math.nan
    raise UsageError(f"{where}: expected a number or \"nan\", got {value!r}")


def load_golden(path: str | Path) -> GoldenFile:
    path = Path(path)
    from runner.spec.bounded import load_json_file   # size, depth, UTF-8 and number bounds, positioned

    data = load_json_file(path, what="golden")
    if not isinstance(data, dict):
        raise UsageError(f"{path}: golden file must hold an object of metrics, got {type(data).__name__}")
    metrics: dict[str, GoldenSeries] = {}
    meta = data.get(META_KEY, {}) if isinstance(data.get(META_KEY), dict) else {}
    for name, series in data.items():
        if name == META_KEY:
            continue
        where = f"{path}: metric '{name}'"
        if not isinstance(series, dict) or "values" not in series or not isinstance(series["values"], dict):
            raise UsageError(f"{where}: expected {{start_step, end_step, step_interval, values: {{step: value}}}}")
        try:
            values = {int(k): _number(v, f"{where}: step {k}") for k, v in series["values"].items()}
        except ValueError:
            raise UsageError(f"{where}: step keys must be integers") from None
        steps = sorted(values)
        start = series.get("start_step", steps[0] if steps else 1)
        end = series.get("end_step", steps[-1] if steps else 0)
        interval = series.get("step_interval", 1)
        for key, val in (("start_step", start), ("end_step", end), ("step_interval", interval)):
            if not isinstance(val, int) or isinstance(val, bool):
                raise UsageError(f"{where}: '{key}' must be an integer, got {val!r}")
        if interval < 1:
            raise UsageError(f"{where}: 'step_interval' must be >= 1")
        metrics[name] = GoldenSeries(start, end, interval, values)
    if not metrics:
        raise UsageError(f"{path}: golden file holds no metrics")
    return GoldenFile(path, metrics, meta)


def write_golden(path: str | Path, metrics: Mapping[str, Mapping[int, float]], fingerprint: Mapping[str, Any],
                 *, step_interval: int = 1) -> Path:
    """Write a golden file atomically (temporary file + rename): never half a file."""
    path = Path(path)
    out: dict[str, Any] = {}
    for name in sorted(metrics):
        series = metrics[name]
        steps = sorted(int(s) for s in series)
        if not steps:
            continue
        kept = [s for s in steps if (s - steps[0]) % step_interval == 0]
        out[name] = {
            "start_step": steps[0],
            "end_step": steps[-1],
            "step_interval": step_interval,
            "values": {str(s): ("nan" if math.isnan(series[s]) else _json_number(series[s])) for s in kept},
        }
    out[META_KEY] = {"precision": "full", "fingerprint": dict(fingerprint)}
    write_json_atomic(path, out)
    return path


def _json_number(v: float) -> float | int:
    return int(v) if float(v).is_integer() and abs(v) < 2**53 else float(v)


# -- deepdiff operator for numbers ----------------------------------------------------------------
class NumberOperator(BaseOperator):
    """Compares two numbers with rtol/atol (nan equals nan) and reports 'number_mismatch'."""

    def __init__(self, *, rtol: float = 0.0, atol: float = 0.0, decimals: int | None = None) -> None:
        super().__init__(types=[float, int])
        self.rtol, self.atol, self.decimals = rtol, atol, decimals

    def give_up_diffing(self, level, diff_instance) -> bool:
        expected, actual = float(level.t1), float(level.t2)
        actual_cmp = actual
        if self.decimals is not None:   # Megatron's files: values rounded to 5 decimals
            if not math.isnan(actual):
                actual_cmp = round(actual, self.decimals)
            if not math.isnan(expected):
                expected = round(expected, self.decimals)
        if math.isnan(expected) and math.isnan(actual):
            return True
        if self.rtol == 0 and self.atol == 0:
            same = expected == actual_cmp
        else:
            same = math.isclose(actual_cmp, expected, rel_tol=self.rtol, abs_tol=self.atol)
        if not same:
            diff_instance.custom_report_result("number_mismatch", level, {"expected": expected, "actual": actual})
        return True


@dataclass(frozen=True)
class StepMismatch:
    step: int
    expected: float
    actual: float | None        # None: missing from the run

    @property
    def abs_diff(self) -> float:
        return math.inf if self.actual is None else abs(self.actual - self.expected)

    @property
    def rel_diff(self) -> float:
        if self.actual is None:
            return math.inf
        return self.abs_diff / abs(self.expected) if self.expected else (0.0 if self.abs_diff == 0 else math.inf)

    def describe(self) -> str:
        if self.actual is None:
            return f"step {self.step}: expected {self.expected!r}, missing from the run"
        return (f"step {self.step}: expected {self.expected!r}, got {self.actual!r} "
                f"(abs diff {self.abs_diff:.6g}, rel diff {self.rel_diff:.3g})")


def step_mismatches(expected: Mapping[int, float], actual: Mapping[int, float], *, rtol: float = 0.0,
                    atol: float = 0.0, decimals: int | None = None) -> list[StepMismatch]:
    """Per-step differences via deepdiff with the number operator (missing steps included)."""
    exp = {str(k): float(v) for k, v in expected.items()}
    act = {str(k): float(v) for k, v in actual.items() if str(k) in exp}
    dd = DeepDiff(exp, act, custom_operators=[NumberOperator(rtol=rtol, atol=atol, decimals=decimals)],
                  view="tree")
    out: list[StepMismatch] = []
    for level in dd.get("number_mismatch", []):
        info = level.additional[CUSTOM_FIELD]
        out.append(StepMismatch(int(level.path(output_format="list")[-1]), info["expected"], info["actual"]))
    for level in dd.get("dictionary_item_removed", []):
        step = int(level.path(output_format="list")[-1])
        if not math.isnan(float(level.t1)):   # a golden "nan" matches a missing step
            out.append(StepMismatch(step, float(level.t1), None))
    out.sort(key=lambda m: m.step)
    return out


def _summary(name: str, check: str, mism: list[StepMismatch], n: int, extra: str = "") -> str:
    first = mism[0]
    return f"{name} {check}: {len(mism)}/{n} steps differ{extra}; first at {first.describe()}"


# -- checks -------------------------------------------------------------------------------------
def rules_for(case: Case) -> dict[str, dict[str, Any]]:
    rules = {k: dict(v) for k, v in DEFAULT_RULES.items()}
    overrides = (case.compare or {}).get("metrics", {}) or {}
    for name, rule in overrides.items():
        base = rules.get(name, dict(FALLBACK_RULE))
        base.update(rule)
        rules[name] = base
    return rules


def check_metrics(golden: GoldenFile, actual: Mapping[str, Mapping[int, float]], *,
                  rules: Mapping[str, Mapping[str, Any]] | None = None, deterministic: bool = True,
                  label: str = "golden") -> list[CheckResult]:
    rules = rules or DEFAULT_RULES
    out: list[CheckResult] = []
    decimals = None if golden.full_precision else LEGACY_DECIMALS
    for name, series in golden.metrics.items():
        rule = dict(rules.get(name, FALLBACK_RULE))
        if rule.get("skip"):
            out.append(CheckResult(f"{label}:{name}", True, "skipped by the case's compare options", skipped=True))
            continue
        run = actual.get(name)
        if run is None:
            out.append(CheckResult(f"{label}:{name}", False, f"{name}: listed in {golden.path.name} but missing from the run"))
            continue
        expected = {s: v for s, v in series.values.items()}
        n = len(expected)
        for check in rule.get("checks", []):
            cname = f"{label}:{name}:{check}"
            if check == "deterministic":
                if not deterministic:
                    out.append(CheckResult(cname, True, "nondeterministic run: exact check skipped", skipped=True))
                    continue
                mism = step_mismatches(expected, run, decimals=decimals)
                prec = "" if decimals is None else f" (exact at the golden's {decimals}-decimal precision)"
                out.append(_result(cname, name, "exact", mism, n, prec))
            elif check == "approximate":
                rtol, atol = float(rule.get("rtol", 0.05)), float(rule.get("atol", 0.0))
                mism = step_mismatches(expected, run, rtol=rtol, atol=atol)
                k = min(max(n // 100, 1), 50)
                allowed = k  # fraction close >= 1 - k/n  <=>  failures <= k
                passed = len(mism) <= allowed
                detail = "" if passed else _summary(name, f"approximate (rtol {rtol:g})", mism, n,
                                                    f", at most {allowed} allowed")
                out.append(CheckResult(cname, passed, detail, data=_data(mism, n, allowed=allowed)))
            elif check == "median":
                out.append(_median_check(cname, name, expected, run, rule))
            else:
                out.append(CheckResult(cname, False, f"{name}: unknown check '{check}'"))
    return out


def _data(mism: list[StepMismatch], n: int, **extra: Any) -> dict[str, Any]:
    return {"steps_compared": n, "steps_failed": len(mism),
            "mismatches": [{"step": m.step, "expected": m.expected, "actual": m.actual} for m in mism[:20]], **extra}


def _result(cname: str, name: str, check: str, mism: list[StepMismatch], n: int, suffix: str = "") -> CheckResult:
    if not mism:
        return CheckResult(cname, True, data=_data(mism, n))
    return CheckResult(cname, False, _summary(name, check, mism, n) + suffix, data=_data(mism, n))


def steady_window(steps: Iterable[int], rule: Mapping[str, Any]) -> list[int]:
    """Megatron's window: steps 5-20 when the run has <= 25 steps, else 30-45; never the
    first recorded step. Megatron's windows assume the series starts at step 1; a series that
    starts later (a resumed run's golden: nan before the resume) gets the same window shifted
    to its first recorded step, instead of an empty window and a nan median."""
    steps = sorted(steps)
    if not steps:
        return []
    first = steps[0]
    if "window" in rule:
        lo, hi = rule["window"]
        return [s for s in steps if lo <= s <= hi and s != first]
    span = steps[-1] - first + 1
    lo, hi = (5, 20) if span <= 25 else (30, 45)
    offset = first - 1
    return [s for s in steps if lo + offset <= s <= hi + offset and s != first]


def _median_check(cname: str, name: str, expected: Mapping[int, float], actual: Mapping[int, float],
                  rule: Mapping[str, Any]) -> CheckResult:
    rtol = float(rule.get("rtol", 0.05))
    recorded = [s for s, v in expected.items() if not math.isnan(v)]
    win = steady_window(recorded, rule)
    got = [actual[s] for s in win if s in actual and not math.isnan(actual[s])]
    if not win:
        return CheckResult(cname, False, f"{name} median: the golden has no steps in the steady window "
                                         f"{rule.get('window', '5-20/30-45')} (nothing to compare)")
    if len(got) < len(win):
        missing = [s for s in win if s not in actual or math.isnan(actual[s])]
        return CheckResult(cname, False, f"{name} median: the run lacks steps {missing[:5]} of the steady window")
    exp_med = statistics.median(expected[s] for s in win)
    act_med = statistics.median(got)
    rel = abs(act_med - exp_med) / abs(exp_med) if exp_med else math.inf
    passed = rel <= rtol
    detail = "" if passed else (f"{name} median over steps {win[0]}-{win[-1]}: expected {exp_med:.6g}, got "
                                f"{act_med:.6g} (rel diff {rel:.3g} > rtol {rtol:g})")
    return CheckResult(cname, passed, detail, data={"expected_median": exp_med, "actual_median": act_med,
                                                    "window": [win[0], win[-1]]})


def series_equal(name: str, expected: Mapping[int, float], actual: Mapping[int, float],
                 steps: Iterable[int] | None = None, *, label: str = "resume") -> CheckResult:
    """Exact equality over the given steps (default: every expected step), per-step detail."""
    if steps is not None:
        wanted = set(steps)
        expected = {s: v for s, v in expected.items() if s in wanted}
    mism = step_mismatches(expected, actual)
    return _result(f"{label}:{name}", name, "exact", mism, len(expected))


# -- for case kinds ------------------------------------------------------------------------------
def golden_checks(case: Case, metrics: Mapping[str, Mapping[int, float]], ctx: Any) -> list[CheckResult]:
    """Find the case's golden file and check ``metrics`` against it with the case's rules.

    ``ctx`` is a runner.plan.kind.CompareContext. Under ``runner golden update`` a missing golden
    gives a skipped check instead of a failure.
    """
    path = golden_path_for(case, ctx.golden_root, ctx.environment)
    if not path.is_file():
        if ctx.allow_missing_golden:
            return [CheckResult("golden", True, f"no golden file yet ({path})", skipped=True)]
        return [CheckResult("golden", False, f"golden file not found: {path} (create it with `runner golden update`)")]
    golden = load_golden(path)
    deterministic = bool((case.compare or {}).get("deterministic", True))
    return check_metrics(golden, metrics, rules=rules_for(case), deterministic=deterministic)
