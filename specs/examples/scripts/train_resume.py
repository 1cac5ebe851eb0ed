"""A user's own training script with Megatron-style checkpoints, for the runner's ckpt-resume test.

Command line (Megatron's names): ``--train-iters N --save DIR --load DIR --save-interval K``.
Checkpoints use Megatron-LM's layout: ``DIR/iter_{N:07d}/state.pt`` and
``DIR/latest_checkpointed_iteration.txt``; with ``--load`` pointing at a folder that has a
marker, training resumes from that iteration (model, Adam, LR scheduler, RNG, data position).
Metrics: one JSON line per step in ``$RUNNER_METRICS_FILE`` (``lm loss``, ``num-zeros``).

``--forget-lr-scheduler`` plants a real resume bug for the runner's own negative-control test:
the LR scheduler's state is not saved, so a resumed run restarts the warmup.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

MARKER = "latest_checkpointed_iteration.txt"


def iteration_dir(folder: Path, it: int) -> Path:
    return folder / f"iter_{it:07d}"


def save(folder: Path, it: int, model, opt, sched, forget_lr_scheduler: bool) -> None:
    if dist.get_rank() == 0:
        state = {"iteration": it, "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "rng": torch.get_rng_state()}
        if not forget_lr_scheduler:
            state["scheduler"] = sched.state_dict()
        target = iteration_dir(folder, it)
        target.mkdir(parents=True, exist_ok=True)
        torch.save(state, target / "state.pt")
        (folder / MARKER).write_text(str(it))
    dist.barrier()


def load(folder: Path, model, opt, sched) -> int:
    marker = folder / MARKER
    if not marker.is_file():
        return 0
    it = int(marker.read_text().strip())
    state = torch.load(iteration_dir(folder, it) / "state.pt", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if "scheduler" in state:
        sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    print(f"resumed from {folder} at iteration {it}", flush=True)
    return it


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-iters", type=int, required=True)
    p.add_argument("--save", type=Path)
    p.add_argument("--load", type=Path)
    p.add_argument("--save-interval", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--forget-lr-scheduler", action="store_true")
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 1))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.train_iters // 4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    true_w = torch.randn(16, 1, generator=torch.Generator().manual_seed(args.seed + 1))
    start = load(args.load, model, opt, sched) if args.load else 0
    metrics = open(os.environ["RUNNER_METRICS_FILE"], "a") if rank == 0 else None
    for it in range(start + 1, args.train_iters + 1):
        data_gen = torch.Generator().manual_seed(args.seed * 1000 + it * world + rank)   # position = iteration
        x = torch.randn(64, 16, generator=data_gen)
        loss = torch.nn.functional.mse_loss(ddp(x), x @ true_w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        avg = loss.detach().clone()
        dist.all_reduce(avg)
        zeros = sum(int((q.grad == 0).sum()) for q in model.parameters())
        if metrics:
            metrics.write(json.dumps({"step": it, "lm loss": (avg / world).item(), "num-zeros": zeros}) + "\n")
            metrics.flush()
        if args.save and args.save_interval and it % args.save_interval == 0:
            save(args.save, it, model, opt, sched, args.forget_lr_scheduler)
    if metrics:
        metrics.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
