"""Pipeline schedules of the GPT workload.

- the per-rank action lists follow Megatron's interleaved / 1F1B order and never deadlock
  (checked by executing every rank's list against the others with Megatron's dependencies);
- a real 4-process gloo run of the interleaved schedule (pp=4, vp=2) and of 1F1B (pp=4,
  vp=1) gives the per-microbatch losses and every parameter gradient of the single-process
  full model (fp32, dropout off). The tied word embedding's gradient is split between the
  first and last stage; their sum equals the full model's gradient.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import Counter

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_helpers import leave_cleanly
from backends.local.ports import free_port
from workloads.gpt.config import GPTConfig
from workloads.gpt.model import build_chunks, build_full_model
from workloads.gpt.pipeline import (BACKWARD, FORWARD, PipelineLayout, PipelineSchedule, backward_from,
                                    schedule_actions, simulate)


@pytest.mark.parametrize("pp,vp,m", [(1, 1, 4), (2, 1, 3), (4, 1, 4), (4, 1, 8), (4, 2, 4), (4, 2, 8),
                                     (4, 3, 12), (2, 4, 6)])
def test_schedule_is_complete_and_deadlock_free(pp: int, vp: int, m: int) -> None:
    for rank in range(pp):
        acts = schedule_actions(pp, vp, rank, m)
        counts = Counter((a.kind, a.chunk, a.microbatch) for a in acts)
        assert set(counts.values()) == {1}
        assert len(acts) == 2 * vp * m
        # a chunk's backward of a microbatch always comes after its forward
        seen = set()
        for a in acts:
            if a.kind == FORWARD:
                seen.add((a.chunk, a.microbatch))
            else:
                assert (a.chunk, a.microbatch) in seen
    rounds = simulate(pp, vp, m)
    assert sum(len(r) for r in rounds) == 2 * pp * vp * m


def test_interleaved_order_matches_megatron() -> None:
    # pp=4, vp=2, 8 microbatches, rank 0: warmup (4-0-1)*2 + (2-1)*4 = 10 forwards
    acts = [str(a) for a in schedule_actions(4, 2, 0, 8)]
    assert acts[:10] == ["F0.0", "F0.1", "F0.2", "F0.3", "F1.0", "F1.1", "F1.2", "F1.3", "F0.4", "F0.5"]
    assert acts[10:14] == ["F0.6", "B1.0", "F0.7", "B1.1"]
    # the last rank starts its backwards with the last chunk after (2-1)*4 = 4 forwards
    last = [str(a) for a in schedule_actions(4, 2, 3, 8)]
    assert last[:6] == ["F0.0", "F0.1", "F0.2", "F0.3", "F1.0", "B1.0"]
    # microbatches == pp: Megatron runs every forward first
    allw = schedule_actions(4, 2, 1, 4)
    assert [a.kind for a in allw] == [FORWARD] * 8 + [BACKWARD] * 8


def test_simulate_detects_a_bad_schedule(monkeypatch) -> None:
    import workloads.gpt.pipeline as pl

    real = pl.schedule_actions

    def cyclic(pp, vp, rank, m):
        acts = real(pp, vp, rank, m)
        if rank == 0:  # rank 0 alternates F/B with no warmup: its F1 waits for B0, which needs
            # rank 1's B0, which rank 1 runs only after its F1, which needs rank 0's F1: a cycle
            f = [a for a in acts if a.kind == FORWARD]
            b = [a for a in acts if a.kind == BACKWARD]
            return [x for pair in zip(f, b) for x in pair]
        return [a for a in acts if a.kind == FORWARD] + [a for a in acts if a.kind == BACKWARD]

    monkeypatch.setattr(pl, "schedule_actions", cyclic)
    with pytest.raises(RuntimeError, match="deadlocks"):
        pl.simulate(2, 1, 2)


# -- real gloo runs ------------------------------------------------------------------------------
CFG = dict(num_layers=8, hidden_size=32, num_attention_heads=4, seq_length=16, max_position_embeddings=16,
           vocab_size=64, micro_batch_size=2, hidden_dropout=0.0, attention_dropout=0.0)


def _microbatches(cfg: GPTConfig, m: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(m):
        text = torch.randint(0, cfg.vocab_size, (cfg.micro_batch_size, cfg.seq_length + 1), generator=g)
        mask = (torch.rand(cfg.micro_batch_size, cfg.seq_length, generator=g) > 0.1).float()
        out.append({"tokens": text[:, :-1], "labels": text[:, 1:], "loss_mask": mask})
    return out


def _pipeline_rank(rank: int, world: int, port: int, cfg_kwargs: dict, m: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = GPTConfig(**cfg_kwargs)
        chunks = build_chunks(cfg, rank)
        calls: list[tuple[int, bool]] = []
        sched = PipelineSchedule(chunks, PipelineLayout(rank, tuple(range(world)), cfg.vp), num_microbatches=m,
                                 activation_shape=(cfg.micro_batch_size, cfg.seq_length, cfg.hidden_size),
                                 dtype=torch.float32, device=torch.device("cpu"),
                                 before_backward=lambda c, last: calls.append((c, last)))
        losses = sched.run(_microbatches(cfg, m))
        grads = {f"v{c.virtual_stage}.{n}": p.grad.clone() for c in chunks for n, p in c.named_parameters()}
        torch.save({"losses": losses, "grads": grads, "calls": calls}, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.destroy_process_group()
    leave_cleanly()


def _middle_stage_grads(dtype: torch.dtype, backward) -> list[torch.Tensor]:
    cfg = GPTConfig(num_layers=4, hidden_size=32, num_attention_heads=4, seq_length=16, max_position_embeddings=16,
                    vocab_size=64, hidden_dropout=0.0, attention_dropout=0.0, pipeline_model_parallel_size=4,
                    bf16=dtype == torch.bfloat16)
    chunk = build_chunks(cfg, 1)[0]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 32, generator=g).to(dtype).requires_grad_(True)
    grad = torch.randn(2, 16, 32, generator=g).to(dtype)
    backward(chunk(x), grad)
    assert x.grad is not None
    return [x.grad] + [p.grad for p in chunk.parameters() if p.grad is not None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_from_gives_bitwise_the_gradients_of_autograd_backward(dtype: torch.dtype) -> None:
    ours = _middle_stage_grads(dtype, backward_from)
    ref = _middle_stage_grads(dtype, lambda out, grad: torch.autograd.backward(out, grad_tensors=grad))
    assert len(ours) == len(ref) > 1
    assert all(torch.equal(a, b) for a, b in zip(ours, ref))
    with pytest.raises(ValueError, match="does not match output"):
        backward_from(torch.zeros(2, 3, requires_grad=True), torch.zeros(3, 2))


_SYMPY_PROBE = """
import sys, torch
from workloads.gpt.pipeline import backward_from
x = torch.randn(4, 3, requires_grad=True)
out, grad = x * 2, torch.ones(4, 3)
if sys.argv[1] == "autograd":
    torch.autograd.backward(out, grad_tensors=grad)
