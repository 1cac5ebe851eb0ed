"""DistributedOptimizer (workloads/gpt/dist_optimizer/) in real multi-process gloo runs.

Every test spawns real processes (torch.multiprocessing, gloo over a file store); workers
assert and any failure propagates with its traceback.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dist_helpers import spawn
from workloads.gpt.dist_optimizer import DistributedOptimizer, OptimizerConfig

pytestmark = pytest.mark.timeout(300)

MBS, DP, GBS = 2, 2, 8
LR, WD, CLIP = 1e-2, 0.1, 0.05


class Tiny(nn.Module):
    """Linear → LayerNorm → GELU → Linear: 2-D weights (decayed) and 1-D params (not)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.norm(self.fc1(x))))


def make_model(dtype: torch.dtype = torch.float32) -> Tiny:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial LayerNorm params
            p.add_(0.05 * torch.randn_like(p))
    return model.to(dtype)


def global_batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GBS, 8, generator=g), torch.randn(GBS, 4, generator=g)) for _ in range(steps)]


def rank_microbatches(x: torch.Tensor, y: torch.Tensor, dp_rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Megatron's sampler order: micro-step m takes MBS*DP consecutive samples, rank r the r-th slice."""
    out = []
    for m in range(GBS // (MBS * DP)):
        lo = m * MBS * DP + dp_rank * MBS
        out.append((x[lo : lo + MBS], y[lo : lo + MBS]))
    return out


def train(model: nn.Module, opt: DistributedOptimizer, batches, dp_rank: int, dtype=torch.float32):
    stats = []
    for x, y in batches:
        opt.zero_grad()
        mbs = rank_microbatches(x, y, dp_rank)
        for m, (xm, ym) in enumerate(mbs):
            opt.set_is_last_microbatch(m == len(mbs) - 1)
            loss = F.mse_loss(model(xm.to(dtype)).float(), ym) / len(mbs)
            loss.backward()
        opt.finish_grad_sync()
        stats.append(opt.step(LR))
    opt.finish_param_sync()
    return stats


def _cfg(**kw: Any) -> OptimizerConfig:
    base = dict(lr=LR, weight_decay=WD, clip_grad=CLIP, bucket_size=30)
    base.update(kw)
    return OptimizerConfig(**base)


# ---------------------------------------------------------------------------------------------
def _equivalence_worker(rank: int, world: int, steps: int, distributed: bool) -> None:
    model = make_model()
    opt = DistributedOptimizer([model], _cfg(use_distributed_optimizer=distributed), dp_group=dist.group.WORLD, mp_group=None)
    assert len(opt.buckets) >= 3, "test needs several buckets"
    batches = global_batches(steps)
    stats = train(model, opt, batches, rank)

    # the same training on one process: torch.optim.AdamW, full global batch, Megatron's
    # no-decay rule for 1-D params, clip_grad_norm_
    ref = make_model()
    decay = [p for p in ref.parameters() if p.dim() > 1]
    no_decay = [p for p in ref.parameters() if p.dim() <= 1]
    ref_opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.999), eps=1e-8, foreach=False,
    )
    ref_norms = []
    for x, y in batches:
        ref_opt.zero_grad()
        F.mse_loss(ref(x), y).backward()
        ref_norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), CLIP)))
        ref_opt.step()
    # Tolerance: the only difference is the order of fp32 sums (per-rank micro-batch sums,
    # then the dp reduction, vs one batch sum; the norm in fp64 over shards vs torch's fp32
    # per-tensor norms): ~1e-7 relative per grad. AdamW normalises the step by sqrt(v), so
    # each step moves a param by at most ~lr (1e-2) and a relative grad error e changes that
    # move by ~lr*e; over 6 steps that bounds the param difference well below 1e-6.
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")
        assert not torch.equal(p.detach(), make_model().get_parameter(name).detach()), f"{name} did not train"
    for s, rn in zip(stats, ref_norms):
        assert abs(s.grad_norm - rn) <= 1e-5 * rn
        assert not s.skipped
    assert any(s.grad_norm > CLIP for s in stats), "clipping path not exercised"
    assert all(s.num_zeros == 0 for s in stats)


def _equivalence_both_worker(rank: int, world: int, steps: int) -> None:
    for distributed in (True, False):  # sharded optimizer, then plain DDP-style all-reduce
        _equivalence_worker(rank, world, steps, distributed)


def test_dp2_matches_single_process_adamw(tmp_path: Path) -> None:
    spawn(_equivalence_both_worker, 2, tmp_path, 6)


