"""The local backend's torchrun agent: ``python -m backends.local.torchrun ARGS...``.

Runs ``torch.distributed.run`` (torchrun) with ``ARGS`` exactly as ``python -m
torch.distributed.run ARGS...`` would — same options, same output, same exit codes and error
files — with two costs of torchrun's own taken out of every launch:

* the rendezvous names each event it records after the calling method, through
  ``get_method_name`` in ``torch.distributed.elastic.rendezvous.dynamic_rendezvous``, which
  builds ``inspect.stack()`` (every frame, with source lines looked up through every loaded
  module) twice per event; measured 2.5 CPU seconds per launch at load 8 on 2 cores, part of
  it before the ranks start and part after they end. :func:`method_name` returns the same
  name from one frame lookup.
* the agent imported torch, so Python's shutdown would spend most of a second collecting
  torch's objects after the ranks have finished; it leaves through
  ``runner.worker.teardown.quick_exit_gc``.
"""
from __future__ import annotations

import runpy
import sys

from runner.worker.teardown import quick_exit_gc

TORCHRUN = "torch.distributed.run"
RENDEZVOUS = "torch.distributed.elastic.rendezvous.dynamic_rendezvous"


def method_name(depth: int = 2) -> str:
    """What ``dynamic_rendezvous.get_method_name(depth)`` returns — the function name of
    ``inspect.stack()[depth]``, counted from this function's own frame — without building the
    stack."""
    try:
        return sys._getframe(depth).f_code.co_name
    except ValueError:   # the stack is not that deep
        return "no_method_name"


def cheap_method_names() -> bool:
    """Point torchrun's rendezvous at :func:`method_name`; False when this torch has no such
    helper (then nothing is changed)."""
    try:
        module = __import__(RENDEZVOUS, fromlist=["get_method_name"])
    except ImportError:
        return False
    if not callable(getattr(module, "get_method_name", None)):
        return False
    setattr(module, "get_method_name", method_name)
    return True


def main() -> None:
    cheap_method_names()
    try:
        runpy.run_module(TORCHRUN, run_name="__main__", alter_sys=True)
    finally:
        quick_exit_gc()


if __name__ == "__main__":
    main()
