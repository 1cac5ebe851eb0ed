"""In-rank entry of the ``gpt`` case kind: ``workloads.gpt.worker:run``.

Reads the launch's args (Megatron-named training args plus the test-flow keys in
``config.RUN_KEYS``), resolves where checkpoints are written and read — this launch's
``<results_dir>/checkpoints``; for a resumed run the ``checkpoints`` folder of the launch named
in ``load_from`` (``ctx.sibling_dir``) — and trains.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from workloads.gpt.config import BUILTIN_DATA, CHECKPOINT_DIRNAME, GPTConfig
from workloads.gpt.faults import Fault
from workloads.gpt.train import RunOptions, train

if TYPE_CHECKING:
    from runner.worker.context import WorkerContext
    from workloads.gpt.megatron_args import MegatronRun


def run_options(ctx: WorkerContext, args: Mapping[str, Any]) -> RunOptions:
    cfg_has_saves = bool(args.get("save_interval"))
    load_from = args.get("load_from")
    return RunOptions(
        save_dir=ctx.results_dir / CHECKPOINT_DIRNAME if cfg_has_saves else None,
        load_dir=ctx.sibling_dir(load_from) / CHECKPOINT_DIRNAME if load_from else None,
        data=str(args.get("data", BUILTIN_DATA)),
        data_cache=ctx.results_dir / "data",
        fault=Fault.parse(args.get("inject_fault")),
    )


def run(ctx: WorkerContext) -> None:
    args = dict(ctx.args)
    cfg = GPTConfig.from_args(args)
    train(ctx, cfg, run_options(ctx, args))


def megatron_options(ctx: WorkerContext, parsed: MegatronRun) -> RunOptions:
    """RunOptions from a parsed Megatron command line: --save only with --save-interval (as
    Megatron), --load a folder that may hold no checkpoint yet (then training starts fresh)."""
    saves = parsed.config.get("save_interval")
    return RunOptions(
        save_dir=Path(parsed.save) if parsed.save is not None and saves else None,
        load_dir=Path(parsed.load) if parsed.load else None,
        load_optional=True,
        data=parsed.data,
        data_cache=Path(parsed.data_cache) if parsed.data_cache else ctx.results_dir / "data",
        tensorboard_dir=Path(parsed.tensorboard_dir) if parsed.tensorboard_dir else None,
    )


def run_megatron(ctx: WorkerContext, argv: list[str]) -> None:
    """The built-in training entry that speaks Megatron's command line."""
    from workloads.gpt.megatron_args import parse

    parsed = parse(list(argv), unsupported=str(ctx.args.get("unsupported_args", "error")))
    if ctx.rank == 0:
        for note in parsed.notes:
            print(f"megatron args: accepted without effect: {note}", flush=True)
        for flag in parsed.ignored:
            print(f"warning: megatron args: ignoring unsupported argument {flag}", flush=True)
    ctx.record("megatron_args", {"without_effect": list(parsed.without_effect), "ignored": list(parsed.ignored)})
    train(ctx, GPTConfig(**parsed.config), megatron_options(ctx, parsed))
