"""Debug modes that make overlap and async-save bugs visible on CPU, and their negative controls.

* Strict param gather (``workloads.gpt.dist_optimizer``): with ``overlap_param_gather`` the
  updated parameters reach a forward only through the wait on their bucket's all-gather. On gloo
  the all-gather is usually complete before anybody looks, so a forward that skips the wait
  matched the golden bit for bit; in strict mode it reads the previous step's parameters every
  time. Proven at the optimizer level (2 gloo ranks) and end to end through the gpt worker
  (the planted ``skip_param_gather_wait`` changes the loss from step 2 on; strict mode leaves a
  correct run's numbers unchanged).
* Async save crash: every rank dies after the second async save started and before it was
  finalised. The latest-iteration marker must still name the first checkpoint, and a run that
  loads from it continues exactly like an uninterrupted run. The planted bug (the marker moved
  when the save starts) makes that load fail.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dist_helpers import spawn

STRICT_CASES = [True, False]


# -- optimizer level --------------------------------------------------------------------------
def _strict_gather_worker(rank: int, world: int, strict: bool) -> None:
    from workloads.gpt.dist_optimizer import DistributedOptimizer, OptimizerConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    cfg = OptimizerConfig(lr=0.1, weight_decay=0.0, overlap_param_gather=True, bucket_size=40,
                          strict_param_gather=strict)
    opt = DistributedOptimizer([model], cfg, dp_group=torch.distributed.group.WORLD, mp_group=None)
    assert opt.strict_param_gather is strict
    x = torch.randn(3, 8)

    def train_step() -> None:
        opt.zero_grad()
        model(x).sum().backward()
        opt.finish_grad_sync()
        opt.step(0.1)

    train_step()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen: dict[str, torch.Tensor] = {}
    model[1].register_forward_pre_hook(lambda m, a: seen.update(w=m.weight.detach().clone()))
    model(x)                                     # the pre-hooks wait: the update is visible
    assert not torch.equal(seen["w"], before["1.weight"]) or not strict

    # planted: the forward no longer waits for the gather
    assert opt.drop_gather_wait_hooks() > 0
    for _ in range(3):
        train_step()
        stale = {n: p.detach().clone() for n, p in model.named_parameters()}
        model(x)
        if strict:
            # every time: the forward saw exactly the previous parameters, nothing of the update
            assert torch.equal(seen["w"], stale["1.weight"])
        opt.finish_param_sync()
        if strict:
            assert not torch.equal(model[1].weight.detach(), stale["1.weight"])


@pytest.mark.parametrize("strict", STRICT_CASES)
def test_strict_gather_makes_a_missed_wait_read_stale_parameters_every_time(tmp_path: Path, strict: bool) -> None:
    spawn(_strict_gather_worker, 2, tmp_path, strict)


def test_strict_gather_default_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from workloads.gpt.dist_optimizer import STRICT_GATHER_ENV, strict_gather_default

    monkeypatch.delenv(STRICT_GATHER_ENV, raising=False)
    assert strict_gather_default() is (not torch.cuda.is_available())
    monkeypatch.setenv(STRICT_GATHER_ENV, "0")
    assert strict_gather_default() is False
    monkeypatch.setenv(STRICT_GATHER_ENV, "1")
    assert strict_gather_default() is True


def test_scratch_buffers_are_not_counted_as_training_memory() -> None:
    from workloads.gpt.dist_optimizer.buckets import Bucket
    from workloads.gpt.memory import tensor_storage_bytes

    p = nn.Parameter(torch.zeros(10))
    b = Bucket(0, 0, [p], dp_size=1, dp_rank=0, distributed=True, shared=False, count_in_norm=True)
    without = tensor_storage_bytes(b)
    b.gather_scratch = torch.zeros(1000)
    assert tensor_storage_bytes(b) == without
    b.exp_avg = torch.zeros(1000)                # a real buffer is still counted
    assert tensor_storage_bytes(b) > without


# -- end to end through the gpt worker --------------------------------------------------------
SMALL = dict(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=32, max_position_embeddings=32,
             vocab_size=256, micro_batch_size=2, global_batch_size=8, lr=0.003, min_lr=0.0003,
             lr_warmup_fraction=0.1, weight_decay=0.01, clip_grad=1.0, hidden_dropout=0.0, attention_dropout=0.0,
             bf16=False, seed=1234, deterministic_mode=True, use_distributed_optimizer=True,
             overlap_grad_reduce=True, overlap_param_gather=True, ddp_bucket_size=4000)


def _launch(results_dir: Path, args: dict, *, env: dict | None = None, nproc: int = 2):
    from backends.local.backend import LocalBackend
    from workloads.gpt.direct import run_direct

    return run_direct(LocalBackend(), results_dir, args, nproc=nproc, timeout=300, env=env, case_id="test::gpt-debug")


def _losses(results_dir: Path) -> dict[int, float]:
    from runner.results import ResultsDir

    return dict(ResultsDir(results_dir).metrics()["lm loss"])


def _completed(outcome) -> None:
    from runner.records import Outcome

    assert outcome.outcome is Outcome.COMPLETED, f"{outcome.detail}\n{outcome.log_tail}"


@pytest.mark.slow
def test_skipped_param_gather_wait_changes_the_loss_under_strict_gather(tmp_path: Path) -> None:
    args = {**SMALL, "train_iters": 4}
    clean = tmp_path / "clean"
    _completed(_launch(clean, args))
    relaxed = tmp_path / "relaxed"
    _completed(_launch(relaxed, args, env={"RUNNER_STRICT_PARAM_GATHER": "0"}))
    planted = tmp_path / "planted"
    _completed(_launch(planted, {**args, "inject_fault": "skip_param_gather_wait"}))

    ref = _losses(clean)
    assert sorted(ref) == [1, 2, 3, 4]
    assert _losses(relaxed) == ref               # the debug mode does not change a correct run's numbers
    bad = _losses(planted)
    # the first update runs with lr 0 (Megatron's warmup starts at 0), so the parameters first
    # change in step 2's update: step 3's forward is the first to read them
    assert [bad[s] == ref[s] for s in (1, 2, 3, 4)] == [True, True, False, False], (ref, bad)


@pytest.mark.slow
@pytest.mark.parametrize("planted", [False, True], ids=["marker-protocol", "planted-early-marker"])
def test_crash_during_async_save_leaves_the_marker_on_the_previous_checkpoint(tmp_path: Path, planted: bool) -> None:
    from runner.records import Outcome
    from workloads.gpt.checkpoint import MARKER_FILE, iteration_dir
    from workloads.gpt.faults import CRASH_EXIT_CODE

    args = {**SMALL, "train_iters": 6, "save_interval": 2, "async_save": True, "ckpt_format": "torch_dist"}
    case = tmp_path / "case"
    fault = "early_marker_crash_during_async_save" if planted else "crash_during_async_save"
    crashed = _launch(case / "run1", {**args, "inject_fault": fault})
    assert crashed.outcome is Outcome.ERROR, crashed.detail
    assert str(CRASH_EXIT_CODE) in crashed.detail or "exit" in crashed.detail.lower(), crashed.detail
    ckpt = case / "run1" / "checkpoints"
    assert iteration_dir(ckpt, 2).is_dir()
    marker = (ckpt / MARKER_FILE).read_text().strip()

    resumed = _launch(case / "run2", {**args, "load_from": "run1"})
    if planted:
        # the bug the protocol prevents: the marker names a save that never finished
        assert marker == "4"
        assert resumed.outcome is Outcome.ERROR, resumed.detail
        assert "checkpoint" in (resumed.detail + resumed.log_tail).lower()
        return
    assert marker == "2", "the marker moved to a checkpoint whose async save never finished"
    _completed(resumed)
    ref_dir = tmp_path / "reference"
    _completed(_launch(ref_dir, args))
    ref, got = _losses(ref_dir), _losses(case / "run2")
    assert sorted(got) == [3, 4, 5, 6]
    assert {s: got[s] for s in got} == {s: ref[s] for s in got}   # exactly where the first run left off
