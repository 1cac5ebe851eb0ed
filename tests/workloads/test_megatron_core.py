"""Real megatron-core under the ``equivalence`` kind: the CPU compatibility layer's contract,
and negative controls that plant bugs into megatron-core at run time and must FAIL through
the real CLI with the key and rank named."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("megatron.core", reason="megatron-core not installed: pip install -e '.[megatron]'")


def test_unknown_megatron_version_is_refused_not_patched(monkeypatch) -> None:
    import torch

    from workloads.megatron import compat

    monkeypatch.setattr(compat, "megatron_version", lambda: "0.99.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    stream = torch.cuda.Stream
    with pytest.raises(compat.UnsupportedMegatronVersion, match="0.99.0.*verified only for 0.16.1"):
        with compat.cpu_compat():
            pass
    assert torch.cuda.Stream is stream


def test_compat_layer_patches_only_inside_the_block_and_names_each_location() -> None:
    import torch

    import megatron.core.pipeline_parallel.schedules as schedules
    from workloads.megatron import compat

    if torch.cuda.is_available():
        pytest.skip("on a GPU nothing is patched")
    before = (torch.cuda.Stream, torch.cuda.current_device, schedules.torch, torch.Tensor.type)
    with compat.cpu_compat() as report:
        assert torch.cuda.Stream is compat.CpuStream and torch.cuda.current_device() == "cpu"
        assert torch.zeros(1).type() == "torch.FloatTensor"   # only megatron's optimizer sees cuda names
        assert report.active and all(".py" in p for p in report.patches)
        assert report.notes()[0].startswith(f"megatron-core {report.version}; CPU compatibility layer active (")
    assert (torch.cuda.Stream, torch.cuda.current_device, schedules.torch, torch.Tensor.type) == before
    assert "record_stream" not in vars(torch.Tensor)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("megatron_core")
    out = tmp / "report.json"
    proc = subprocess.run([sys.executable, "-m", "runner", "run", "tests/data/megatron_core_plants.yaml",
                           "--results-dir", str(tmp / "res"), "--json", str(out), "--platform", "cpu"],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return {c["name"]: c for c in json.loads(out.read_text())["cases"]}


@pytest.mark.slow
def test_schedule_node_run_for_the_wrong_microbatch_fails(report) -> None:
    case = report["plant_wrong_microbatch"]
    assert case["verdict"] == "FAILED", case["detail"]
    assert case["detail"].startswith("rank 0: "), case["detail"]
    assert " elements differ, max abs diff " in case["detail"] and "ranks differing: 0, 1 of 2" in case["detail"]


@pytest.mark.slow
def test_dropped_gradient_through_the_combine_all_to_all_fails(report) -> None:
    case = report["plant_dropped_combine_grad"]
    assert case["verdict"] == "FAILED", case["detail"]
    assert case["detail"].startswith("rank 0: "), case["detail"]
    assert "grads.layer." in case["detail"] and " elements differ" in case["detail"], case["detail"]


@pytest.mark.slow
def test_shared_adam_step_after_dist_checkpoint_load_fails_without_the_workaround(report) -> None:
    case = report["ckpt_shared_adam_step_not_worked_around"]
    assert case["verdict"] == "FAILED", case["detail"]
    assert "losses_after" in case["detail"] or "final." in case["detail"], case["detail"]


@pytest.mark.slow
def test_dense_model_chunk_plan_skips_the_final_layernorm(report) -> None:
    case = report["finding_dense_chunk_skips_final_layernorm"]
    assert case["verdict"] == "FAILED", case["detail"]
    assert "decoder.final_layernorm.weight" in case["detail"], case["detail"]


@pytest.mark.slow
def test_the_megatron_suite_passes_in_warm_pools(tmp_path) -> None:
    """specs/megatron/ as users run it: poolable cases share started ranks, so megatron-core's
    process-wide state (the MoE aux-loss tracker sized by the first model, the aux-loss
    backward scale) must not leak from one case into the next."""
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "runner", "run", "specs/megatron/", "--no-history",
                           "--results-dir", str(tmp_path / "res"), "--json", str(out), "--platform", "cpu"],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=1500)
    cases = json.loads(out.read_text())["cases"]
    assert proc.returncode == 0, [(c["name"], c["verdict"], c["detail"][:300]) for c in cases if c["verdict"] != "PASSED"]
    assert len(cases) >= 15 and {c["verdict"] for c in cases} == {"PASSED"}
    pools = sorted(p.name for p in (tmp_path / "res" / ".pools").iterdir())
    assert 1 <= len(pools) < len(cases), pools        # cases did share warm ranks


def test_reset_process_state_forgets_what_a_previous_model_left() -> None:
    import torch
    from megatron.core.transformer.moe import moe_utils

    from workloads.megatron.session import reset_process_state

    moe_utils.MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(1.0))          # a case's scale, shape []
    moe_utils.get_moe_layer_wise_logging_tracker()["load_balancing_loss"] = {"values": torch.zeros(1)}
    reset_process_state()
    assert moe_utils.MoEAuxLossAutoScaler.main_loss_backward_scale is None
    assert moe_utils.get_moe_layer_wise_logging_tracker() == {}
    moe_utils.MoEAuxLossAutoScaler.set_loss_scale(torch.ones(1))               # the next case's, shape [1]
    assert moe_utils.MoEAuxLossAutoScaler.main_loss_backward_scale.shape == (1,)
    reset_process_state()
