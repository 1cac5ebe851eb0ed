"""In-rank loop of a warm worker pool: ``runner.worker.pool:serve``.

A pool is one long launch whose ranks imported torch and built the process group once, then
run cases' launches one after another. The launcher side (``runner.run.pooling``) talks to
the ranks through a spool folder::

    spool/ready-{N}-rank{R}     rank R is clean and waits for task N
    spool/task-{N}.json         task N: {"launch": "<results_dir>/launch.json"} or {"stop": true}

For each task every rank: waits for the task file, applies the launch's per-launch
environment, redirects its output to the launch's own ``logs/rank{R}.log``, sets the RNG and
determinism state a fresh rank would have, runs the entry through ``runner.worker.main.execute``
(so captures and completion records are exactly those of a fresh rank), then restores
environment, working directory, ``sys.path`` and output, destroys process groups the case
created and checks with its peers that the default group is intact and all ranks ran the same
task. A rank whose case failed, or whose state cannot be made clean, exits at once (non-zero):
torchrun stops its peers and the launcher starts a fresh pool for the next case.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.worker.context import WorkerContext, read_launch
from runner.worker.output import point_fds_at

#: longest sleep between looks at the spool while idle (seconds)
MAX_IDLE_SLEEP = 0.02
#: FOR THE PROJECT'S OWN TESTS ONLY: "1" plants a pool that skips the reset between cases,
#: so the isolation test can show it would catch one (tests/run/test_pool.py)
SKIP_RESET_VAR = "RUNNER_POOL_SKIP_RESET"
#: how long a pool waits for its next task before it ends by itself (the launcher is gone)
IDLE_LIMIT_S = 3600.0


def ready_file(spool: Path, seq: int, rank: int) -> Path:
    return spool / f"ready-{seq}-rank{rank}"


def task_file(spool: Path, seq: int) -> Path:
    return spool / f"task-{seq}.json"


class PoolUnclean(RuntimeError):
    """The process state after a case cannot be made what the next case expects."""


@dataclass
class _Baseline:
    """What a fresh rank looks like right after the pool started (torch imported, group built)."""

    environ: dict[str, str]
    cwd: str
    sys_path: list[str]
    torch_rng: Any
    cuda_rng: Any
    py_rng: Any
    np_rng: Any
    flags: dict[str, Any]
    groups: frozenset[int]


def _torch_flags() -> dict[str, Any]:
    import torch

    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32),
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "dtype": torch.get_default_dtype(),
        "grad": torch.is_grad_enabled(),
        "threads": torch.get_num_threads(),
    }


def _set_torch_flags(flags: dict[str, Any]) -> None:
    import torch

    from workloads.common.determinism import set_deterministic_algorithms

    if (torch.are_deterministic_algorithms_enabled() != flags["deterministic"]
            or torch.is_deterministic_algorithms_warn_only_enabled() != flags["warn_only"]):
        set_deterministic_algorithms(flags["deterministic"], warn_only=flags["warn_only"])
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.allow_tf32) = flags["cudnn"]
    torch.backends.cuda.matmul.allow_tf32 = flags["matmul_tf32"]
    torch.set_default_dtype(flags["dtype"])
    torch.set_grad_enabled(flags["grad"])
    if torch.get_num_threads() != flags["threads"]:
        torch.set_num_threads(flags["threads"])


def _group_ids() -> frozenset[int]:
    from torch.distributed import distributed_c10d as c10d

    return frozenset(id(pg) for pg in c10d._world.pg_map)


def take_baseline() -> _Baseline:
    import torch

    try:
        import numpy as np

        np_rng = np.random.get_state()
    except ImportError:
        np_rng = None
    return _Baseline(
        environ=dict(os.environ), cwd=os.getcwd(), sys_path=list(sys.path),
        torch_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        py_rng=random.getstate(), np_rng=np_rng, flags=_torch_flags(), groups=_group_ids())


def reset_to(base: _Baseline) -> None:
    """Process state back to the baseline: environment, cwd, sys.path, RNGs, torch flags."""
    import torch

    if dict(os.environ) != base.environ:
        os.environ.clear()
        os.environ.update(base.environ)
    if os.getcwd() != base.cwd:
        os.chdir(base.cwd)
    sys.path[:] = base.sys_path
    torch.set_rng_state(base.torch_rng)
    if base.cuda_rng is not None:
        torch.cuda.set_rng_state_all(base.cuda_rng)
    random.setstate(base.py_rng)
    if base.np_rng is not None:
        import numpy as np

        np.random.set_state(base.np_rng)
    _set_torch_flags(base.flags)


def check_clean(base: _Baseline, seq: int, world_size: int) -> None:
    """Destroy groups the case created; the default group must be intact and every rank must
    have run task ``seq`` (one all-gather over the default group)."""
    import torch
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    if not dist.is_initialized():
        raise PoolUnclean("the case destroyed the default process group")
    if dist.get_world_size() != world_size:
        raise PoolUnclean(f"default group has {dist.get_world_size()} ranks, the pool {world_size}")
    for pg in list(c10d._world.pg_map):
        if id(pg) not in base.groups and pg is not dist.group.WORLD:
            dist.destroy_process_group(pg)
    seqs = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size)]
    mine = torch.tensor([seq], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        dev = torch.device("cuda", torch.cuda.current_device())
        seqs, mine = [s.to(dev) for s in seqs], mine.to(dev)
    dist.all_gather(seqs, mine)
    got = sorted({int(s.item()) for s in seqs})
    if got != [seq]:
        raise PoolUnclean(f"ranks ran different tasks: {got}")


class _Output:
    """Point fds 1/2 at a case's log and back at the pool's own log."""

    def __init__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))

    def to(self, path: Path) -> None:
        point_fds_at(path)

    def back(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)


def wait_task(spool: Path, seq: int, *, max_sleep: float = MAX_IDLE_SLEEP,
              shared_fs: bool = False) -> dict[str, Any]:
    """The task file ``seq``, once it exists. On a shared filesystem the folder is listed
    before each look (a directory read revalidates NFS attribute caches; the launcher
    writes the file by rename, so it is whole once listed)."""
    path = task_file(spool, seq)
    sleep, idle_since = 0.001, time.monotonic()
    while True:
        try:
            if shared_fs and path.name not in os.listdir(spool):
                raise FileNotFoundError(path)
            return json.loads(path.read_text())
        except FileNotFoundError:
            pass
        except json.JSONDecodeError:  # written atomically; only a foreign writer gets here
            raise PoolUnclean(f"unreadable task file {path}") from None
        if time.monotonic() - idle_since > IDLE_LIMIT_S:
            return {"stop": True}
        time.sleep(sleep)
        sleep = min(max_sleep, sleep * 2)


def serve(ctx: WorkerContext) -> None:
    """The pool launch's entry: build the group once, then run tasks until told to stop."""
    from runner.worker.main import execute

    spool = Path(ctx.args["spool"])
    ctx.init_distributed(timeout_s=float(ctx.args.get("group_timeout_s", 3600)))
    base = take_baseline()
    out = _Output()
    seq = 0
    while True:
        ready_file(spool, seq, ctx.rank).touch()
        task = wait_task(spool, seq, max_sleep=float(ctx.args.get("idle_poll_s", MAX_IDLE_SLEEP)),
                         shared_fs=bool(ctx.args.get("shared_fs", False)))
        if task.get("stop"):
            # nothing reads a pool's own record; skip group and interpreter teardown (seconds
            # of torch finalisation per rank) so the session ends as soon as the cases do
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        launch = read_launch(task["launch"])
        os.environ.update(launch.env)
        case_ctx = WorkerContext(launch)
        out.to(case_ctx.results.log_file(case_ctx.rank))
        try:
            code = execute(case_ctx)
        finally:
            out.back()
        if code:
            print(f"pool: task {seq} ({launch.case_id}) failed in this rank; the pool stops", flush=True)
            os._exit(code)
        try:
            if os.environ.get(SKIP_RESET_VAR) != "1":
                reset_to(base)
            check_clean(base, seq, ctx.world_size)
        except Exception as exc:  # noqa: BLE001 - any doubt about the state ends the pool
            print(f"pool: state after task {seq} ({launch.case_id}) is not clean: {exc}; the pool stops", flush=True)
            sys.stdout.flush()
            os._exit(3)
        seq += 1
