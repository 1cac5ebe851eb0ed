"""The ``equivalence`` kind end to end through ``runner run`` (torchrun, 2 gloo ranks): the
example over a user module passes; its planted-bug version and every negative control fail
(or error / skip) with the detail that names key, rank, count, max diff and index."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("equivalence_e2e")
    out = tmp / "report.json"
    proc = subprocess.run([sys.executable, "-m", "runner", "run", "specs/examples/equivalence_user.yaml",
                           "tests/data/equivalence_controls.yaml", "tests/data/equivalence_user_bug.yaml",
                           "--results-dir", str(tmp / "res"), "--json", str(out), "--platform", "cpu"],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 1, proc.stdout + proc.stderr   # failures expected: the controls
    return {c["name"]: c for c in json.loads(out.read_text())["cases"]}


def _verdict(report: dict[str, dict], name: str) -> tuple[str, str]:
    case = report[name]
    return case["verdict"], case["detail"]


@pytest.mark.slow
def test_example_over_a_user_module_passes_and_says_what_was_restored(report) -> None:
    for name in ("bucketed_ddp_1params_per_bucket", "bucketed_ddp_3params_per_bucket"):
        verdict, detail = _verdict(report, name)
        assert verdict == "PASSED", detail
        assert detail.startswith("26 tensors bit-identical on 2 ranks; every parameter's gradient captured; "
                                 "restored before candidate: weights of 1 module (6 tensors), 1 optimizer state, RNG (")


@pytest.mark.slow
def test_planted_bug_in_the_user_module_fails_with_key_rank_and_index(report) -> None:
    verdict, detail = _verdict(report, "bucketed_ddp_unscaled_last_bucket")
    assert verdict == "FAILED"
    assert detail.startswith("rank 0: grads.model.0.bias: 32/32 elements differ, max abs diff ")
    assert " at index [" in detail and "ranks differing: 0, 1 of 2" in detail


@pytest.mark.slow
def test_same_function_twice_passes_only_because_the_kind_restores(report) -> None:
    verdict, detail = _verdict(report, "good")
    assert verdict == "PASSED", detail
    assert "weights of 1 module (4 tensors), 1 optimizer state, RNG (python, torch, numpy); grads set to None" in detail
    assert detail.endswith("controls module: dropout + SGD momentum")      # ctx.record("equivalence_notes")
    for fault in ("skip_weight_restore", "skip_zero_grad", "skip_rng_restore"):
        verdict, detail = _verdict(report, f"fault_{fault}")
        assert verdict == "FAILED", (fault, detail)
        assert detail.startswith("rank 0: grads.model.") and "elements differ" in detail, (fault, detail)


@pytest.mark.slow
def test_a_raising_function_is_an_error_naming_rank_and_function(report) -> None:
    case = report["raises"]
    assert case["verdict"] == "ERROR"
    assert case["detail"] == ("rank 1: EquivalenceFunctionError: candidate (equivalence_controls/controls.py:"
                              "candidate_raises) raised on rank 1: ValueError: planted failure in the candidate")
    rank_log = Path(case["launches"][0]["results_dir"]) / "logs" / "rank1.log"
    log = rank_log.read_text()
    assert "Traceback" in log and "controls.py" in log and "in candidate_raises" in log


@pytest.mark.slow
def test_only_the_differing_rank_is_named(report) -> None:
    verdict, detail = _verdict(report, "rank1_differs")
    assert verdict == "FAILED"
    assert detail.startswith("rank 1: out.y: 1/15 elements differ, max abs diff 0.25 at index [2, 1]")
    assert "ranks differing: 1 of 2" in detail


@pytest.mark.slow
def test_missing_gradients_are_named(report) -> None:
    verdict, detail = _verdict(report, "drops_grad")
    assert verdict == "FAILED"
    assert ("expect grads: all_parameters: candidate lacks the gradient of 2 of 4 parameters: "
            "model.0.weight, model.2.bias") in detail


@pytest.mark.slow
def test_trace_is_compared_in_order(report) -> None:
    verdict, detail = _verdict(report, "swapped_trace")
    assert verdict == "FAILED"
    assert detail.startswith("rank 0: trace: item 0 differs (expected 'step0', got 'step1'")


@pytest.mark.slow
def test_skips(report) -> None:
    assert _verdict(report, "skips_in_rank") == ("SKIPPED", "rank 0: needs a GPU with 80 GB")
    verdict, detail = _verdict(report, "requires_missing")
    assert verdict == "SKIPPED" and report["requires_missing"]["launches"] == []
    assert detail == ("needs no-such-distribution-for-tests>=1.0, which is not installed "
                      "(install: pip install 'dist-spec-runner[nothing]')")
    verdict, detail = _verdict(report, "requires_too_new")
    assert verdict == "SKIPPED" and detail.startswith("needs pyyaml<1, but pyyaml ")
