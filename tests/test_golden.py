"""Golden values: Megatron's real files, the default rules, golden update, bad golden files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from runner.compare.golden import check_metrics, load_golden, series_equal, write_golden
from runner.errors import UsageError

PP4_RESUME = "gpt3_mcore_te_tp1_pp4_vp1_resume_torch_dist_dist_optimizer_overlap_grad_reduce_param_gather"


def _actual(g):
    return {k: dict(v.values) for k, v in g.metrics.items()}


def test_every_real_megatron_golden_loads(megatron_cases):
    files = sorted(megatron_cases.glob("*/golden_values_*.json"))
    assert len(files) >= 15
    for f in files:
        g = load_golden(f)
        assert "lm loss" in g.metrics
        assert not g.full_precision
        # a run that reproduces the golden passes every default check
        assert all(c.passed for c in check_metrics(g, _actual(g))), f


def test_perturbed_megatron_golden_names_metric_and_step(megatron_cases):
    g = load_golden(megatron_cases / PP4_RESUME / "golden_values_dev_dgx_h100.json")
    act = _actual(g)
    act["lm loss"][50] += 0.5
    act["lm loss"][75] += 1e-4          # inside rtol, but not exact
    del act["mem-allocated-bytes"]
    checks = {c.name: c for c in check_metrics(g, act)}
    det = checks["golden:lm loss:deterministic"]
    assert not det.passed and "2/21 steps differ" in det.detail and "first at step 50" in det.detail
    assert "expected 10." in det.detail or "expected 9." in det.detail
    assert "5-decimal" in det.detail
    assert checks["golden:lm loss:approximate"].passed          # 1 failing step of 21 is allowed
    assert not checks["golden:mem-allocated-bytes"].passed
    assert "missing from the run" in checks["golden:mem-allocated-bytes"].detail


def test_approximate_allows_k_of_n_and_median_window():
    steps = {s: 1.0 for s in range(1, 101)}
    g = None
    from runner.compare.golden import GoldenFile, GoldenSeries

    g = GoldenFile(Path("g.json"), {"lm loss": GoldenSeries(1, 100, 1, steps),
                                     "iteration-time": GoldenSeries(1, 100, 1, dict(steps))}, {"precision": "full"})
    act = {"lm loss": dict(steps), "iteration-time": dict(steps)}
    act["lm loss"][10] = 2.0            # k = 1 of 100 allowed
    res = {c.name: c for c in check_metrics(g, act)}
    assert res["golden:lm loss:approximate"].passed and not res["golden:lm loss:deterministic"].passed
    act["lm loss"][11] = 2.0
    res = {c.name: c for c in check_metrics(g, act)}
    assert not res["golden:lm loss:approximate"].passed
    assert "at most 1 allowed" in res["golden:lm loss:approximate"].detail
    # iteration-time: only the steady window (30-45) counts
    act["iteration-time"][2] = 50.0
    assert {c.name: c for c in check_metrics(g, act)}["golden:iteration-time:median"].passed
    for s in range(30, 46):
        act["iteration-time"][s] = 1.2
    med = {c.name: c for c in check_metrics(g, act)}["golden:iteration-time:median"]
    assert not med.passed and "steps 30-45" in med.detail


def test_nan_golden_matches_missing_step(tmp_path):
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"lm loss": {"start_step": 1, "end_step": 3, "step_interval": 1,
                                         "values": {"1": 5.0, "2": "nan", "3": 4.0}}}))
    g = load_golden(p)
    assert math.isnan(g.metrics["lm loss"].values[2])
    assert all(c.passed for c in check_metrics(g, {"lm loss": {1: 5.0, 3: 4.0}}))


@pytest.mark.parametrize("text,needle", [
    ("{not json", "malformed golden file"),
    ("[]", "must hold an object"),
    ('{"lm loss": {"values": {"1": "x"}}}', "expected a number"),
    ('{"lm loss": 3}', "expected {start_step"),
])
def test_malformed_golden(tmp_path, text, needle):
    p = tmp_path / "g.json"
    p.write_text(text)
    with pytest.raises(UsageError, match=needle):
        load_golden(p)


def test_write_is_full_precision_and_atomic(tmp_path):
    p = tmp_path / "case" / "golden_values_dev_cpu.json"
    write_golden(p, {"lm loss": {1: 1 / 3, 2: math.nan}}, {"platform": "cpu"})
    g = load_golden(p)
    assert g.full_precision and g.metrics["lm loss"].values[1] == 1 / 3
    assert list(p.parent.iterdir()) == [p]          # no temporary file left behind


def test_series_equal_detail():
    r = series_equal("lm loss", {5: 1.0, 6: 2.0}, {5: 1.0, 6: 2.5})
    assert not r.passed and "step 6" in r.detail and "abs diff 0.5" in r.detail


REPLAY = '''
"""Writes the values of a golden file as this run's metrics, perturbing one step."""
import json, os, sys
golden, step, delta = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
data = json.load(open(golden))
steps = sorted({int(s) for m in data.values() if isinstance(m, dict) and "values" in m for s in m["values"]})
with open(os.environ["RUNNER_METRICS_FILE"], "w") as fh:
    for s in steps:
        rec = {"step": s}
        for name, m in data.items():
            v = m.get("values", {}).get(str(s)) if isinstance(m, dict) else None
            if v is None or v == "nan":
                continue
            rec[name] = v + (delta if (name == "lm loss" and s == step) else 0.0)
        fh.write(json.dumps(rec) + "\\n")
