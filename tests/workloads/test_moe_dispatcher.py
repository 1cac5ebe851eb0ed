"""The expert-parallel token dispatcher with real gloo process groups (spawned ranks).

Every token carries its origin in its values (rank, token, hidden index), so a test can
tell exactly which rows arrived where: rows must reach the rank that owns their expert,
come back to where they came from, with uneven splits and with a rank that gets nothing.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from moe_helpers import spawn

HIDDEN = 4


def _tokens(rank: int, n: int):
    import torch

    # value = rank*1000 + token*10 + hidden index: unique and exact in float32
    return (rank * 1000 + torch.arange(n).unsqueeze(1) * 10 + torch.arange(HIDDEN)).float()


def _topk_idx(rank: int, n: int, topk: int, num_experts: int, avoid_rank: int | None, world: int):
    import torch

    gen = torch.Generator().manual_seed(100 + rank)
    local = num_experts // world
    allowed = [e for e in range(num_experts) if avoid_rank is None or e // local != avoid_rank]
    rows = []
    for _ in range(n):
        perm = torch.randperm(len(allowed), generator=gen)[:topk]
        rows.append([allowed[i] for i in perm.tolist()])
    return torch.tensor(rows, dtype=torch.int64)


def _route_and_return(rank: int, world: int, payload: dict) -> dict:
    """Dispatch every rank's rows, check them against a replay of all ranks' routing,
    send them back (sync and async), and backprop through the all-to-all."""
    import torch

    from workloads.moe.dispatcher import Communicator, TokenDispatcher

    n, topk, num_experts, avoid = payload["tokens"], payload["topk"], payload["num_experts"], payload["avoid_rank"]
    disp = TokenDispatcher(num_experts)
    local = disp.local_experts
    tokens = _tokens(rank, n).requires_grad_(True)
    idx = _topk_idx(rank, n, topk, num_experts, avoid, world)
    routing = disp.route(idx)
    rows = TokenDispatcher.permute(tokens, routing)
    recv = disp.dispatch(rows, routing)

    # what this rank must receive: from each source rank, rows for my experts, by expert then token
    expected = []
    for src in range(world):
        src_idx = _topk_idx(src, n, topk, num_experts, avoid, world)
        src_tokens = _tokens(src, n)
        pairs = sorted((int(e), t) for t in range(n) for e in src_idx[t].tolist() if e // local == rank)
        expected.extend(src_tokens[t] for _, t in pairs)
    expected_t = torch.stack(expected) if expected else torch.empty(0, HIDDEN)
    routed_ok = recv.shape == expected_t.shape and torch.equal(recv.detach(), expected_t)

    # experts "compute" = scale by (local expert + 2); come back and unpermute
    perm_counts = routing.recv_counts.sum(0).tolist()
    back = disp.combine(recv * 2.0, routing)
    unpermuted = TokenDispatcher.unpermute(back, routing)          # [n, k, H]
    returned_ok = torch.equal(unpermuted.detach(), (tokens.detach() * 2.0).unsqueeze(1).expand(n, topk, HIDDEN))
    unpermuted.sum().backward()
    grad_ok = torch.equal(tokens.grad, torch.full_like(tokens, 2.0 * topk))

    # the asynchronous launch moves exactly the same rows
    comm = Communicator(torch.device("cpu"))
    pending = comm.all_to_all(rows.detach(), routing.output_splits, routing.input_splits)
    async_ok = torch.equal(pending.wait(), recv.detach())
    return {"routed_ok": routed_ok, "returned_ok": returned_ok, "grad_ok": grad_ok, "async_ok": async_ok,
            "input_splits": list(routing.input_splits), "output_splits": list(routing.output_splits),
            "recv_rows": int(recv.shape[0]), "per_expert": perm_counts}


@pytest.mark.slow
def test_tokens_reach_their_experts_and_come_back_uneven(tmp_path: Path) -> None:
    world = 4
    results = spawn(_route_and_return, world, tmp_path,
                    {"tokens": 12, "topk": 2, "num_experts": 8, "avoid_rank": None})
    for rank, r in enumerate(results):
        assert r["routed_ok"], f"rank {rank} received the wrong rows"
        assert r["returned_ok"], f"rank {rank}: combine did not bring the rows back"
        assert r["grad_ok"], f"rank {rank}: gradient through dispatch/combine is wrong"
        assert r["async_ok"], f"rank {rank}: async all-to-all differs from the synchronous one"
        assert sum(r["input_splits"]) == 12 * 2
    # splits really are uneven, and what one rank sends another receives
    all_splits = [s for r in results for s in r["input_splits"]]
    assert len(set(all_splits)) > 1, all_splits
    for src in range(world):
        for dst in range(world):
            assert results[src]["input_splits"][dst] == results[dst]["output_splits"][src]


@pytest.mark.slow
def test_a_rank_receiving_no_tokens(tmp_path: Path) -> None:
    world = 3
    results = spawn(_route_and_return, world, tmp_path,
                    {"tokens": 8, "topk": 2, "num_experts": 6, "avoid_rank": 1})
    assert results[1]["recv_rows"] == 0
    assert results[1]["output_splits"] == [0, 0, 0]
    assert all(r["input_splits"][1] == 0 for r in results)
    for rank, r in enumerate(results):
        assert r["routed_ok"] and r["returned_ok"] and r["grad_ok"] and r["async_ok"], (rank, r)


def _poisoned(rank: int, world: int, payload: dict) -> dict:
    import torch

    from workloads.moe.dispatcher import Communicator

    inp = torch.full((4, 3), float(rank + 1))
    comm = Communicator(torch.device("cpu"), poison=payload["poison"])
    pending = comm.all_to_all(inp, [2] * world, [2] * world)
    import time

    time.sleep(0.2)                       # the all-to-all has long completed by now
    before = pending.peek().clone()       # what a missed wait reads
    after = pending.wait()
    return {"before_nan": bool(torch.isnan(before).all()), "after": after[:, 0].tolist()}


@pytest.mark.slow
@pytest.mark.parametrize("poison", [True, False])
def test_poison_mode_receive_buffer_holds_nan_until_the_wait(tmp_path: Path, poison: bool) -> None:
    results = spawn(_poisoned, 2, tmp_path, {"poison": poison})
    for r in results:
        assert r["after"] == [1.0, 1.0, 2.0, 2.0]          # the rows land at the wait
        assert r["before_nan"] is poison                  # without poison the buffer was already filled


def test_pending_values_and_computations_at_the_wait() -> None:
    """A Pending returns its tensor, or what its computation returns, run once at the first
    wait; one with neither is refused when made (a wait could only return nothing)."""
    import torch

    from workloads.moe.dispatcher import Pending

    t = torch.ones(2)
    ready = Pending.ready(t)
    assert ready.done and ready.wait() is t and ready.peek() is t
    calls: list[int] = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return t * 2

    later = Pending(None, then=compute)
    assert not later.done and later.peek() is None and not calls
    assert torch.equal(later.wait(), t * 2) and later.wait() is later.wait() and calls == [1]
    with pytest.raises(ValueError, match="a value or a computation"):
        Pending(None)
