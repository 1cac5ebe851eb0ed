"""Runs cases through a backend: concurrency within capacity, time limits, retries, -x, Ctrl-C.

One loop in one thread, each turn: take the verdicts that are ready, react to a stop
(Ctrl-C, ``-x``), dispatch what fits, then poll every in-flight job with ONE batched backend
call and handle what finished: retry an INFRA attempt, start the case's next launch, or
queue the case for comparison. Comparisons run on a worker thread
(``runner.run.comparisons``), so a freed slot or warm pool is refilled at once instead of
idling while a finished case is compared; a comparison in progress holds one CPU slot of the
capacity (it is work in this process), and verdicts are still taken in the order cases
finished. The runner, not the backend, owns time limits (``cancel(handle, "timeout")`` at
the deadline, then polling until the job is gone), so every backend gets the same
semantics.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from runner.compare.verdict import decide, skipped
from runner.records import Case, CaseResult, Launch, LaunchOutcome, Outcome, Verdict
from runner.run.backend import Backend, Handle, JobState
from runner.run.cleanup import StopEverything
from runner.run.comparisons import Comparisons
from runner.run.interrupts import CtrlC
from runner.errors import UsageError
from runner.run.launch_dirs import LaunchProblem, archive_attempt, prepare_results_dir, write_case_result


@dataclass(eq=False)   # one object per case: found and removed by identity
class _CaseRun:
    case: Case
    launches: list[Launch]
    cpus: int
    gpus: int
    index: int = 0
    attempt: int = 1
    handle: Handle | None = None
    outcomes: list[LaunchOutcome] = field(default_factory=list)
    started: float = 0.0
    launch_started: float = 0.0

    @property
    def launch(self) -> Launch:
        return self.launches[self.index]

    def past_time_limit(self, now: float) -> bool:
        return self.handle is not None and self.handle.cancel_reason is None and \
            now - self.launch_started > self.launch.timeout


@dataclass
class _Queues:
    """Every case is in exactly one place: pending, running, comparing, or results."""
    pending: list[_CaseRun] = field(default_factory=list)
    running: list[_CaseRun] = field(default_factory=list)
    comparing: Comparisons[_CaseRun, CaseResult] = field(default_factory=Comparisons)
    results: dict[str, CaseResult] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.running or len(self.comparing))


class Scheduler:
    def __init__(self, session: Any, backend: Backend, *, jobs: int | None = None, exitfirst: bool = False,
                 on_result: Callable[[CaseResult], None] | None = None,
                 on_progress: Callable[[int, int, int], None] | None = None,
                 on_warning: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.jobs = jobs
        self.exitfirst = exitfirst
        self.on_result = on_result or (lambda r: None)
        self.on_progress = on_progress or (lambda done, running, total: None)
        self.on_warning = on_warning or (lambda line: print(f"warning: {line}", file=sys.stderr, flush=True))
        self._pools = _with_pools(session, backend)
        self.backend = self._pools or backend
        cap = backend.capacity()
        self.cap_cpus, self.cap_gpus = cap.cpus, cap.gpus
        self.ctrl_c = CtrlC()
        self._killed = False   # a second Ctrl-C stopped everything at once
        #: the formatted traceback when the loop stopped on an unexpected exception (exit 3)
        self.internal_error: str | None = None
        self._stop_starting = False
        self._q = _Queues()
        self._total = 0

    @property
    def interrupted(self) -> bool:
        return self.ctrl_c.requested or self._killed

    # -- the run ----------------------------------------------------------------------------
    def run(self, cases: Sequence[Case]) -> list[CaseResult]:
        self._q, self._total = _Queues(), len(cases)
        for case in cases:
            self._admit(case)
        self._sweep_leftovers()
        self._warn_oversubscribed(self._q.pending)
        guard = StopEverything(self.backend, self._q.running, self._q.pending, self._q.results,
                               comparing=self._q.comparing, on_stopped=self._on_stopped)
        with self.ctrl_c.installed():
            try:
                with guard:
                    self._loop()
            finally:
                self.ctrl_c.stopping()
                self._q.comparing.close()
                if self._pools is not None:
                    self._pools.close()   # stop the warm pools of this run
        self._killed = guard.interrupted
        self.internal_error = guard.internal_error
        self.on_progress(len(self._q.results), 0, self._total)
        return [self._q.results[c.id] for c in cases if c.id in self._q.results]

    def _admit(self, case: Case) -> None:
        """Queue the case, or give it its SKIPPED result when it cannot run here."""
        launches: list[Launch] = [] if case.skip else list(self.session.plan(case))
        gpus = launches[0].gpus_per_node * launches[0].nodes if launches else 0
        if case.skip:
            reason = case.skip
        elif self.cap_gpus is not None and gpus > self.cap_gpus:
            reason = f"needs {gpus} GPUs, {self.cap_gpus} available"
        elif not launches:
            reason = "the case kind planned no launch"
        else:
            self._q.pending.append(_CaseRun(case, launches, cpus=launches[0].world_size, gpus=gpus))
            return
        self._record(skipped(case, reason, self.backend.id))

    def _loop(self) -> None:
        while self._q.busy:
            self._take_verdicts()
            if self.interrupted and not self._stop_starting:
                self._stop("interrupt")
            if self._stop_starting:
                self._drop_pending()
            else:
                self._dispatch()
            self.on_progress(len(self._q.results), len(self._q.running), self._total)
            if self._q.running:
                time.sleep(self.backend.poll_interval)
                self._poll()
            elif len(self._q.comparing):
                self._q.comparing.wait(self.backend.poll_interval)

    def _on_stopped(self) -> None:
        """StopEverything took over: nothing starts any more, further presses are ignored."""
        self._stop_starting = True
        self.ctrl_c.stopping()

    # -- dispatch -----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Start every pending case that fits, in order (a case that does not fit lets later,
        smaller ones pass, except when ``--jobs`` is full)."""
        for run in list(self._q.pending):
            if self._jobs_full():
                return
            if self._fits(run):
                self._q.pending.remove(run)
                self._start(run)

    def _jobs_full(self) -> bool:
        return self.jobs is not None and len(self._q.running) >= self.jobs

    def _fits(self, run: _CaseRun) -> bool:
        """Within the capacity, where a comparison in progress holds one CPU slot (it runs in
        this process: on a machine the launches fill, overlapping it only slows both)."""
        running = self._q.running
        comparing = 1 if len(self._q.comparing) else 0
        if not running and not comparing:
            return True  # a case larger than the machine still runs, alone
        used_cpus = sum(r.cpus for r in running) + comparing
        fits_cpus = self.cap_cpus is None or used_cpus + run.cpus <= self.cap_cpus
        fits_gpus = self.cap_gpus is None or sum(r.gpus for r in running) + run.gpus <= self.cap_gpus
        return fits_cpus and fits_gpus

    def _start(self, run: _CaseRun) -> None:
        run.started = time.monotonic()
        self._q.running.append(run)   # before submitting: a failure half-way is still cleaned up
        problem = self._try_submit(run)
        if problem is not None:
            self._q.running.remove(run)
            self._record(CaseResult(run.case, problem.verdict, problem.reason, 0.0, self.backend.id))

    def _try_submit(self, run: _CaseRun) -> LaunchProblem | None:
        """Submit the case's current launch; why it could not start, when it could not."""
        try:
            prepare_results_dir(run.launch, first_attempt=run.attempt == 1)
            with self.ctrl_c.shielded():   # the handle is stored before a second Ctrl-C lands
                run.handle = self.backend.submit(run.launch)
                run.launch_started = time.monotonic()
            self.session.plugins.hook.runner_launch_started(launch=run.launch, attempt=run.attempt)
        except (UsageError, OSError) as exc:
            return LaunchProblem.from_exception(exc)
        return None

    def _drop_pending(self) -> None:
        detail = "not run (interrupted)" if self.interrupted else "not run (session stopped)"
        for run in self._q.pending:
            self._q.results[run.case.id] = CaseResult(run.case, Verdict.INTERRUPTED, detail, 0.0, self.backend.id)
        self._q.pending.clear()

    # -- poll -------------------------------------------------------------------------------------
    def _poll(self) -> None:
        states = self.backend.poll([r.handle for r in self._q.running if r.handle is not None])
        now = time.monotonic()
        for run in list(self._q.running):
            state = states.get(run.handle.id) if run.handle is not None else None
            if _finished(state):
                self._launch_finished(run)
            elif run.past_time_limit(now):
                self._cancel(run, "timeout")

    def _launch_finished(self, run: _CaseRun) -> None:
        """Its launch is done: retry it, start the case's next launch, or compare the case."""
        assert run.handle is not None
        outcome = self.backend.collect(run.handle)
        self.session.plugins.hook.runner_launch_finished(outcome=outcome)
        standing = self._outcome_after_retry(run, _with_attempts(outcome, run.attempt))
        if standing is None:
            return
        run.outcomes.append(standing)
        if standing.outcome is Outcome.COMPLETED and self._next_launch(run):
            return
        self._q.running.remove(run)
        self._compare(run)

    def _outcome_after_retry(self, run: _CaseRun, outcome: LaunchOutcome) -> LaunchOutcome | None:
        """None when the launch was submitted again (INFRA, per the retry policy); else the
        outcome that stands (INFRA when the new attempt could not start)."""
        retry = self.session.plugins.hook.runner_should_retry(case=run.case, outcome=outcome, attempt=run.attempt)
        if not retry or self.interrupted:
            return outcome
        run.attempt += 1
        archive_attempt(run.launch, run.attempt - 1)
        problem = self._try_submit(run)
        if problem is None:
            return None
        return LaunchOutcome(outcome.launch, Outcome.INFRA, problem.reason, attempts=run.attempt)

    def _next_launch(self, run: _CaseRun) -> bool:
        """Start the case's next launch (e.g. a resume run) when there is one; False when the
        case is done (including when the next launch could not start: its outcome is recorded)."""
        if run.index + 1 >= len(run.launches):
            return False
        run.index += 1
        run.attempt = 1
        problem = self._try_submit(run)
        if problem is None:
            return True
        failed = Outcome.INFRA if problem.verdict is Verdict.INFRA else Outcome.ERROR
        run.outcomes.append(LaunchOutcome(run.launch, failed, problem.reason))
        return False

    # -- compare and finish -------------------------------------------------------------------
    def _compare(self, run: _CaseRun) -> None:
        duration = time.monotonic() - run.started
        session, backend_id = self.session, self.backend.id
        self._q.comparing.submit(run, lambda: decide(session, run.case, run.outcomes, backend=backend_id,
                                                     duration=duration))

    def _take_verdicts(self) -> None:
        for run, result in self._q.comparing.take_ready():
            write_case_result(run.launches[0], result)
            self._record(result)
            self.session.plugins.hook.runner_case_result(result=result)
            if self.exitfirst and result.verdict.is_failure and not self._stop_starting:
                self._stop("interrupt")

    def _record(self, result: CaseResult) -> None:
        self._q.results[result.case.id] = result
        self.on_result(result)

    # -- stopping -----------------------------------------------------------------------------
    def _stop(self, reason: str) -> None:
        """Start nothing more; cancel what runs (it is reaped and reported by the loop)."""
        self._stop_starting = True
        for run in self._q.running:
            self._cancel(run, reason)

    def _cancel(self, run: _CaseRun, reason: str) -> None:
        if run.handle is not None:
            self.backend.cancel(run.handle, reason)

    # -- before the first launch --------------------------------------------------------------
    def _sweep_leftovers(self) -> None:
        """Before starting anything: end what a dead earlier run of this results root left running."""
        sweep = getattr(self.backend, "sweep", None)
        root = getattr(self.session, "results_root", None)
        if sweep is None or root is None:
            return
        for line in sweep(root) or []:
            self.on_warning(line)

    def _warn_oversubscribed(self, pending: Sequence[_CaseRun]) -> None:
        if not self.cap_cpus:
            return
        slots = f"{self.cap_cpus} CPU slot{'s' if self.cap_cpus != 1 else ''}"
        for run in pending:
            if run.cpus > self.cap_cpus:
                self.on_warning(f"{run.case.id} starts {run.cpus} processes on {slots}: oversubscribed "
                                f"(expect slow collectives and time limits reached)")


def _finished(state: JobState | None) -> bool:
    return state is not None and state.done


def _with_pools(session: Any, backend: Backend) -> Backend | None:
    """The backend with warm worker pools for poolable kinds, when it offers them (a
    ``pooled(poolable)`` method, e.g. the local backend) and ``--no-reuse`` is not given."""
    pooled = getattr(backend, "pooled", None)
    if pooled is None or not getattr(getattr(session, "options", None), "reuse", True):
        return None

    def poolable(launch: Launch) -> bool:
        return bool(getattr(session.plugins.kind(launch.kind), "poolable", False))

    result: Backend = pooled(poolable)
    return result


def _with_attempts(outcome: LaunchOutcome, attempt: int) -> LaunchOutcome:
    return outcome if outcome.attempts == attempt else replace(outcome, attempts=attempt)