# ---------------------------------------------------------------------------------------------
def _overlap_worker(rank: int, world: int) -> None:
    for dtype, bf16 in ((torch.float32, False), (torch.bfloat16, True)):
        results = {}
        for overlap in (False, True):
            model = make_model(dtype)
            opt = DistributedOptimizer(
                [model], _cfg(bf16=bf16, overlap_grad_reduce=overlap, overlap_param_gather=overlap),
                dp_group=dist.group.WORLD, mp_group=None,
            )
            stats = train(model, opt, global_batches(4), rank, dtype)
            results[overlap] = (
                [(s.grad_norm, s.num_zeros, s.skipped) for s in stats],
                {n: p.detach().clone() for n, p in model.named_parameters()},
                {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.sharded_state_dict().items()},
            )
        (s0, p0, o0), (s1, p1, o1) = results[False], results[True]
        assert s0 == s1, f"{dtype}: step stats differ with overlap"
        for n in p0:
            assert p0[n].dtype == dtype
            assert torch.equal(p0[n].view(torch.int16) if bf16 else p0[n], p1[n].view(torch.int16) if bf16 else p1[n]), n
        assert o0.keys() == o1.keys()
        for k in o0:
            assert (o0[k] == o1[k]) if not torch.is_tensor(o0[k]) else torch.equal(o0[k], o1[k]), k


def test_overlap_on_equals_off_bitwise_fp32_and_bf16(tmp_path: Path) -> None:
    spawn(_overlap_worker, 2, tmp_path)


# ---------------------------------------------------------------------------------------------
def _launch_order_worker(rank: int, world: int) -> None:
    for overlap in (True, False):
        model = make_model()
        opt = DistributedOptimizer(
            [model], _cfg(overlap_grad_reduce=overlap, overlap_param_gather=overlap),
            dp_group=dist.group.WORLD, mp_group=None,
        )
        (x, y), = global_batches(1)
        mbs = rank_microbatches(x, y, rank)
        opt.trace = []
        opt.zero_grad()
        for m, (xm, ym) in enumerate(mbs):
            opt.set_is_last_microbatch(m == len(mbs) - 1)
            if m == len(mbs) - 1:
                start = len(opt.trace)
            (F.mse_loss(model(xm), ym) / len(mbs)).backward()
        end_of_backward = len(opt.trace)
        last = opt.trace[start:end_of_backward]
        kinds = [k for k, _ in last]
        if overlap:
            # a bucket's reduce-scatter is launched from the hook, while later grads are still
            # being produced by the same backward
            assert "launch" in kinds, last
            assert kinds.index("launch") < max(i for i, k in enumerate(kinds) if k == "grad"), last
            assert "launch" not in [k for k, _ in opt.trace[:start]], "launched before the last micro-batch"
        else:
            assert "launch" not in kinds, last
        opt.finish_grad_sync()
        launched = [b for k, b in opt.trace if k == "launch"]
        assert sorted(launched) == list(range(len(opt.buckets))), launched
        opt.step(LR)
        pending = [b.index for b in opt.buckets if b.gather_work is not None]
        if overlap:
            # param all-gathers are in flight after step() and are waited in forward pre-hooks
            assert pending == [b.index for b in opt.buckets], pending
            mark = len(opt.trace)
            model(x[:1])
            waits = [b for k, b in opt.trace[mark:] if k == "gather_wait"]
            assert sorted(waits) == list(range(len(opt.buckets))), waits
            assert all(b.gather_work is None for b in opt.buckets)
        else:
            assert pending == []
        # misuse is an error, not silently wrong grads: a new backward without zero_grad()
        opt.set_is_last_microbatch(True)
        with pytest.raises(RuntimeError, match="arrived after its final micro-batch"):
            F.mse_loss(model(x[:2]), y[:2]).backward()


def test_grad_reduce_launches_during_backward_and_gather_waits_in_forward(tmp_path: Path) -> None:
    spawn(_launch_order_worker, 2, tmp_path)


