"""Nothing keeps running when the scheduler stops early, whatever stopped it.

``StopEverything`` wraps the scheduler's loop. On a second Ctrl-C (KeyboardInterrupt) or ANY
other exception inside the loop (a bug, an OSError, a plugin hook that raised) it cancels
every in-flight handle, polls until the backend reports each one gone (bounded: the
backend's grace period plus a margin), and fills in a result for every case that did not get
one, so the verdict table is still printed. An exception is kept in ``internal_error`` (the
formatted traceback) for the command line to show after the table (exit 3); it is not raised.
"""
from __future__ import annotations

import time
import traceback
from types import TracebackType
from typing import Any, Callable, MutableMapping

from runner.records import Case, CaseResult, Verdict


class StopEverything:
    """``comparing``: an object whose ``in_flight`` lists the runs whose comparison has not
    been taken yet (``runner.run.comparisons.Comparisons``); they are reported as interrupted."""

    def __init__(self, backend: Any, running: list[Any], pending: list[Any],
                 results: MutableMapping[str, CaseResult], *, comparing: Any = None,
                 on_stopped: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self.running = running
        self.pending = pending
        self.results = results
        self.comparing = comparing
        self.on_stopped = on_stopped or (lambda: None)
        self.internal_error: str | None = None
        self.interrupted = False

    def __enter__(self) -> "StopEverything":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc_type is None:
            return False
        if issubclass(exc_type, KeyboardInterrupt):
            self.interrupted = True
            detail = "interrupted"
        else:
            self.internal_error = "".join(traceback.format_exception(exc_type, exc, tb))
            detail = f"stopped: internal error in the runner ({exc_type.__name__}: {exc})"
        self.on_stopped()
        self.stop_all(detail)
        # SystemExit and friends still propagate, after the cleanup
        return issubclass(exc_type, Exception) or issubclass(exc_type, KeyboardInterrupt)

    def stop_all(self, detail: str) -> None:
        live = [r for r in self.running if getattr(r, "handle", None) is not None]
        for r in live:
            _quietly(self.backend.cancel, r.handle, "interrupt")
        self._reap(live)
        comparing = list(getattr(self.comparing, "in_flight", []) or [])
        for r in self.running + comparing:
            self._give_result(r.case, detail)
        for r in self.pending:
            self._give_result(r.case, "not run (session stopped)")
        self.running.clear()
        self.pending.clear()

    def _reap(self, live: list[Any]) -> None:
        """Poll until every cancelled job is gone (bounded: the backend's grace plus 10 s),
        collecting each one (that frees the backend's resources)."""
        grace = float(getattr(self.backend, "grace", 10.0) or 10.0)
        deadline = time.monotonic() + grace + 10.0
        pause = min(0.2, float(getattr(self.backend, "poll_interval", 0.2)))
        while live and time.monotonic() < deadline:
            try:
                states = self.backend.poll([r.handle for r in live])
            except Exception:  # noqa: BLE001 - a backend that cannot poll cannot be waited for
                return
            for r in [r for r in live if _done(states.get(r.handle.id))]:
                live.remove(r)
                _quietly(self.backend.collect, r.handle)
            if live:
                time.sleep(pause)

    def _give_result(self, case: Case, detail: str) -> None:
        self.results.setdefault(case.id, CaseResult(case, Verdict.INTERRUPTED, detail, 0.0, self.backend.id))


def _done(state: Any) -> bool:
    return state is not None and bool(state.done)


def _quietly(call: Callable[..., Any], *args: Any) -> None:
    try:
        call(*args)
    except Exception:  # noqa: BLE001 - keep stopping the others
        pass
