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
from typing import Any, Callable, MutableMapping

from runner.records import Case, CaseResult, Verdict


class StopEverything:
    def __init__(self, backend: Any, running: list[Any], pending: list[Any],
                 results: MutableMapping[str, CaseResult], *, on_stopped: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self.running = running
        self.pending = pending
        self.results = results
        self.on_stopped = on_stopped or (lambda: None)
        self.internal_error: str | None = None
        self.interrupted = False

    def __enter__(self) -> "StopEverything":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
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
        handles = [r.handle for r in self.running if getattr(r, "handle", None) is not None]
        for h in handles:
            try:
                self.backend.cancel(h, "interrupt")
            except Exception:  # noqa: BLE001 - keep cancelling the others
                pass
        grace = float(getattr(self.backend, "grace", 10.0) or 10.0)
        deadline = time.monotonic() + grace + 10.0
        live = [r for r in self.running if getattr(r, "handle", None) is not None]
        while live and time.monotonic() < deadline:
            try:
                states = self.backend.poll([r.handle for r in live])
            except Exception:  # noqa: BLE001 - a backend that cannot poll cannot be waited for
                break
            for r in list(live):
                st = states.get(r.handle.id)
                if st is not None and st.done:
                    live.remove(r)
                    try:
                        self.backend.collect(r.handle)   # frees the backend's resources
                    except Exception:  # noqa: BLE001
                        pass
            if live:
                time.sleep(min(0.2, float(getattr(self.backend, "poll_interval", 0.2))))
        for r in list(self.running) + list(self.pending):
            case: Case = r.case
            self.results.setdefault(case.id, CaseResult(case, Verdict.INTERRUPTED, detail if r in self.running
                                                        else "not run (session stopped)", 0.0, self.backend.id))
        self.running.clear()
        self.pending.clear()


