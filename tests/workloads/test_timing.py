"""Load-proof timing: the timing check on the step's CPU time, the planted slowdowns, and the
slowdown caught end to end against a golden recorded in the same test run.

The end-to-end test makes no wall-clock assertion: it records a golden for a small GPT case
with ``runner golden update`` and then runs the same case, clean and with ``inject_fault:
slow_step_4x``, against it; the verdicts come from the ``timing`` check's CPU-time rule.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.compare.golden import CompareOptions, GoldenFile, GoldenSeries, check_metrics

torch = pytest.importorskip("torch")

from workloads.common.timing import double_compute, repeat_compute  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CPU = "iteration-cpu-time"


def _ours(metrics):
    return GoldenFile(Path("golden_values_dev_cpu.json"),
                      {k: GoldenSeries.from_mapping(v) for k, v in metrics.items()}, {"precision": "full"})


STEPS = range(1, 21)
GOLD = {"iteration-time": {s: 0.2 for s in STEPS}, CPU: {s: 0.05 for s in STEPS}}


def _timing(run, golden=GOLD, **options):
    (c,) = [c for c in check_metrics(_ours(golden), run, CompareOptions(**options)) if "iteration-time" in c.name]
    return c


def _run(wall: float, cpu: float) -> dict:
    return {"iteration-time": {s: wall for s in STEPS}, CPU: {s: cpu for s in STEPS}}


def test_a_busy_machine_stretches_wall_time_only_and_passes():
    c = _timing(_run(0.8, 0.05))                  # 4x the wall time, the same CPU seconds
    assert c.name == "golden:iteration-time:timing" and c.passed, c
    assert c.data["ratio"] == pytest.approx(1.0) and c.data["raw_actual_median_s"] == pytest.approx(0.8)


def test_the_bound_is_one_plus_rtol_of_the_cpu_time():
    assert _timing(_run(0.2, 0.05 * 2.0)).passed                  # default rtol 1.0: 2x passes
    c = _timing(_run(0.2, 0.05 * 2.01))
    assert not c.passed
    assert "iteration-time timing over steps 5-20" in c.detail and "2.01x the golden's" in c.detail
    assert "allowed up to 2x" in c.detail and f"{CPU} median" in c.detail
    c = _timing(_run(0.2, 0.15))                                   # 3x the compute fails at any wall time
    assert not c.passed and "3x the golden's" in c.detail
    assert not _timing(_run(0.1, 0.15)).passed
    over = {"iteration-time": {"rtol": 0.4}}
    assert not _timing(_run(0.2, 0.0705), overrides=over).passed   # a case may tighten it
    assert _timing(_run(0.2, 0.0699), overrides=over).passed


def test_faster_passes_and_is_reported():
    c = _timing(_run(0.2, 0.025))
    assert c.passed and c.data["ratio"] == pytest.approx(0.5)


def test_only_the_window_counts_and_missing_steps_are_inf():
    run = _run(0.2, 0.05)
    run[CPU] = {s: (9.0 if s < 5 else 0.05) for s in STEPS}
    assert _timing(run).passed                      # steps 1-4 are outside Megatron's 5-20 window
    for s in range(5, 13):                          # 8 of 16 window steps missing: median inf
        del run[CPU][s]
    c = _timing(run)
    assert not c.passed and "inf" in c.detail


def test_the_wall_time_does_not_decide():
    c = _timing(_run(100.0, 0.05))
    assert c.passed and c.data["raw_expected_median_s"] == pytest.approx(0.2)


@pytest.mark.parametrize("where", ["golden", "run"])
def test_without_cpu_time_the_raw_median_is_compared(where):
    gold, mk = (({"iteration-time": GOLD["iteration-time"]}, lambda w: _run(w, 0.05)) if where == "golden"
                else (GOLD, lambda w: {"iteration-time": {s: w for s in STEPS}}))
    c = _timing(mk(0.399), gold)
    assert c.passed and "raw median" in c.data["note"]             # rtol 1.0 of the raw median
    c = _timing(mk(0.401), gold)
    assert not c.passed and f"no {CPU} recorded: raw median compared" in c.detail


def test_a_suite_can_choose_megatrons_raw_median():
    res = check_metrics(_ours(GOLD), _run(0.6, 0.05), CompareOptions(overrides={"iteration-time": {
        "checks": ["median"], "rtol": 0.05}}))
    assert [(c.name, c.passed) for c in res] == [("golden:iteration-time:median", False)]


def test_cpu_time_has_no_check_of_its_own():
    res = check_metrics(_ours(GOLD), _run(0.2, 0.5), CompareOptions())
    assert [c.name for c in res] == ["golden:iteration-time:timing"]


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


def test_repeat_compute_four_times_keeps_values_and_grads():
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(8, 8))
    x = torch.randn(4, 8)
    calls = []
    layer[0].register_forward_hook(lambda m, a, o: calls.append(1))
    ref = layer(x)
    ref.sum().backward()
    ref_grad = layer[0].weight.grad.clone()
    layer.zero_grad()
    calls.clear()
    repeat_compute([layer], 4)
    out = layer(x)
    out.sum().backward()
    assert torch.equal(out, ref) and torch.equal(layer[0].weight.grad, ref_grad)
    assert len(calls) == 4                       # the inner Linear ran four times
    with pytest.raises(ValueError, match="at least 2"):
        repeat_compute([layer], 1)


# -- end to end: golden recorded here, then the clean case passes and the slowed one fails -------
ARGS = dict(test_type="regular", num_layers=4, hidden_size=128, num_attention_heads=4, seq_length=64,
            max_position_embeddings=64, vocab_size=128, micro_batch_size=4, global_batch_size=16,
            train_iters=12, lr=0.003, min_lr=0.0003, lr_warmup_fraction=0.2, pipeline_model_parallel_size=1,
            use_distributed_optimizer=True, num_documents=300)
SPEC = """
defaults:
  kind: gpt
  timeout: 300
  resources: {{nodes: 1, nproc_per_node: 2}}
  args: {args}
