"""The local backend's torchrun agent: ``python -m backends.local.agent ARGS...``.

Runs ``torch.distributed.run`` (torchrun) with ``ARGS`` exactly as ``python -m
torch.distributed.run ARGS...`` would — same options, same output, same exit codes and error
files — and leaves through ``runner.worker.teardown.quick_exit_gc``: an agent imported torch,
and Python's shutdown would otherwise spend most of a second collecting torch's objects after
the ranks have finished, on every launch.
"""
from __future__ import annotations

import runpy

from runner.worker.teardown import quick_exit_gc

TORCHRUN = "torch.distributed.run"


def main() -> None:
    try:
        runpy.run_module(TORCHRUN, run_name="__main__", alter_sys=True)
    finally:
        quick_exit_gc()


if __name__ == "__main__":
    main()
