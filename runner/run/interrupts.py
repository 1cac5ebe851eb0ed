"""Ctrl-C (SIGINT) and SIGTERM while the scheduler runs.

The first press asks for a graceful stop: nothing new starts, running launches are cancelled
and waited for, comparisons finish. The second press stops everything now: it raises
``KeyboardInterrupt`` into the scheduler's loop (``runner.run.cleanup.StopEverything`` then
cancels and reaps every launch). Two places never see that exception:

* a *shielded* section: a launch being submitted, until its handle is stored (otherwise the
  backend may have started processes the scheduler holds no handle for, and nothing stops
  them). The press is remembered and raised when the section ends;
* the stop itself (once ``stopping()`` is called): it is already what the press asks for, and
  it is bounded, so further presses are ignored and the verdict table still prints.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from types import FrameType
from typing import Any, Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CtrlC:
    def __init__(self) -> None:
        self.presses = 0
        self._shields = 0
        self._deferred = False
        self._stopping = False

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for (any press)."""
        return self.presses > 0

    def press(self, signum: int = signal.SIGINT, _frame: FrameType | None = None) -> None:
        """The signal handler (public so that tests and embedders can press without a signal)."""
        self.presses += 1
        if self.presses == 1 or self._stopping:
            return
        if self._shields:
            self._deferred = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """A second press inside is raised only when the section has ended normally."""
        self._shields += 1
        try:
            yield
        finally:
            self._shields -= 1
        if self._deferred and not self._shields and not self._stopping:
            self._deferred = False
            raise KeyboardInterrupt

    def stopping(self) -> None:
        """The stop is underway: presses from now on are ignored."""
        self._stopping = True

    @contextmanager
    def installed(self) -> Iterator["CtrlC"]:
        """Handle SIGINT and SIGTERM with ``press`` inside; the previous handlers afterwards.
        Outside the main thread signals cannot be handled and nothing is installed."""
        previous: list[tuple[signal.Signals, Any]] = []
        try:
            for sig in _SIGNALS:
                previous.append((sig, signal.getsignal(sig)))
                signal.signal(sig, self.press)
        except ValueError:   # not in the main thread
            previous = []
        try:
            yield self
        finally:
            for sig, handler in previous:
                signal.signal(sig, handler)
