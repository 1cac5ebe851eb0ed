"""User code for the equivalence kind's negative controls (tests/test_equivalence_e2e.py).

``step`` is used as both reference and candidate: it uses dropout (the RNG), an SGD optimizer
with momentum (optimizer state) and accumulates into ``.grad`` without zeroing first — so it
gives the same captures twice only if the kind restores weights, gradients, optimizer state
and RNG between the runs. Every other candidate plants one bug.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from runner.equivalence import Skip, grads


def setup(ctx: Any, params: dict) -> dict:
    ctx.init_distributed()    # already done by the kind: must be idempotent
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    ctx.record("equivalence_notes", ["controls module: dropout + SGD momentum"])
    return {"model": model, "opt": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            "x": torch.randn(5, 6, generator=torch.Generator().manual_seed(ctx.rank))}


def step(ctx: Any, state: dict) -> dict:
    model, opt = state["model"], state["opt"]
    losses = []
    for i in range(2):
        if i:
            opt.zero_grad(set_to_none=True)   # the first step accumulates onto what is there
        loss = model(state["x"]).square().mean()
        loss.backward()
        last = grads(state)
        opt.step()
        losses.append(loss.detach())
    return {"loss": torch.stack(losses), "grads": last, "out": {"y": model(state["x"]).detach()},
            "trace": ["step0", "step1"]}


def candidate_raises(ctx: Any, state: dict) -> dict:
    if ctx.rank == 1:
        raise ValueError("planted failure in the candidate")
    return step(ctx, state)


def candidate_rank1_differs(ctx: Any, state: dict) -> dict:
    caps = step(ctx, state)
    if ctx.rank == 1:
        caps["out"]["y"][2, 1] += 0.25
    return caps


def candidate_drops_grad(ctx: Any, state: dict) -> dict:
    caps = step(ctx, state)
    caps["grads"].pop("model.2.bias")
    caps["grads"]["model.0.weight"] = None
    return caps


def candidate_swapped_trace(ctx: Any, state: dict) -> dict:
    caps = step(ctx, state)
    caps["trace"] = ["step1", "step0"]
    return caps


def setup_skips(ctx: Any, params: dict) -> dict:
    raise Skip("needs a GPU with 80 GB")
