"""Parity corpus: synthetic series around every boundary of Megatron's golden rules.

Every expected verdict here is written out by hand from the rule (docs/golden.md, "Megatron's
rules"), with the arithmetic in the comment; none is computed by the implementation under
test. Rule rows covered (docs/golden.md table): which metrics / select, exact, exact applies
to, skip exact, tolerance, approximate pass, strings and nan, missing step, iteration-time
window, iteration-time check, memory, empty values, 5-decimal rounding, full precision.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from runner.compare.golden import CompareOptions, GoldenFile, GoldenSeries, check_metrics

MEGATRON: dict = {}                       # no sidecar: Megatron's file, 5 decimals
OURS = {"precision": "full"}              # our own file: full precision


def golden(metrics: dict[str, dict[int, float]], meta: dict = MEGATRON) -> GoldenFile:
    return GoldenFile(Path("golden_values_dev_x.json"),
                      {k: GoldenSeries.from_mapping(v) for k, v in metrics.items()}, meta)


def verdicts(g: GoldenFile, actual: dict, **options) -> dict[str, tuple[bool, bool]]:
    """check name -> (passed, skipped)."""
    return {c.name: (c.passed, c.skipped) for c in check_metrics(g, actual, CompareOptions(**options))}


def approx(g: GoldenFile, actual: dict, metric: str = "mem-allocated-bytes") -> bool:
    res = verdicts(g, actual)
    return res[f"golden:{metric}:approximate"][0]


def series_with_failures(n: int, failing: int) -> tuple[dict[int, float], dict[int, float]]:
    """A golden of n steps at 1000.0 and a run equal to it except ``failing`` steps at 2000.0."""
    g = {s: 1000.0 for s in range(1, n + 1)}
    a = dict(g)
    for s in range(1, failing + 1):
        a[s] = 2000.0
    return g, a


# -- approximate pass: mean(close) >= 1 - k/N, k = min(max(N // 100, 1), 50) ----------------------
@pytest.mark.parametrize("n,failing,expected", [
    (1, 0, True),
    (1, 1, False),      # N == 1: the single step must pass (1 - 1/1 = 0 would let anything pass)
    (2, 1, True),       # k = 1: mean 0.5 >= 1 - 1/2 = 0.5
    (2, 2, False),
    (3, 1, False),      # k = 1: mean 2/3 = 0.6666666666666666 < 1 - 1/3 = 0.6666666666666667 (floats)
    (3, 0, True),
    (21, 1, True),      # 20/21 = 0.9523809523809523 >= 1 - 1/21 = 0.9523809523809523
    (100, 1, True),     # k = 1: 0.99 >= 0.99
    (100, 2, False),
    (199, 1, True),     # 199 // 100 = 1
    (199, 2, False),
    (200, 2, True),     # k = 2: 198/200 = 0.99 >= 1 - 2/200 = 0.99
    (200, 3, False),
    (5000, 50, True),   # k = 50
    (5000, 51, False),
    (6000, 50, True),   # k = min(60, 50) = 50
    (6000, 51, False),
])
def test_approximate_k_of_n(n, failing, expected):
    g, a = series_with_failures(n, failing)
    assert approx(golden({"mem-allocated-bytes": g}), {"mem-allocated-bytes": a}) is expected


def test_floating_point_of_the_rule_itself():
    # the hand arithmetic the table above relies on
    assert 2 / 3 < 1 - 1 / 3
    assert 20 / 21 >= 1 - 1 / 21 and 0.99 >= 1 - 1 / 100 and 198 / 200 >= 1 - 2 / 200


# -- tolerance: |a - g| <= atol + rtol * |g|, relative to the golden only; atol 0 --------------------
@pytest.mark.parametrize("g,a,expected", [
    (100.0, 105.0, True),       # |5| <= 0.05 * 100 = 5
    (100.0, 105.00001, False),  # just outside (Megatron's 5 decimals keep the 1e-5)
    (100.0, 95.0, True),        # |-5| <= 5
    (100.0, 94.99999, False),
    (95.0, 100.0, False),       # +5.26 %: |5| > 0.05 * 95 = 4.75 (a symmetric tolerance would pass)
    (105.0, 100.0, True),       # |-5| <= 0.05 * 105 = 5.25
    (0.0, 1e-5, False),         # atol 0: nothing is close to 0 but 0
    (0.0, 0.0, True),
    (-100.0, -105.0, True),     # |g| for negative goldens
])
def test_tolerance_relative_to_golden(g, a, expected):
    # N == 1 so the single step decides the approximate check
    assert approx(golden({"mem-allocated-bytes": {1: g}}), {"mem-allocated-bytes": {1: a}}) is expected


def test_atol_is_zero_not_numpys_default():
    # our full-precision file keeps 1e-9 (a Megatron file would round it to 0); numpy's default
    # atol 1e-8 would call it close to 0, Megatron's atol 0 does not
    g = golden({"mem-allocated-bytes": {1: 0.0}}, OURS)
    assert not approx(g, {"mem-allocated-bytes": {1: 1e-9}})


def test_num_zeros_tolerance_is_5_percent():
    # Megatron's table: num-zeros approximate rtol 0.05 (not 0.20): 100 -> 105 passes, 106 fails
    assert verdicts(golden({"num-zeros": {1: 100.0}}), {"num-zeros": {1: 105.0}},
                    deterministic=False)["golden:num-zeros:approximate"][0]
    assert not verdicts(golden({"num-zeros": {1: 100.0}}), {"num-zeros": {1: 106.0}},
                        deterministic=False)["golden:num-zeros:approximate"][0]


# -- strings, nan, missing steps --------------------------------------------------------------------
def _loaded(tmp_path, values: str):
    from runner.compare.golden import load_golden

    p = tmp_path / "golden_values_dev_x.json"
    p.write_text('{"mem-allocated-bytes": {"start_step": 1, "end_step": 2, "step_interval": 1, '
                 f'"values": {values}}}}}')
    return load_golden(p)


@pytest.mark.parametrize("values,actual,expected", [
    ('{"1": "nan"}', {}, True),                 # string -> inf; missing -> inf; inf == inf
    ('{"1": "nan"}', {1: math.inf}, True),
    ('{"1": "whatever"}', {}, True),            # any string reads as inf
    ('{"1": "nan"}', {1: 1.0}, False),
    ('{"1": "nan"}', {1: math.nan}, False),     # a NaN in the run is not inf
    ('{"1": NaN}', {1: math.nan}, False),       # a JSON NaN never equals itself
    ('{"1": 2.0}', {}, False),                  # a missing step is inf: a failing step
    ('{"1": 2.0}', {1: math.inf}, False),
])
def test_strings_nan_and_missing_steps(tmp_path, values, actual, expected):
    g = _loaded(tmp_path, values)
    assert approx(g, {"mem-allocated-bytes": actual}) is expected


def test_missing_step_counts_as_one_failing_step():
    g = {s: 1000.0 for s in range(1, 101)}
    a = dict(g)
    del a[37]                                    # N = 100, k = 1: one missing step is allowed...
    res = verdicts(golden({"lm loss": g}), {"lm loss": a})
    assert res["golden:lm loss:approximate"] == (True, False)
    assert res["golden:lm loss:deterministic"] == (False, False)   # ...but not by the exact check
    del a[38]                                    # two are not
    assert not verdicts(golden({"lm loss": g}), {"lm loss": a})["golden:lm loss:approximate"][0]


# -- exact checks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["lm loss", "num-zeros", "mtp_1 loss", "mtp_2 loss", "total loss"])
def test_exact_applies_to(metric):
    res = verdicts(golden({metric: {1: 2.5, 2: 2.25}}), {metric: {1: 2.5, 2: 2.25001}})
    assert res[f"golden:{metric}:deterministic"] == (False, False)
    assert res[f"golden:{metric}:approximate"] == (True, False)


@pytest.mark.parametrize("metric", ["mem-allocated-bytes", "mem-max-allocated-bytes", "some-other-metric"])
def test_no_exact_check_for_memory_and_others(metric):
    res = verdicts(golden({metric: {1: 2.5, 2: 2.25}}), {metric: {1: 2.5, 2: 2.25001}})
    assert res == {f"golden:{metric}:approximate": (True, False)}


def test_exact_skipped_when_nondeterministic():
    res = verdicts(golden({"lm loss": {1: 2.5}}), {"lm loss": {1: 2.51}}, deterministic=False)
    assert res["golden:lm loss:deterministic"] == (True, True)       # skipped
    assert res["golden:lm loss:approximate"] == (True, False)        # 0.01 <= 0.125


@pytest.mark.parametrize("actual,expected", [
    (1.2345704, True),     # round(1.2345704, 5) = 1.23457
    (1.2345749, True),     # round(1.2345749, 5) = 1.23457
    (1.2345751, False),    # round(1.2345751, 5) = 1.23458
    (1.2345649, False),    # round(1.2345649, 5) = 1.23456
])
def test_exact_at_five_decimals_against_megatron_files(actual, expected):
    res = verdicts(golden({"lm loss": {1: 1.23457}}), {"lm loss": {1: actual}})
    assert res["golden:lm loss:deterministic"][0] is expected


def test_full_precision_for_our_own_goldens():
    res = verdicts(golden({"lm loss": {1: 1.23457}}, OURS), {"lm loss": {1: 1.2345704}})
    assert res["golden:lm loss:deterministic"] == (False, False)
    third = 1 / 3
    res = verdicts(golden({"lm loss": {1: third}}, OURS), {"lm loss": {1: math.nextafter(third, 1)}})
    assert res["golden:lm loss:deterministic"] == (False, False)
    assert verdicts(golden({"lm loss": {1: third}}, OURS), {"lm loss": {1: third}})["golden:lm loss:deterministic"][0]


def test_rounding_applies_to_approximate_too():
    # Megatron rounds what it reads before every check: 105.000004 -> 105.0, inside 5 % of 100
    assert approx(golden({"mem-allocated-bytes": {1: 100.0}}), {"mem-allocated-bytes": {1: 105.000004}})
    assert not approx(golden({"mem-allocated-bytes": {1: 100.0}}, OURS), {"mem-allocated-bytes": {1: 105.000004}})


# -- which metrics: compare.select (Megatron's METRICS) ------------------------------------------------
def test_select_checks_only_listed_metrics():
    g = golden({"lm loss": {1: 2.0}, "num-zeros": {1: 10.0}})
    res = verdicts(g, {"lm loss": {1: 2.0}, "num-zeros": {1: 99.0}}, select=("lm loss",))
    assert set(res) == {"golden:lm loss:deterministic", "golden:lm loss:approximate"}
    assert all(p for p, _ in res.values())


def test_selected_metric_missing_from_run_or_golden_fails():
    g = golden({"lm loss": {1: 2.0}})
    assert verdicts(g, {}, select=("lm loss",)) == {"golden:lm loss": (False, False)}
    assert verdicts(g, {"lm loss": {1: 2.0}, "mtp_1 loss": {1: 1.0}},
                    select=("lm loss", "mtp_1 loss"))["golden:mtp_1 loss"] == (False, False)


def test_without_select_every_golden_metric_must_be_in_the_run():
    g = golden({"lm loss": {1: 2.0}, "num-zeros": {1: 10.0}})
    assert verdicts(g, {"lm loss": {1: 2.0}})["golden:num-zeros"] == (False, False)


def test_empty_series_fails():
    g = GoldenFile(Path("g.json"), {"lm loss": GoldenSeries.from_mapping({})}, MEGATRON)
    assert verdicts(g, {"lm loss": {1: 2.0}}) == {"golden:lm loss": (False, False)}


# -- iteration-time: absolute windows, first-4-finite fallback, median with inf --------------------
def it_golden(values: dict[int, float]) -> GoldenFile:
    return golden({"iteration-time": values})


def median_ok(g: GoldenFile, actual: dict[int, float]) -> bool:
    return verdicts(g, {"iteration-time": actual})["golden:iteration-time:median"][0]


def test_window_5_to_20_when_last_finite_step_is_25():
    g = {s: 8.0 for s in range(1, 26)}
    a = dict(g)
    for s in (1, 2, 3, 4, 21, 22, 23, 24, 25):
        a[s] = 80.0                              # outside 5-20: ignored
    assert median_ok(it_golden(g), a)
    a = {s: (8.375 if 5 <= s <= 20 else 8.0) for s in range(1, 26)}
    assert median_ok(it_golden(g), a)            # 0.375 <= 0.05 * 8 = 0.4
    a = {s: (8.5 if 5 <= s <= 20 else 8.0) for s in range(1, 26)}
    assert not median_ok(it_golden(g), a)        # 0.5 > 0.4


def test_window_30_to_45_when_last_finite_step_is_26_or_more():
    g = {s: 8.0 for s in range(1, 101)}
    a = {s: (8.0 if 30 <= s <= 45 else 80.0) for s in range(1, 101)}
    assert median_ok(it_golden(g), a)
    a = {s: (8.5 if 30 <= s <= 45 else 8.0) for s in range(1, 101)}
    assert not median_ok(it_golden(g), a)


def test_26_steps_leave_nothing_at_or_after_30():
    # last finite step 26 > 25: window 30-45, no finite step there nor after 30: fails, even on itself
    g = {s: 8.0 for s in range(1, 27)}
    assert not median_ok(it_golden(g), dict(g))


def test_fallback_first_four_finite_steps_after_an_empty_window():
    # a resumed run's golden: "nan" (inf) for steps 1-50; window 30-45 has no finite step;
    # fallback: the first 4 finite steps at or after 30 = 51, 52, 53, 54
    g = {s: (math.inf if s <= 50 else 8.0) for s in range(1, 101)}
    a = {s: (8.0 if 51 <= s <= 54 else 80.0) for s in range(51, 101)}
    assert median_ok(it_golden(g), a)
    a = {s: (8.5 if 51 <= s <= 54 else 8.0) for s in range(51, 101)}
    assert not median_ok(it_golden(g), a)


def test_fallback_in_the_short_window():
    # finite 1-4 and 21-25: last 25 -> window 5-20, empty -> first 4 finite at or after 5: 21-24
    g = {s: (math.inf if 5 <= s <= 20 else 8.0) for s in range(1, 26)}
    a = {s: (8.0 if 21 <= s <= 24 else 80.0) for s in range(1, 26)}
    assert median_ok(it_golden(g), a)
    a[24] = 80.0                                   # median of 8, 8, 8, 80 = 8: still passes
    assert median_ok(it_golden(g), a)
    a[23] = 80.0                                   # median of 8, 8, 80, 80 = 44: fails
    assert not median_ok(it_golden(g), a)


def test_no_finite_golden_step_fails():
    assert not median_ok(it_golden({s: math.inf for s in range(1, 30)}), {})


def test_step_interval_five_window():
    # Megatron's dev_dgx_a100 files: steps 1, 5, 10, ..., 100 -> window steps 30, 35, 40, 45
    g = {s: 8.0 for s in [1] + list(range(5, 101, 5))}
    a = {s: (8.0 if s in (30, 35, 40, 45) else 80.0) for s in g}
    assert median_ok(it_golden(g), a)
    a[30] = a[35] = a[40] = 8.5                     # median of 8, 8.5, 8.5, 8.5 = 8.5
    assert not median_ok(it_golden(g), a)


@pytest.mark.parametrize("missing,expected", [
    (1, True),     # 16 values, 1 inf: median = mean of the 8th and 9th smallest = 8.0
    (7, True),     # 9 finite, 7 inf: 8th and 9th smallest still finite
    (8, False),    # 8 finite, 8 inf: (8.0 + inf) / 2 = inf
])
def test_median_counts_missing_steps_as_inf(missing, expected):
    g = {s: 8.0 for s in range(1, 101)}
    a = {s: v for s, v in g.items() if not 30 <= s < 30 + missing}
    assert median_ok(it_golden(g), a) is expected


def test_iteration_time_of_our_goldens_is_the_timing_check():
    g = golden({"iteration-time": {s: 8.0 for s in range(1, 21)}}, OURS)
    res = verdicts(g, {"iteration-time": {s: 8.0 for s in range(1, 21)}})
    assert set(res) == {"golden:iteration-time:timing"}