'''


@pytest.mark.slow
def test_golden_mismatch_through_the_runner(runner_project, megatron_cases):
    golden = megatron_cases / PP4_RESUME / "golden_values_lts_dgx_a100.json"
    runner_project.write("specs/replay.py", REPLAY)
    runner_project.write("specs/s.yaml", f"""
        defaults: {{kind: script, timeout: 120}}
        cases:
          - name: same
            args: {{script: replay.py, argv: ["{golden}", "50", "0.0"]}}
            golden: {{file: "{golden}"}}
          - name: perturbed
            args: {{script: replay.py, argv: ["{golden}", "50", "0.75"]}}
            golden: {{file: "{golden}"}}
    """)
    r = runner_project.run("run", "specs")
    assert r.exit_code == 1, r
    assert r.verdicts == {"same": "PASSED", "perturbed": "FAILED"}
    detail = r.case("perturbed")["detail"]
    assert detail.startswith("lm loss exact: 1/") and "first at step 50" in detail, detail
    assert "perturbed" in r.stdout and "first at step 50" in r.stdout


@pytest.mark.slow
def test_golden_update_then_edit_fails(runner_project):
    runner_project.write("specs/t.py", '''
import json, os
with open(os.environ["RUNNER_METRICS_FILE"], "w") as fh:
    for s in range(1, 11):
        fh.write(json.dumps({"step": s, "lm loss": 10.0 / s, "num-zeros": float(s % 3)}) + "\\n")
''')
    runner_project.write("specs/s.yaml", """
        cases:
          - {name: tiny, kind: script, args: {script: t.py, steps: [1, 10]}}
    """)
    missing = runner_project.run("run", "specs")
    assert missing.exit_code == 4 and "golden file not found" in missing.stderr
    up = runner_project.run("golden", "update", "specs")
    assert up.exit_code == 0, up
    path = runner_project.path / "golden" / "tiny" / "golden_values_dev_cpu.json"
    data = json.loads(path.read_text())
    assert data["__meta__"]["fingerprint"]["platform"] == "cpu" and data["__meta__"]["fingerprint"]["torch"]
    assert runner_project.run("run", "specs").exit_code == 0
    data["lm loss"]["values"]["7"] = 1.5
    path.write_text(json.dumps(data))
    r = runner_project.run("run", "specs")
    assert r.exit_code == 1 and "first at step 7" in r.case("tiny")["detail"]
    again = runner_project.run("golden", "update", "specs", "--only-failing")
    assert again.exit_code == 0 and "lm loss: 1 step(s) changed" in again.stdout
    assert runner_project.run("run", "specs").exit_code == 0
    # a golden whose step range differs from the case's is rejected before anything runs
    runner_project.write("specs/s.yaml", """
        cases:
          - {name: tiny, kind: script, args: {script: t.py, steps: [1, 20]}}
    """)
    r = runner_project.run("run", "specs")
    assert r.exit_code == 4 and "covers steps 1..10, the case runs steps 1..20" in r.stderr
    path.write_text("{broken")
    r = runner_project.run("validate", "specs")
    assert r.exit_code == 4 and "malformed golden file" in r.stderr and "golden_values_dev_cpu.json:1:2" in r.stderr
