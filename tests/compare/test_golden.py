"""Golden values: Megatron's real files, golden files Megatron's reader loads, golden update,
bad golden files, per-step detail."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Union

import pytest
from paths import MEGATRON_CASES

from runner.compare.golden import (CompareOptions, check_metrics, load_golden, series_agreement, sidecar_path,
                                   write_golden)
from runner.errors import UsageError

PP4_RESUME = "gpt3_mcore_te_tp1_pp4_vp1_resume_torch_dist_dist_optimizer_overlap_grad_reduce_param_gather"
REPO = Path(__file__).resolve().parents[2]


def _actual(g):
    return {k: v.as_dict() for k, v in g.metrics.items()}


def _shared_goldens() -> list[Path]:
    return sorted(MEGATRON_CASES.glob("*/golden_values_*.json"))


def test_every_real_megatron_golden_passes_against_itself():
    files = _shared_goldens()
    assert len(files) >= 15
    for f in files:
        g = load_golden(f)
        assert "lm loss" in g.metrics and not g.full_precision
        checks = check_metrics(g, _actual(g))
        assert checks and all(c.passed and not c.skipped for c in checks), (f, [c for c in checks if not c.passed])
        # and with Megatron's default METRICS
        assert all(c.passed for c in check_metrics(g, _actual(g), CompareOptions(select=("lm loss", "num-zeros"))))


def test_perturbed_megatron_golden_names_metric_and_step():
    path = next(p for p in _shared_goldens() if p.parent.name == PP4_RESUME and p.name == "golden_values_dev_dgx_h100.json")
    g = load_golden(path)
    act = _actual(g)
    act["lm loss"][50] += 0.5
    act["lm loss"][75] += 1e-4          # inside rtol, but not exact
    del act["mem-allocated-bytes"]
    checks = {c.name: c for c in check_metrics(g, act)}
    det = checks["golden:lm loss:deterministic"]
    assert not det.passed and "2/21 steps differ" in det.detail and "first at step 50" in det.detail
    assert "5-decimal" in det.detail
    first = det.data["mismatches"][0]
    assert first["step"] == 50 and first["actual"] - first["expected"] == pytest.approx(0.5)
    assert first["abs_diff"] == pytest.approx(0.5) and first["rel_diff"] == pytest.approx(0.5 / first["expected"])
    # N = 21, k = 1: 20/21 >= 1 - 1/21, one failing step of 21 is allowed
    assert checks["golden:lm loss:approximate"].passed
    assert not checks["golden:mem-allocated-bytes"].passed
    assert "missing from the run" in checks["golden:mem-allocated-bytes"].detail


def test_nan_golden_matches_missing_step(tmp_path):
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"lm loss": {"start_step": 1, "end_step": 3, "step_interval": 1,
                                         "values": {"1": 5.0, "2": "nan", "3": 4.0}}}))
    g = load_golden(p)
    assert g.metrics["lm loss"].as_dict()[2] == math.inf and 2 in g.metrics["lm loss"].strings
    assert all(c.passed for c in check_metrics(g, {"lm loss": {1: 5.0, 3: 4.0}}))


@pytest.mark.parametrize("text,needle", [
    ("{not json", "malformed golden file"),
    ("[]", "must hold an object"),
    ('{"lm loss": {"values": {"1": true}}}', "expected a number or a string"),
    ('{"lm loss": {"values": {"x": 1.0}}}', "step keys must be integers"),
    ('{"lm loss": 3}', "expected {start_step"),
    ("{}", "holds no metrics"),
])
def test_malformed_golden(tmp_path, text, needle):
    p = tmp_path / "g.json"
    p.write_text(text)
    with pytest.raises(UsageError, match=needle):
        load_golden(p)


def _megatron_reader():
    """Megatron's golden reader, restated: a pydantic model per metric, every top-level key a metric."""
    pydantic = pytest.importorskip("pydantic")

    class GoldenValueMetric(pydantic.BaseModel):
        start_step: int
        end_step: int
        step_interval: int
        values: Dict[int, Union[int, float, str]]

    class GoldenValues(pydantic.RootModel):
        root: Dict[str, GoldenValueMetric]

    return lambda path: GoldenValues(**json.loads(Path(path).read_text())).root


def test_written_golden_loads_in_megatrons_reader_and_keeps_full_precision(tmp_path):
    read = _megatron_reader()
    p = tmp_path / "case" / "golden_values_dev_cpu.json"
    write_golden(p, {"lm loss": {1: 1 / 3, 2: math.nan}}, {"platform": "cpu"})
    assert read(p)["lm loss"].values == {1: 1 / 3, 2: "nan"}
    side = sidecar_path(p)
    assert side.name == "fingerprint_dev_cpu.json" and not side.match("golden_values_*")
    assert json.loads(side.read_text()) == {"precision": "full", "fingerprint": {"platform": "cpu"}}
    g = load_golden(p)
    assert g.full_precision and g.metrics["lm loss"].as_dict()[1] == 1 / 3
    assert sorted(x.name for x in p.parent.iterdir()) == ["fingerprint_dev_cpu.json", "golden_values_dev_cpu.json"]


def test_a_metric_map_with_a_fingerprint_key_breaks_megatrons_reader(tmp_path):
    # why the fingerprint lives in a sidecar: an extra top-level key is read as a metric
    pydantic = pytest.importorskip("pydantic")
    p = tmp_path / "golden_values_dev_cpu.json"
    p.write_text(json.dumps({"lm loss": {"start_step": 1, "end_step": 1, "step_interval": 1, "values": {"1": 2.0}},
                             "__meta__": {"precision": "full"}}))
    with pytest.raises(pydantic.ValidationError):
        _megatron_reader()(p)


def test_committed_goldens_load_in_megatrons_reader():
    read = _megatron_reader()
    files = sorted((REPO / "golden").glob("*/golden_values_*.json"))
    assert files
    for f in files:
        assert read(f), f
        assert load_golden(f).full_precision, f"{f}: its fingerprint sidecar is missing"


def test_resume_agreement_after_the_resume_step():
    run1 = {"lm loss": {s: 10.0 - s / 10 for s in range(1, 21)}}
    run2 = {"lm loss": {s: 10.0 - s / 10 for s in range(11, 21)}}
    assert [c.passed for c in series_agreement(run1, run2, ["lm loss"], 10)] == [True, True]
    run2["lm loss"][14] += 1e-12
    r, approx = series_agreement(run1, run2, ["lm loss"], 10)
    assert r.name == "resume:lm loss:deterministic" and not r.passed and "first at step 14" in r.detail
    assert approx.name == "resume:lm loss:approximate" and approx.passed
    (r,) = series_agreement(run1, run2, ["lm loss"], 10, deterministic=False)
    assert r.name == "resume:lm loss:approximate" and r.passed
    run2["lm loss"][14] = run1["lm loss"][14]
    del run2["lm loss"][20]
    r, _ = series_agreement(run1, run2, ["lm loss"], 10)
    assert not r.passed and "step 20" in r.detail and "missing from the run" in r.detail


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
def test_golden_mismatch_through_the_runner(runner_project):
    golden = next(p for p in _shared_goldens() if p.parent.name == PP4_RESUME and p.name == "golden_values_lts_dgx_a100.json")
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
    fp = json.loads(sidecar_path(path).read_text())["fingerprint"]
    assert "__meta__" not in data and fp["platform"] == "cpu" and fp["torch"]
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