# ---------------------------------------------------------------------------------------------
def _state_dict_worker(rank: int, world: int) -> None:
    batches = global_batches(6)
    model = make_model()
    opt = DistributedOptimizer([model], _cfg(overlap_grad_reduce=True, overlap_param_gather=True),
                               dp_group=dist.group.WORLD, mp_group=None)
    train(model, opt, batches[:3], rank)
    sd = opt.sharded_state_dict()
    keys = [k for k in sd if k.endswith(".exp_avg")]
    assert keys and all(k.startswith(f"optimizer.pp0.dp{rank}.bucket") for k in keys), keys
    assert sd[f"optimizer.pp0.dp{rank}.step"] == 3
    saved = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in sd.items()}
    shard_sizes = {k: v.numel() for k, v in saved.items() if torch.is_tensor(v)}
    full_sizes = sum(p.numel() for p in model.parameters())
    # each rank holds about half of the optimizer state (shards of padded buckets)
    assert sum(v for k, v in shard_sizes.items() if k.endswith(".param")) <= full_sizes // 2 + len(opt.buckets)
    train(model, opt, batches[3:], rank)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}

    # a fresh model whose weights are NOT the checkpointed ones: loading the optimizer state
    # alone must re-gather the model params from the loaded main params
    fresh = make_model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.fill_(0.5)
    opt2 = DistributedOptimizer([fresh], _cfg(overlap_grad_reduce=True, overlap_param_gather=True),
                                dp_group=dist.group.WORLD, mp_group=None)
    opt2.load_sharded_state_dict(copy.deepcopy(saved))
    assert opt2.step_count == 3
    for k, v in opt2.sharded_state_dict().items():
        assert torch.equal(v, saved[k]) if torch.is_tensor(v) else v == saved[k], k
    train(fresh, opt2, batches[3:], rank)
    for n, p in fresh.named_parameters():
        assert torch.equal(p.detach(), expected[n]), n
    bad = copy.deepcopy(saved)
    k0 = keys[0]
    bad[k0] = torch.zeros(bad[k0].numel() + 1)
    with pytest.raises(ValueError, match="shape"):
        opt2.load_sharded_state_dict(bad)


def test_sharded_state_dict_round_trip_resumes_exactly(tmp_path: Path) -> None:
    spawn(_state_dict_worker, 2, tmp_path)


# ---------------------------------------------------------------------------------------------
class Stage(nn.Module):
    """One of two 'pipeline stages' that both use a copy of a tied weight W."""

    def __init__(self, stage: int) -> None:
        super().__init__()
        torch.manual_seed(10)
        self.w = nn.Parameter(torch.randn(4, 8) * 0.3)  # the tied weight, equal on both stages
        torch.manual_seed(20 + stage)
        self.own = nn.Linear(8, 8)
        self.stage = stage

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.own(x))
        if self.stage == 0:
            return F.mse_loss(h @ self.w.t(), y)
        return F.mse_loss((h @ self.w.t()) * 2.0 - 0.5, y)


def _shared_embedding_worker(rank: int, world: int) -> None:
    stage, dp_rank = rank // 2, rank % 2
    dp_groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    mp_groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    dp_group, mp_group = dp_groups[stage], mp_groups[dp_rank]
    model = Stage(stage)
    opt = DistributedOptimizer([model], _cfg(overlap_grad_reduce=True, bucket_size=30), dp_group=dp_group,
                               mp_group=mp_group, shared_embedding=(model.w, mp_group))
    assert sum(b.shared for b in opt.buckets) == 1
    g = torch.Generator().manual_seed(5)
    data = [[(torch.randn(4, 8, generator=g), torch.randn(4, 4, generator=g)) for _ in range(2)] for _ in range(3)]
    stats = []
    for step in data:
        opt.zero_grad()
        opt.set_is_last_microbatch(True)
        x, y = step[stage]
        model.loss(x[2 * dp_rank : 2 * dp_rank + 2], y[2 * dp_rank : 2 * dp_rank + 2]).backward()
        opt.finish_grad_sync()
        stats.append(opt.step(LR))
    # reference on one process: one W shared by both stage losses (grad = sum over stages)
    s0, s1 = Stage(0), Stage(1)
    s1.w = s0.w
    params = [s0.w, *s0.own.parameters(), *s1.own.parameters()]
    ref_opt = torch.optim.AdamW([{"params": [s0.w, s0.own.weight, s1.own.weight], "weight_decay": WD},
                                 {"params": [s0.own.bias, s1.own.bias], "weight_decay": 0.0}],
                                lr=LR, foreach=False)
    for i, step in enumerate(data):
        ref_opt.zero_grad()
        (s0.loss(*step[0]) + s1.loss(*step[1])).backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, CLIP))
        ref_opt.step()
        assert abs(stats[i].grad_norm - norm) <= 1e-5 * norm, (stats[i].grad_norm, norm)
    own_ref = s0.own if stage == 0 else s1.own
    torch.testing.assert_close(model.w.detach(), s0.w.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.own.weight.detach(), own_ref.weight.detach(), rtol=0, atol=1e-6)
    # the tied copies stay bitwise identical across the two stages
    w = model.w.detach().clone()
    other = torch.empty_like(w)
    dist.all_reduce(w, group=mp_group)
    other.copy_(model.w.detach())
    assert torch.equal(w, other * 2)


def test_shared_embedding_pp2_dp2(tmp_path: Path) -> None:
    spawn(_shared_embedding_worker, 4, tmp_path)
