"""In-rank side of the ``megatron`` kind: fill the command line's placeholders with this
launch's paths and run the training entry — the built-in GPT workload (``builtin``), a script
(Megatron-LM's ``pretrain_gpt.py``) as ``__main__``, or ``-m package.module``."""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from runner.sources.placeholders import fill, launch_paths


def run(ctx) -> None:
    args = ctx.args
    resume = args.get("resume")
    paths = launch_paths(ctx, load_from=resume["from"] if resume else None, frozen=args.get("frozen_checkpoint"),
                         data_path=args.get("data_path"))
    argv = fill(list(args["argv"]), paths)
    for key in ("TENSORBOARD_PATH", "CHECKPOINT_SAVE_PATH"):
        Path(paths[key]).mkdir(parents=True, exist_ok=True)
    os.environ.update({k: v for k, v in paths.items()})
    entry = str(args["entry"])
    if ctx.rank == 0:
        print(f"megatron entry {entry}: {' '.join(argv)}", flush=True)
    if entry == "builtin":
        from workloads.gpt.worker import run_megatron

        run_megatron(ctx, argv)
        return
    if entry.startswith("-m "):
        module = entry[3:].strip()
        sys.argv = [module] + argv
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    script = Path(entry)
    if not script.is_absolute():
        script = Path(args["entry_root"]) / script
    sys.argv = [str(script)] + argv
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")
