"""Whole-series arithmetic for golden checks (numpy; nothing iterates steps in Python but the
alignment of the run's mapping onto the golden's steps).

Megatron's semantics, exactly:

- the run's value at each golden step; a step missing from the run reads as +inf;
- against a Megatron golden the run's values are first rounded with Python's ``round(v, 5)``;
- closeness is ``numpy.isclose(actual, golden, rtol, atol)``: ``|a - g| <= atol + rtol * |g|``,
  relative to the golden only; inf equals inf of the same sign; NaN equals nothing;
- the approximate pass rule is ``mean(close) >= 1 - k / N`` in floating point, k =
  min(max(N // 100, 1), 50), and every step must be close when N == 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from runner.compare.golden.files import GoldenSeries

DETAIL_LIMIT = 20


@dataclass(frozen=True, eq=False)
class Aligned:
    """A golden series and the run's values at the same steps."""

    steps: np.ndarray          # the golden's steps (file order)
    expected: np.ndarray       # the golden's values (strings already +inf)
    actual: np.ndarray         # the run's values there, missing -> +inf, rounded for Megatron files
    raw: np.ndarray            # the run's values before rounding (missing -> +inf)
    missing: np.ndarray        # bool: the step is not in the run

    def __len__(self) -> int:
        return len(self.steps)


def run_mapping(actual: Mapping[int, float] | GoldenSeries) -> Mapping[int, float]:
    return actual.as_dict() if isinstance(actual, GoldenSeries) else actual


def align(golden: GoldenSeries, actual: Mapping[int, float] | GoldenSeries, decimals: int | None) -> Aligned:
    if isinstance(actual, GoldenSeries):
        keys, vals = actual.steps, actual.values
    else:
        keys = np.fromiter(actual.keys(), dtype=np.int64, count=len(actual))
        vals = np.fromiter(actual.values(), dtype=np.float64, count=len(actual))
    order = np.argsort(keys, kind="stable")
    keys, vals = keys[order], vals[order]
    pos = np.searchsorted(keys, golden.steps)
    clipped = np.minimum(pos, max(len(keys) - 1, 0))
    found = (pos < len(keys)) & (keys[clipped] == golden.steps) if len(keys) else np.zeros(len(golden.steps), bool)
    raw = np.where(found, vals[clipped] if len(keys) else 0.0, math.inf)
    if decimals is None:
        values = raw
    else:   # Python's round(), exactly as Megatron rounds what it reads from TensorBoard
        values = np.fromiter((round(v, decimals) for v in raw.tolist()), dtype=np.float64, count=len(raw))
    return Aligned(golden.steps, golden.values, values, raw, ~found)


def isclose(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    return np.isclose(actual, expected, rtol=rtol, atol=atol)


def allowed_failures(n: int) -> int:
    return min(max(n // 100, 1), 50)


def approximate_passes(close: np.ndarray) -> bool:
    n = len(close)
    if n == 1:
        return bool(np.all(close))
    return bool(np.mean(close) >= 1 - (allowed_failures(n) / n))


def rel_diff(actual: float, expected: float) -> float:
    diff = abs(actual - expected)
    if math.isnan(diff):
        return math.nan
    if expected == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / abs(expected)


def _num(v: float) -> Any:
    """JSON-safe float: inf/nan as strings."""
    return v if math.isfinite(v) else str(v)


def mismatches(al: Aligned, bad: np.ndarray, limit: int = DETAIL_LIMIT) -> list[dict[str, Any]]:
    """Per-step detail for the first ``limit`` failing steps, in step order."""
    idx = np.nonzero(bad)[0]
    idx = idx[np.argsort(al.steps[idx], kind="stable")][:limit]
    out = []
    for i in idx.tolist():
        e, a = float(al.expected[i]), float(al.raw[i])
        out.append({"step": int(al.steps[i]), "expected": _num(e),
                    "actual": None if al.missing[i] else _num(a),
                    "abs_diff": _num(abs(a - e)), "rel_diff": _num(rel_diff(a, e))})
    return out


def describe(m: Mapping[str, Any]) -> str:
    if m["actual"] is None:
        return f"step {m['step']}: expected {m['expected']!r}, missing from the run"
    return (f"step {m['step']}: expected {m['expected']!r}, got {m['actual']!r} "
            f"(abs diff {_fmt(m['abs_diff'])}, rel diff {_fmt(m['rel_diff'], 3)})")


def _fmt(v: Any, digits: int = 6) -> str:
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)
