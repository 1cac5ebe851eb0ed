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


def test_plan_is_one_equivalence_launch_of_the_moe_functions() -> None:
    args = {"variant": "moe_shared_expert", "level": "chunk", "layers": [1, 2], "inject_fault": "swap_node_calls"}
    (plan,) = KIND.plan(make_case(args))
    assert plan.name == "main" and plan.entry == "runner.kinds.equivalence_worker:run"
    for role in ("setup", "reference", "candidate"):
        assert plan.args[role]["module"] == "workloads.moe.worker" and plan.args[role]["function"] == role
    assert plan.args["expect"] == {"grads": "all_parameters"} and plan.args["compare"] == {"mode": "bitwise"}
    assert plan.args["params"]["inject_fault"] == "swap_node_calls" and "inject_fault" not in plan.args
    assert plan.args["params"]["layers"] == [1, 2] and plan.args["seed"] == DEFAULTS["seed"]
    (restore,) = KIND.plan(make_case({"inject_fault": "skip_weight_restore"}))
    assert restore.args["inject_fault"] == "skip_weight_restore" and "inject_fault" not in restore.args["params"]


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
    # which all-to-alls had compute in flight: in the steady steps the forward dispatch
    # overlaps the expert weight gradients (the dgrad/wgrad split)
    fwd = info["a2a_in_flight"]["nodes"]["f.dispatch.forward"]
    assert fwd["total"] == SMALL["microbatches"] and fwd["with_compute"] == SMALL["microbatches"] - 1
    assert "b.mlp.backward_dw" in fwd["compute"]
    assert info["summary"].startswith("bit-identical, node order as documented; ")


@pytest.mark.slow
def test_missing_capture_is_a_failed_check_naming_it(passing_run, tmp_path: Path) -> None:
    args, outcome = passing_run
    copy = tmp_path / "main"
    shutil.copytree(outcome.launch.results_dir, copy)
    (copy / "captures" / "candidate" / "rank2.pt").unlink()
    moved = outcome.__class__(outcome.launch.__class__(**{**outcome.launch.to_json(), "results_dir": str(copy)}),
                              outcome.outcome)
    checks = {c.name: c for c in KIND.compare(make_case(args), [moved], CTX)}
    assert not checks["captures:rank2"].passed
    assert "'candidate' is missing" in checks["captures:rank2"].detail
    assert checks["captures:rank0"].passed


# what each planted fault must be reported on (the first failing key of rank 0's detail)
FAULT_DETAIL = {
    "skip_weight_restore": "rank 0: grads.model.layers.0.",
    "skip_zero_grad": "rank 0: grads.model.layers.0.",
    "wrong_microbatch_grad": "rank 0: grads.model.layers.0.attn.",
    "swap_node_calls": "rank 0: trace: item 8 differs (expected 'b.mlp.backward_dw mb0 c0 l0', "
                       "got 'b.dispatch.backward mb0 c0 l0'",
    "skip_wait": "rank 0: grads.model.layers.0.",
}


@pytest.mark.slow
def test_planted_faults_fail_through_the_runner_cli(tmp_path: Path) -> None:
    spec = tmp_path / "faults.yaml"
    spec.write_text(json.dumps({
        "defaults": {"kind": "a2a_overlap", "timeout": 300, "resources": {"nodes": 1, "nproc_per_node": 2}},
        "cases": [{"name": "fault_{fault}", "matrix": {"fault": list(FAULT_NAMES)},
                   "args": {"variant": "moe", "num_experts": 4, **SMALL, "poison_receive_buffers": True,
                            "inject_fault": "{fault}"}}],
    }))
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "--results-dir", str(tmp_path / "res"),
                           "--json", str(report), "--platform", "cpu"],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cases = {c["name"]: c for c in json.loads(report.read_text())["cases"]}
    assert set(cases) == {f"fault_{f}" for f in FAULT_NAMES}
    for fault in FAULT_NAMES:
        case = cases[f"fault_{fault}"]
        assert case["verdict"] == "FAILED", (fault, case["detail"])
        assert case["detail"].startswith(FAULT_DETAIL[fault]), (fault, case["detail"])
        assert "ranks differing: 0, 1 of 2" in case["detail"], (fault, case["detail"])
        assert f"fault_{fault}" in proc.stdout
    assert "got nan" in cases["fault_skip_wait"]["detail"]      # the poisoned buffer was read
