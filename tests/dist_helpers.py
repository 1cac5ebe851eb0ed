"""Spawning real gloo process groups in tests (torch.multiprocessing, a file store)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, store: str, fn: Callable[..., None], args: tuple) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    fn(rank, world, *args)        # a failure propagates with its traceback to the test
    dist.barrier()
    dist.destroy_process_group()
    leave_cleanly()


def leave_cleanly() -> None:
    """End a spawned rank whose work has passed, without interpreter teardown: gloo's threads
    can abort the process ("terminate called without an active exception") when process-group
    objects are collected late during teardown, which would turn a pass into a spurious crash."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn: Callable[..., None], world: int, tmp_path: Path, *args: Any) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes joined in one gloo group."""
    store = tmp_path / f"store_{fn.__name__}"
    mp.start_processes(_entry, args=(world, str(store), fn, args), nprocs=world, join=True, start_method="spawn")
