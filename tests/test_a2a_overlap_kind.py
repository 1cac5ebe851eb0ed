"""The ``a2a_overlap`` case kind: schema, validation, plan, and the comparison — including
the negative controls: every planted fault must be reported FAILED with the tensor named,
at the worker/compare level and through ``runner run``."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from moe_helpers import REPO, make_case, run_worker
from runner.errors import CaseError
from runner.plan.kind import CompareContext
from workloads.moe.faults import FAULTS
from workloads.moe.kind import DEFAULTS, FAULT_NAMES, A2AOverlapKind

KIND = A2AOverlapKind()
CTX = CompareContext(golden_root=REPO / "golden", platform="cpu")
SMALL = {"hidden": 32, "heads": 2, "seq_len": 16, "microbatches": 3}


def test_kind_module_imports_without_torch() -> None:
    code = "import sys, workloads.moe.kind; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_fault_names_match_the_faults_module() -> None:
    assert set(FAULT_NAMES) == set(FAULTS)


def test_args_schema_is_valid_and_documents_defaults() -> None:
    schema = KIND.args_schema
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(DEFAULTS)
    for key, value in DEFAULTS.items():
        assert schema["properties"][key]["default"] == value
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"levle": "layer"})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"variant": "sparse"})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"inject_fault": "no_such_fault"})


@pytest.mark.parametrize("args,world,platform,key,words", [
    ({"topk": 9, "num_experts": 8}, 4, "cpu", "args.topk", "larger than num_experts"),
    ({"num_experts": 6}, 4, "cpu", "args.num_experts", "not divisible by the world size 4"),
    ({"hidden": 30, "heads": 4}, 4, "cpu", "args.hidden", "not divisible by heads"),
    ({"level": "chunk"}, 4, "cpu", "args.layers", "needs 'layers'"),
    ({"level": "layer", "layers": [1]}, 4, "cpu", "args.layers", "only used at level 'chunk'"),
    ({"dtype": "bfloat16"}, 4, "gpu_tesla_v100_sxm2_16gb", "args.dtype", "not supported"),
])
def test_validate_rejects_bad_combinations(args, world, platform, key, words) -> None:
    with pytest.raises(CaseError) as exc:
        KIND.validate(make_case(args, world, platform))
    assert exc.value.key == key
    assert words in str(exc.value)


def test_validate_accepts_good_cases() -> None:
    KIND.validate(make_case({}, 4))
    KIND.validate(make_case({"level": "chunk", "layers": [2, 1], "dtype": "bfloat16"}, 4, "dgx_h100"))


def test_plan_is_one_launch_of_the_worker() -> None:
    args = {"variant": "moe_shared_expert", "level": "chunk", "layers": [1, 2]}
    (plan,) = KIND.plan(make_case(args))
    assert plan.name == "main" and plan.entry == "workloads.moe.worker:run" and dict(plan.args) == args


# -- real runs (4 gloo ranks through the worker protocol) -----------------------------------------
@pytest.fixture(scope="module")
def passing_run(tmp_path_factory):
    args = {"variant": "moe_shared_expert", **SMALL}
    outcome = run_worker(tmp_path_factory.mktemp("pass") / "main", args)
    assert outcome.exit_code == 0, outcome.detail
    return args, outcome


@pytest.mark.slow
def test_compare_passes_and_reports_the_ratio(passing_run) -> None:
    args, outcome = passing_run
    checks = KIND.compare(make_case(args), [outcome], CTX)
    assert [c.name for c in checks] == [f"captures:rank{r}" for r in range(4)]
    assert all(c.passed for c in checks), [c.detail for c in checks]
    info = KIND.info(make_case(args), [outcome])
    assert info["overlap_ratio"] > 0 and info["time_reference_s"] > 0


@pytest.mark.slow
def test_missing_capture_is_a_failed_check_naming_it(passing_run, tmp_path: Path) -> None:
    args, outcome = passing_run
    copy = tmp_path / "main"
    shutil.copytree(outcome.launch.results_dir, copy)
    (copy / "captures" / "overlapped" / "rank2.pt").unlink()
    moved = outcome.__class__(outcome.launch.__class__(**{**outcome.launch.to_json(), "results_dir": str(copy)}),
                              outcome.outcome)
    checks = {c.name: c for c in KIND.compare(make_case(args), [moved], CTX)}
    assert not checks["captures:rank2"].passed
    assert "'overlapped' is missing" in checks["captures:rank2"].detail
    assert checks["captures:rank0"].passed


# which tensor each planted fault must be reported on (first differing key, sorted)
FAULT_TENSORS = {
    "skip_weight_restore": "grad.layers.0.",
    "skip_zero_grad": "grad.layers.0.",
    "wrong_microbatch_grad": "grad.layers.0.attn.",
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULT_NAMES)
def test_planted_fault_fails_the_comparison_naming_the_tensor(fault: str, tmp_path: Path) -> None:
    args = {"variant": "moe", **SMALL, "inject_fault": fault}
    outcome = run_worker(tmp_path / "main", args)
    assert outcome.exit_code == 0, outcome.detail
    checks = KIND.compare(make_case(args), [outcome], CTX)
    failed = [c for c in checks if not c.passed]
    assert failed, f"planted fault {fault} was not detected"
    for c in failed:
        assert f"rank {c.data['rank']}: {FAULT_TENSORS[fault]}" in c.detail
        assert "elements differ, max abs diff" in c.detail
        assert c.data["mismatches"][0]["count"] > 0
    if fault == "skip_weight_restore":
        keys = {m["key"] for c in failed for m in c.data["mismatches"]}
        assert "output.mb0" in keys


@pytest.mark.slow
def test_planted_faults_fail_through_the_runner_cli(tmp_path: Path) -> None:
    spec = tmp_path / "faults.yaml"
    spec.write_text(json.dumps({
        "defaults": {"kind": "a2a_overlap", "timeout": 300, "resources": {"nodes": 1, "nproc_per_node": 2}},
        "cases": [{"name": "fault_{fault}", "matrix": {"fault": list(FAULT_NAMES)},
                   "args": {"variant": "dense", "num_experts": 4, **SMALL, "inject_fault": "{fault}"}}],
    }))
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "--results-dir", str(tmp_path / "res"),
                           "--json", str(report), "--platform", "cpu"],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cases = {c["name"]: c for c in json.loads(report.read_text())["cases"]}
    assert set(cases) == {f"fault_{f}" for f in FAULT_NAMES}
    for name, case in cases.items():
        assert case["verdict"] == "FAILED", (name, case["detail"])
        assert "grad.layers.0." in case["detail"], (name, case["detail"])
        assert name in proc.stdout
