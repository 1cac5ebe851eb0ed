"""In-rank entry point: ``python -m runner.worker <results_dir>/launch.json``.

torchrun (or srun/pods via torchrun) starts this in every rank. It redirects the rank's
stdout/stderr into ``logs/rank{R}.log``, calls the launch's entry function with a
WorkerContext, and writes ``done/rank{R}.json`` either way: ``ok``, or ``error`` with the
exception and traceback. A rank that dies without writing its record (killed, segfault) is
seen by the runner as a missing record.

The rank imports only what it needs of ``runner`` (``runner.worker``, the launch record and
the results dir: no pluggy, YAML, deepdiff, jsonschema or tabulate), and after a clean run it
exits through ``runner.worker.teardown.quick_exit_gc``, which cuts the second that Python's
shutdown spends collecting torch's objects.
"""
from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from runner.results import write_json_atomic
from runner.worker.context import WorkerContext, read_launch
from runner.worker.lifetime import die_with_parent
from runner.worker.output import point_fds_at
from runner.worker.teardown import quick_exit_gc


def _redirect_output(path: Path) -> None:
    point_fds_at(path)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def resolve_entry(entry: str) -> Any:
    """The object ``"module:name"`` names (``name`` defaults to ``main``)."""
    module_name, _, func_name = entry.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, func_name or "main")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m runner.worker RESULTS_DIR/launch.json", file=sys.stderr)
        return 2
    die_with_parent()   # first: a rank never outlives its launcher
    launch = read_launch(argv[0])
    ctx = WorkerContext(launch)
    if os.environ.get("RUNNER_WORKER_NO_REDIRECT") != "1":
        _redirect_output(ctx.results.log_file(ctx.rank))
    code = execute(ctx)
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        # Skip interpreter teardown: a rank that failed while peers wait in a collective
        # must not hang in process-group destructors.
        os._exit(code)
    if "torch" in sys.modules:   # never import torch just to find there is nothing to tear down
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass
    quick_exit_gc()
    return 0


def execute(ctx: WorkerContext) -> int:
    """Run the launch's entry in this rank and write its completion record; the exit code.

    Shared by a fresh rank (``main``) and a warm pool rank (``runner.worker.pool``), so the
    records are the same either way."""
    launch = ctx.launch
    started = time.time()
    record: dict[str, Any] = {"rank": ctx.rank, "world_size": ctx.world_size, "host": ctx.host, "pid": os.getpid(),
              "node": os.environ.get("SLURMD_NODENAME") or os.environ.get("RUNNER_NODE_RANK") or ctx.host,
              "started": started}
    code = 0
    try:
        fn = resolve_entry(launch.entry)
        fn(ctx)
        record["status"] = "ok"
    except SystemExit as exc:  # a script calling sys.exit(n)
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        record["status"] = "ok" if status == 0 else "error"
        if status:
            record["exception"] = f"SystemExit({exc.code!r})"
            record["traceback"] = ""
            code = status
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a record
        record["status"] = "error"
        record["exception"] = f"{type(exc).__name__}: {exc}".strip()
        record["traceback"] = traceback.format_exc()
        traceback.print_exc()
        code = 1
    finally:
        ctx.close()
    record["finished"] = time.time()
    record["duration"] = record["finished"] - started
    sys.stdout.flush()
    sys.stderr.flush()
    write_json_atomic(ctx.results.done_file(ctx.rank), record, durable=False)   # read at once; no fsync wait
    return code


if __name__ == "__main__":
    sys.exit(main())
