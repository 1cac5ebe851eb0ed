"""Load-proof timing: the calibration kernel, the planted 2x slowdown, and the timing check."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.compare.golden import CompareOptions, GoldenFile, GoldenSeries, check_metrics

torch = pytest.importorskip("torch")

from workloads.common.timing import CalibrationKernel, double_compute  # noqa: E402


def _ours(metrics):
    return GoldenFile(Path("golden_values_dev_cpu.json"),
                      {k: GoldenSeries.from_mapping(v) for k, v in metrics.items()}, {"precision": "full"})


STEPS = range(1, 21)
GOLD = {"iteration-time": {s: 0.2 for s in STEPS}, "calibration-time": {s: 0.01 for s in STEPS}}


def _timing(run, golden=GOLD, **options):
    (c,) = [c for c in check_metrics(_ours(golden), run, CompareOptions(**options)) if "iteration-time" in c.name]
    return c


def test_a_busy_machine_slows_both_and_passes():
    # 3x slower machine: step and calibration both 3x: ratio 1
    run = {"iteration-time": {s: 0.6 for s in STEPS}, "calibration-time": {s: 0.03 for s in STEPS}}
    c = _timing(run)
    assert c.name == "golden:iteration-time:timing" and c.passed, c
    assert c.data["ratio"] == pytest.approx(1.0) and c.data["raw_actual_median_s"] == pytest.approx(0.6)


def test_twice_the_work_fails_on_the_same_machine():
    run = {"iteration-time": {s: 0.4 for s in STEPS}, "calibration-time": {s: 0.01 for s in STEPS}}
    c = _timing(run)
    assert not c.passed and "2x the golden's calibrated time" in c.detail and "allowed up to 1.5x" in c.detail
    run["iteration-time"] = {s: 0.3 for s in STEPS}           # 1.5x: the bound itself passes
    assert _timing(run).passed


def test_faster_passes_and_is_reported():
    run = {"iteration-time": {s: 0.1 for s in STEPS}, "calibration-time": {s: 0.01 for s in STEPS}}
    c = _timing(run)
    assert c.passed and c.data["ratio"] == pytest.approx(0.5)


def test_window_only_and_missing_steps_are_inf():
    run = {"iteration-time": {s: (9.0 if s < 5 or s > 20 else 0.2) for s in STEPS},
           "calibration-time": {s: 0.01 for s in STEPS}}
    assert _timing(run).passed                      # steps 1-4 are outside Megatron's 5-20 window
    for s in range(5, 13):                          # 8 of 16 window steps missing: median inf
        del run["iteration-time"][s]
    assert not _timing(run).passed


def test_without_calibration_the_raw_median_is_compared():
    gold = {"iteration-time": {s: 0.2 for s in STEPS}}
    c = _timing({"iteration-time": {s: 0.29 for s in STEPS}}, gold)
    assert c.passed and "raw median" in c.data["note"]      # rtol 0.5 of the raw median
    assert not _timing({"iteration-time": {s: 0.31 for s in STEPS}}, gold).passed


def test_a_suite_can_choose_megatrons_raw_median():
    run = {"iteration-time": {s: 0.6 for s in STEPS}, "calibration-time": {s: 0.03 for s in STEPS}}
    res = check_metrics(_ours(GOLD), run, CompareOptions(overrides={"iteration-time": {"checks": ["median"],
                                                                                       "rtol": 0.05}}))
    assert [(c.name, c.passed) for c in res] == [("golden:iteration-time:median", False)]


def test_calibration_kernel_is_fixed_work_and_touches_no_rng():
    k = CalibrationKernel()
    state = torch.get_rng_state()
    times = [k.time() for _ in range(3)]
    assert all(t > 0 for t in times) and torch.equal(state, torch.get_rng_state())


def test_double_compute_keeps_values_and_grads_and_doubles_the_calls():
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5))
    x = torch.randn(4, 8)
    calls = []
    layer[0].register_forward_hook(lambda m, a, o: calls.append(1))

    def step():
        torch.manual_seed(1)
        layer.zero_grad()
        out = layer(x)
        out.sum().backward()
        return out.detach().clone(), layer[0].weight.grad.clone(), torch.get_rng_state()

    out1, grad1, rng1 = step()
    assert len(calls) == 1
    double_compute([layer])
    out2, grad2, rng2 = step()
    assert torch.equal(out1, out2) and torch.equal(grad1, grad2) and torch.equal(rng1, rng2)
    assert len(calls) == 3                       # the inner Linear ran twice in the doubled step
