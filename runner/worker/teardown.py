"""A quick interpreter exit for processes that imported torch.

Python's shutdown runs the cyclic garbage collector over every live object several times while
it clears modules; with torch imported (some 165,000 objects) that alone takes about a second
per process on a 2-core machine, paid by every rank and by every torchrun agent at the end of
every launch. ``quick_exit_gc`` collects what is garbage now (so finalizers of objects in
reference cycles still run, files in them are flushed and closed), then freezes the survivors
(``gc.freeze``): the collections during shutdown skip them. Everything else of a normal exit
still happens — non-daemon threads are joined, ``atexit`` handlers run, modules are cleared and
objects freed by reference counting — only cycles that become garbage during the shutdown
itself are left to the operating system, as Python already allows (``__del__`` is not
guaranteed to run for objects alive at exit).
"""
from __future__ import annotations

import gc


def quick_exit_gc() -> None:
    """Call last, on the way out of a process that is about to exit normally."""
    gc.collect()
    gc.freeze()