else:
    backward_from(out, grad)
print(int("sympy" in sys.modules))
"""


def test_backward_from_does_not_import_sympy() -> None:
    def sympy_imported(how: str) -> bool:
        out = subprocess.run([sys.executable, "-c", _SYMPY_PROBE, how], capture_output=True, text=True, check=True,
                             timeout=300).stdout.split()
        return out[-1] == "1"

    assert not sympy_imported("backward_from")
    assert sympy_imported("autograd")   # the call it replaces does: the probe can tell


@pytest.mark.slow
@pytest.mark.parametrize("lpvs", [1, None], ids=["interleaved_vp2", "1f1b_vp1"])
def test_pipeline_matches_full_model(lpvs) -> None:
    pp, m = 4, 8
    cfg = GPTConfig(**CFG, pipeline_model_parallel_size=pp, num_layers_per_virtual_pipeline_stage=lpvs)
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_pipeline_rank, args=(pp, free_port(), dict(CFG, pipeline_model_parallel_size=pp,
                                                                       num_layers_per_virtual_pipeline_stage=lpvs),
                                                 m, tmp), nprocs=pp, start_method="spawn")
        res = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(pp)]

    full = build_full_model(cfg)
    ref_losses = []
    for mb in _microbatches(cfg, m):
        loss = full(mb["tokens"], mb["labels"], mb["loss_mask"])
        ref_losses.append(loss.detach())
        (loss / m).backward()
    # losses live on the last rank; the same ops in the same order -> bitwise equal
    assert torch.equal(torch.stack(res[-1]["losses"]), torch.stack(ref_losses))
    assert all(r["losses"] == [] for r in res[:-1])

    ref = {n: p.grad for n, p in full.named_parameters()}
    per = cfg.layers_per_virtual_stage
    checked = 0
    for r in res:
        for key, grad in r["grads"].items():
            v, name = key.split(".", 1)
            v = int(v[1:])
            if name.startswith("layers."):
                idx, rest = name[len("layers."):].split(".", 1)
                ref_name = f"layers.{v * per + int(idx)}.{rest}"
            elif name in ("output_weight", "embedding.word_embeddings.weight"):
                continue  # the tied embedding: checked as a sum below
            else:
                ref_name = name
            # per-microbatch accumulation order equals the reference's: allow only fp32 rounding
            torch.testing.assert_close(grad, ref[ref_name], rtol=1e-5, atol=1e-7, msg=key)
            checked += 1
    emb = res[0]["grads"]["v0.embedding.word_embeddings.weight"]
    out = res[-1]["grads"][f"v{pp * cfg.vp - 1}.output_weight"]
    torch.testing.assert_close(emb + out, ref["embedding.word_embeddings.weight"], rtol=1e-5, atol=1e-7)
    assert checked == len(ref) - 1  # every reference parameter but the tied one is matched once

    # the optimizer hook hears "last microbatch" exactly once per chunk, on that chunk's last backward
    for r in res:
        lasts = [c for c, last in r["calls"] if last]
        assert sorted(lasts) == list(range(cfg.vp))
        for c in range(cfg.vp):
            chunk_calls = [last for cc, last in r["calls"] if cc == c]
            assert chunk_calls == [False] * (m - 1) + [True]
