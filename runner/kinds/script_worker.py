"""In-rank side of the ``script`` kind: run the user's script as ``__main__``."""
from __future__ import annotations

import os
import runpy
import sys

from runner.worker.context import WorkerContext


def run(ctx: WorkerContext) -> None:
    args = ctx.args
    os.environ["RUNNER_RESULTS_DIR"] = str(ctx.results_dir)
    metrics = ctx.results.metrics_file(ctx.rank)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    os.environ["RUNNER_METRICS_FILE"] = str(metrics)
    os.environ["RUNNER_TENSORBOARD_DIR"] = str(ctx.results.tensorboard_dir / f"rank{ctx.rank}")
    from runner.sources.placeholders import fill, launch_paths

    resume = args.get("resume")
    argv = fill(list(args.get("argv", [])), launch_paths(ctx, load_from=resume["from"] if resume else None))
    if "script" in args:
        script = args["script"]
        sys.argv = [script] + argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")
    else:
        sys.argv = [args["module"]] + argv
        runpy.run_module(args["module"], run_name="__main__", alter_sys=True)
