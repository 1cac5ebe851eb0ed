"""Verdicts decided on a worker thread, so that dispatching never waits on a comparison.

Comparing a finished case (reading captures and metrics, deepdiff, torch) can take seconds;
meanwhile the scheduler keeps starting launches into the freed capacity (a warm pool's next
case, the next queued launch). One worker thread runs the jobs one at a time, in the order
they were queued, so results come back in the order cases finished, exactly as when the
comparison ran inline. An exception a job raises is re-raised in the scheduler's thread
when its result is taken, with its traceback. The thread is a daemon: a comparison still
running when the scheduler has stopped everything does not hold up the process's exit.
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")      # what a job is about (the scheduler's case run)
R = TypeVar("R")      # what it returns (a CaseResult)

_Job = tuple[T, Callable[[], R]]


class Comparisons(Generic[T, R]):
    def __init__(self) -> None:
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._done: deque[tuple[T, R | None, BaseException | None]] = deque()
        self._ready = threading.Condition()
        self._in_flight: list[T] = []
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._in_flight)

    @property
    def in_flight(self) -> list[T]:
        """What is queued or being compared, or compared and not yet taken."""
        return list(self._in_flight)

    def submit(self, item: T, job: Callable[[], R]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="runner-compare", daemon=True)
            self._thread.start()
        self._in_flight.append(item)
        self._jobs.put((item, job))

    def take_ready(self) -> Iterator[tuple[T, R]]:
        """The results finished so far, one at a time in queue order (what the caller has not
        taken when it stops iterating stays in flight); a job's exception is raised here."""
        while self._done:
            item, result, exc = self._done.popleft()
            self._in_flight.remove(item)
            if exc is not None:
                raise exc
            assert result is not None
            yield item, result

    def wait(self, timeout: float) -> None:
        """Until a result is ready or ``timeout`` seconds have passed."""
        with self._ready:
            if not self._done:
                self._ready.wait(timeout)

    def close(self) -> None:
        """No more jobs: the thread ends after the queued ones (it does not block the caller)."""
        if self._thread is not None:
            self._jobs.put(None)

    def _work(self) -> None:
        while (entry := self._jobs.get()) is not None:
            item, job = entry
            try:
                done: tuple[T, R | None, BaseException | None] = (item, job(), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the scheduler's thread
                done = (item, None, exc)
            with self._ready:
                self._done.append(done)
                self._ready.notify_all()
