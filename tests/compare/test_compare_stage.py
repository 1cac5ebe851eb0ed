"""The comparison stage: kinds declare what to compare; checks come from the registry, and a
plugin package adds one without any edit of runner/."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.compare.stage import CapturePairs, GoldenMetrics, RunAgreement, run_comparisons
from runner.plan.kind import CompareContext
from runner.plugins import PluginManager
from runner.records import Case, Launch, LaunchOutcome, Outcome, Resources

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "plugins" / "runner-plainrun"


def _outcome(tmp_path: Path, name: str, metrics: dict[int, dict[str, float]]) -> LaunchOutcome:
    rd = tmp_path / name
    (rd / "metrics").mkdir(parents=True)
    (rd / "metrics" / "rank0.jsonl").write_text("".join(json.dumps({"step": s, **m}) + "\n" for s, m in metrics.items()))
    launch = Launch("c", name, "script", "x:y", {}, 1, 1, 0, {}, 60.0, str(rd), "job")
    return LaunchOutcome(launch, Outcome.COMPLETED)


def _case(tmp_path: Path, compare: dict | None = None) -> Case:
    return Case("s.yaml::c", "c", "script", {}, Resources(), str(tmp_path / "s.yaml"), compare=compare or {})


def _golden(tmp_path: Path, values: dict[int, float]) -> None:
    from runner.compare.golden import write_golden

    write_golden(tmp_path / "golden" / "c" / "golden_values_dev_cpu.json", {"lm loss": values}, {"platform": "cpu"})


def test_stage_reads_launches_and_golden_in_one_place(tmp_path):
    _golden(tmp_path, {1: 3.0, 2: 2.5, 3: 2.0})
    run1 = _outcome(tmp_path, "run1", {1: {"lm loss": 3.0}, 2: {"lm loss": 2.5}, 3: {"lm loss": 2.0}})
    run2 = _outcome(tmp_path, "run2", {2: {"lm loss": 2.5}, 3: {"lm loss": 2.0000001}})
    ctx = CompareContext(tmp_path / "golden", "cpu")
    res = run_comparisons(_case(tmp_path), [run1, run2], ctx,
                          [GoldenMetrics("run1"), RunAgreement("run1", "run2", 1, ("lm loss",))])
    got = {c.name: c.passed for c in res}
    assert got == {"golden:lm loss:deterministic": True, "golden:lm loss:approximate": True,
                   "resume:lm loss:deterministic": False, "resume:lm loss:approximate": True}
    assert "first at step 3" in next(c for c in res if c.name == "resume:lm loss:deterministic").detail
    # a request naming a launch that did not run fails, it is not ignored
    (bad,) = run_comparisons(_case(tmp_path), [run1], ctx, [GoldenMetrics("main")])
    assert not bad.passed and "no launch named 'main'" in bad.detail
    missing = run_comparisons(_case(tmp_path), [run1], CompareContext(tmp_path / "elsewhere", "cpu"), [GoldenMetrics("run1")])
    assert [c.passed for c in missing] == [False] and "golden file not found" in missing[0].detail


def test_stage_applies_select_and_deterministic(tmp_path):
    _golden(tmp_path, {1: 3.0, 2: 2.5})
    run = _outcome(tmp_path, "main", {1: {"lm loss": 3.01}, 2: {"lm loss": 2.5}})
    ctx = CompareContext(tmp_path / "golden", "cpu")
    res = run_comparisons(_case(tmp_path, {"deterministic": False}), [run], ctx, [GoldenMetrics()])
    assert [(c.name, c.passed, c.skipped) for c in res] == [("golden:lm loss:deterministic", True, True),
                                                             ("golden:lm loss:approximate", True, False)]
    res = run_comparisons(_case(tmp_path, {"select": ["lm loss", "num-zeros"]}), [run], ctx, [GoldenMetrics()])
    assert ("golden:num-zeros", False) in [(c.name, c.passed) for c in res]


def test_capture_pairs_compare_rank_by_rank(tmp_path):
    torch = pytest.importorskip("torch")
    run = _outcome(tmp_path, "main", {})
    caps = Path(run.launch.results_dir) / "captures"
    for name, value in (("reference", 1.0), ("candidate", 1.0 + 2**-20)):
        (caps / name).mkdir(parents=True)
        torch.save({"out": torch.full((3,), value)}, caps / name / "rank0.pt")
    ctx = CompareContext(tmp_path, "cpu")
    (r,) = run_comparisons(_case(tmp_path), [run], ctx, [CapturePairs("reference", "candidate")])
    assert r.name == "captures:rank0" and not r.passed and "out" in r.detail
    (r,) = run_comparisons(_case(tmp_path, {"tensors": {"mode": "close", "rtol": 1e-5}}), [run], ctx,
                           [CapturePairs("reference", "candidate")])
    assert r.passed


def test_builtin_checks_are_registered_like_a_plugin():
    pm = PluginManager()
    pm.load(entry_points=False)
    assert {"deterministic", "approximate", "median", "bitwise", "close", "timing"} <= set(pm.checks.ids())
    assert pm.checks.get("median").plugin == "checks"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    import shutil

    target = tmp_path_factory.mktemp("site")
    src = tmp_path_factory.mktemp("src") / "runner-plainrun"
    shutil.copytree(PLUGIN_SRC, src)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True, capture_output=True, cwd=src)
    return target


TRAIN = '''
import json, os, sys
final = float(sys.argv[1])
with open(os.environ["RUNNER_METRICS_FILE"], "w") as fh:
    for s in range(1, 6):
        fh.write(json.dumps({"step": s, "lm loss": final if s == 5 else 10.0 - s}) + "\\n")
'''


@pytest.mark.slow
def test_a_plugin_package_adds_a_check(runner_project, plugin_site):
    spec = """
        defaults:
          kind: script
          compare: {{metrics: {{lm loss: {{checks: [final], rtol: 0.1}}}}}}
        cases:
          - {{name: tiny, args: {{script: t.py, argv: ["{final}"], steps: [1, 5]}}}}
    """
    runner_project.write("specs/t.py", TRAIN)
    runner_project.write("golden/tiny/golden_values_dev_cpu.json", json.dumps(
        {"lm loss": {"start_step": 1, "end_step": 5, "step_interval": 1,
                     "values": {"1": 9.0, "2": 8.0, "3": 7.0, "4": 6.0, "5": 5.0}}}))
    site = [str(plugin_site)]
    runner_project.write("specs/s.yaml", spec.format(final=5.4))
    ok = runner_project.run("run", "specs", python_path=site)
    assert ok.exit_code == 0, ok
    assert [c["name"] for c in ok.case("tiny")["checks"] if c["name"].startswith("golden")] == ["golden:lm loss:final"]
    runner_project.write("specs/s.yaml", spec.format(final=6.0))
    bad = runner_project.run("run", "specs", python_path=site)
    assert bad.exit_code == 1 and "lm loss final: step 5: expected 5.0, got 6.0" in bad.case("tiny")["detail"]
    # without the plugin the check name is unknown to the schema: a usage error naming the key
    gone = runner_project.run("validate", "specs", "-p", "no:plainrun", python_path=site)
    assert gone.exit_code == 4 and "'final'" in gone.stderr and "compare.metrics.lm loss.checks" in gone.stderr
