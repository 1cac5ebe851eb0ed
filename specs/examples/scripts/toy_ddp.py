"""A small data-parallel regression trained with DistributedDataParallel.

An example of pointing the runner at your own training script (the ``script`` kind): it
initialises torch.distributed itself, trains, and writes one JSON line of metrics per step
to the file named by ``RUNNER_METRICS_FILE`` (Megatron's metric names).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + 1)
    true_w = torch.randn(16, 1, generator=gen)
    metrics = open(os.environ["RUNNER_METRICS_FILE"], "a") if rank == 0 else None
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        data_gen = torch.Generator().manual_seed(args.seed * 1000 + step * world + rank)
        x = torch.randn(64, 16, generator=data_gen)
        y = x @ true_w
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        avg = loss.detach().clone()
        dist.all_reduce(avg)
        avg /= world
        zeros = sum(int((p.grad == 0).sum()) for p in model.parameters())
        if metrics:
            metrics.write(json.dumps({"step": step, "lm loss": avg.item(), "num-zeros": zeros,
                                      "iteration-time": time.perf_counter() - t0}) + "\n")
    if metrics:
        metrics.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
