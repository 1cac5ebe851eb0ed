"""A small data-parallel training step in two implementations (an example of user code
under the ``equivalence`` kind, see specs/examples/equivalence_user.yaml).

* ``reference`` — after the whole backward, all-reduce every parameter's gradient on its
  own (synchronously) and average it, then take an SGD step.
* ``candidate`` — the optimised version: gradients are packed into flat buckets *during*
  the backward (a hook fires when a parameter's gradient is final), each full bucket is
  all-reduced asynchronously while the backward goes on, and the step waits for the
  buckets, unpacks and averages them.

Both must give bit-identical losses, gradients and updated weights on every rank.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from runner.equivalence import grads


def setup(ctx: Any, params: dict) -> dict:
    torch.manual_seed(params.get("seed", 0))          # same weights on every rank
    hidden = int(params.get("hidden", 32))
    model = nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, 4))
    gen = torch.Generator().manual_seed(1000 + ctx.rank)   # each rank its own shard of data
    batches = [(torch.randn(8, 16, generator=gen), torch.randn(8, 4, generator=gen))
               for _ in range(int(params.get("steps", 3)))]
    return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.05),
            "batches": batches, "bucket_params": int(params.get("bucket_params", 2))}


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), y)


def _captures(state: dict, losses: list[torch.Tensor], last_grads: dict) -> dict:
    return {"loss": torch.stack(losses), "grads": last_grads,
            "weights": {n: p.detach().clone() for n, p in state["model"].named_parameters()}}


def reference(ctx: Any, state: dict) -> dict:
    model, opt, world = state["model"], state["optimizer"], dist.get_world_size()
    losses: list[torch.Tensor] = []
    last: dict = {}
    for x, y in state["batches"]:
        opt.zero_grad(set_to_none=True)
        loss = _loss(model, x, y)
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad.div_(world)
        last = grads(state)
        opt.step()
        losses.append(loss.detach())
    return _captures(state, losses, last)


class Buckets:
    """Flat gradient buckets filled by post-accumulate-grad hooks, all-reduced asynchronously."""

    def __init__(self, model: nn.Module, params_per_bucket: int) -> None:
        params = [p for p in model.parameters() if p.requires_grad][::-1]   # backward order
        self.groups = [params[i:i + params_per_bucket] for i in range(0, len(params), params_per_bucket)]
        self.bucket_of = {id(p): b for b, group in enumerate(self.groups) for p in group}
        self.ready: list[int] = [0] * len(self.groups)
        self.pending: list[tuple[Any, torch.Tensor, int]] = []
        self.handles = [p.register_post_accumulate_grad_hook(self._hook) for p in params]

    def _hook(self, param: torch.Tensor) -> None:
        b = self.bucket_of[id(param)]
        self.ready[b] += 1
        if self.ready[b] == len(self.groups[b]):
            flat = torch.cat([p.grad.reshape(-1) for p in self.groups[b]])
            self.pending.append((dist.all_reduce(flat, async_op=True), flat, b))

    def finish(self, world: int) -> None:
        for work, flat, b in self.pending:
            work.wait()
            self.unpack(flat, b, world)
        self.pending, self.ready = [], [0] * len(self.groups)

    def unpack(self, flat: torch.Tensor, b: int, world: int) -> None:
        offset = 0
        for p in self.groups[b]:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad)).div_(world)
            offset += n

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def candidate(ctx: Any, state: dict) -> dict:
    model, opt, world = state["model"], state["optimizer"], dist.get_world_size()
    buckets = Buckets(model, state["bucket_params"])
    losses: list[torch.Tensor] = []
    last: dict = {}
    try:
        for x, y in state["batches"]:
            opt.zero_grad(set_to_none=True)
            loss = _loss(model, x, y)
            loss.backward()
            buckets.finish(world)
            last = grads(state)
            opt.step()
            losses.append(loss.detach())
    finally:
        buckets.remove()
    return _captures(state, losses, last)
