"""In-rank entry of the ``gpt`` case kind: ``workloads.gpt.worker:run``.

Reads the launch's args (Megatron-named training args plus the test-flow keys in
``config.RUN_KEYS``), resolves where checkpoints are written and read — this launch's
``<results_dir>/checkpoints``; for a resumed run the ``checkpoints`` folder of the launch named
in ``load_from`` (``ctx.sibling_dir``) — and trains.
"""
from __future__ import annotations

from workloads.gpt.config import BUILTIN_DATA, GPTConfig
from workloads.gpt.faults import Fault
from workloads.gpt.train import RunOptions, train

CHECKPOINT_DIRNAME = "checkpoints"


def run_options(ctx, args) -> RunOptions:
    cfg_has_saves = bool(args.get("save_interval"))
    load_from = args.get("load_from")
    return RunOptions(
        save_dir=ctx.results_dir / CHECKPOINT_DIRNAME if cfg_has_saves else None,
        load_dir=ctx.sibling_dir(load_from) / CHECKPOINT_DIRNAME if load_from else None,
        discard_after_iteration=args.get("discard_after_iteration"),
        data=str(args.get("data", BUILTIN_DATA)),
        data_cache=ctx.results_dir / "data",
        fault=Fault.parse(args.get("inject_fault")),
    )


def run(ctx) -> None:
    args = dict(ctx.args)
    cfg = GPTConfig.from_args(args)
    train(ctx, cfg, run_options(ctx, args))