cases:
  - name: timing_clean
  - name: timing_again
    golden: {{name: timing_clean}}
  - name: timing_slow
    args: {{inject_fault: slow_step_4x}}
    golden: {{name: timing_clean}}
"""


@pytest.mark.slow
def test_planted_4x_slowdown_fails_the_timing_check_and_the_clean_case_passes(runner_project) -> None:
    runner_project.write("specs/timing.yaml", SPEC.format(args=json.dumps(ARGS)))
    pp = [str(ROOT)]
    upd = runner_project.run("golden", "update", "specs", "-k", "timing_clean", "-j", "1", python_path=pp,
                             timeout=600)
    assert upd.exit_code == 0 and upd.verdicts == {"timing_clean": "SKIPPED"}, upd    # no golden yet
    golden = json.loads((runner_project.path / "golden" / "timing_clean" / "golden_values_dev_cpu.json").read_text())
    assert CPU in golden and len(golden[CPU]["values"]) == ARGS["train_iters"]

    run = runner_project.run("run", "specs", "-k", "not timing_clean", "-j", "1", python_path=pp, timeout=600)
    assert run.exit_code == 1 and run.verdicts == {"timing_again": "PASSED", "timing_slow": "FAILED"}, run
    checks = {c["name"]: c for c in run.case("timing_again")["checks"]}
    assert checks["golden:iteration-time:timing"]["passed"], checks["golden:iteration-time:timing"]

    slow = run.case("timing_slow")
    failed = [c for c in slow["checks"] if not c["passed"]]
    # only the time changed: loss, num-zeros and memory still match the golden exactly
    assert [c["name"] for c in failed] == ["golden:iteration-time:timing"], failed
    assert "iteration-time timing" in failed[0]["detail"] and "the step's CPU time is" in failed[0]["detail"]
    assert failed[0]["data"]["ratio"] > failed[0]["data"]["bound"] == 2.0
    assert "iteration-time" in slow["detail"]


def test_a_saturated_machine_makes_a_timing_failure_inconclusive_not_failed():
    # the golden's steps: 0.2 s wall for 0.05 s CPU (wall/CPU 4). A saturated run's steps take
    # 16 s of wall per CPU second (4x the golden's) and their CPU time grew 2.4x:
    # cache and core sharing, not the code. Not judged, said so.
    c = _timing(_run(1.92, 0.12))
    assert c.passed and c.skipped and c.data["inconclusive"] and c.data["contention"] == pytest.approx(4.0)
    assert "timing not judged: the machine was saturated" in c.detail and "2.4x the golden's" in c.detail
    # within the contention limit the same CPU time fails
    c = _timing(_run(0.48, 0.12))
    assert not c.passed and not c.skipped and "2.4x the golden's" in c.detail
    # a real 3x compute slowdown stretches wall and CPU alike: judged, and it fails
    c = _timing(_run(0.6, 0.15))
    assert not c.passed and c.data["contention"] == pytest.approx(1.0)
    # a saturated run that is within the bound simply passes
    c = _timing(_run(1.6, 0.06))
    assert c.passed and not c.skipped

def test_an_inconclusive_timing_check_is_named_in_the_passed_verdict():
    from runner.compare.verdict import passed_detail

    c = _timing(_run(1.92, 0.12))
    fine = _timing(_run(0.2, 0.05))
    assert passed_detail({"summary": "3 steps"}, [fine, c]) == f"3 steps; {c.detail}"
    assert passed_detail({}, [fine]) == ""
