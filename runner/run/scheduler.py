"""Runs cases through a backend: concurrency within capacity, time limits, retries, -x, Ctrl-C.

One loop, one thread: start what fits, poll every in-flight job with ONE batched backend
call, collect what finished, start the case's next launch or decide its verdict. The
runner, not the backend, owns time limits (``cancel(handle, "timeout")`` at the deadline,
then polling until the job is gone), so every backend gets the same semantics.
"""
from __future__ import annotations

import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from runner.run.backend import Backend, Handle
from runner.run.cleanup import StopEverything
from runner.errors import UsageError
from runner.records import Case, CaseResult, Launch, LaunchOutcome, Outcome, Verdict
from runner.results import write_json_atomic
from runner.compare.verdict import decide, skipped


@dataclass
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


class Interrupted(Exception):
    pass


class Scheduler:
    def __init__(self, session: Any, backend: Backend, *, jobs: int | None = None, exitfirst: bool = False,
                 on_result: Callable[[CaseResult], None] | None = None,
                 on_progress: Callable[[int, int, int], None] | None = None,
                 on_warning: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.backend = backend
        self.jobs = jobs
        self.exitfirst = exitfirst
        self.on_result = on_result or (lambda r: None)
        self.on_progress = on_progress or (lambda done, running, total: None)
        self._pools = _with_pools(session, backend)
        if self._pools is not None:
            self.backend = self._pools
        cap = backend.capacity()
        self.cap_cpus, self.cap_gpus = cap.cpus, cap.gpus
        self.on_warning = on_warning or (lambda line: print(f"warning: {line}", file=sys.stderr, flush=True))
        self.interrupted = False
        #: the formatted traceback when the loop stopped on an unexpected exception (exit 3)
        self.internal_error: str | None = None
        self._stop_starting = False

    # -- resources ----------------------------------------------------------------------------
    def _fits(self, run: _CaseRun, running: list[_CaseRun]) -> bool:
        if self.jobs is not None and len(running) >= self.jobs:
            return False
        if not running:
            return True  # a case larger than the machine still runs, alone
        used_cpu = sum(r.cpus for r in running)
        used_gpu = sum(r.gpus for r in running)
        if self.cap_cpus is not None and used_cpu + run.cpus > self.cap_cpus:
            return False
        if self.cap_gpus is not None and used_gpu + run.gpus > self.cap_gpus:
            return False
        return True

    # -- main loop ----------------------------------------------------------------------------
    def run(self, cases: Sequence[Case]) -> list[CaseResult]:
        results: dict[str, CaseResult] = {}
        pending: list[_CaseRun] = []
        backend_id = self.backend.id
        for case in cases:
            if case.skip:
                results[case.id] = skipped(case, case.skip, backend_id)
                self.on_result(results[case.id])
                continue
            launches = self.session.plan(case)
            gpus = launches[0].gpus_per_node * launches[0].nodes if launches else 0
            if self.cap_gpus is not None and gpus > self.cap_gpus:
                results[case.id] = skipped(case, f"needs {gpus} GPUs, {self.cap_gpus} available", backend_id)
                self.on_result(results[case.id])
                continue
            if not launches:
                results[case.id] = skipped(case, "the case kind planned no launch", backend_id)
                self.on_result(results[case.id])
                continue
            pending.append(_CaseRun(case, launches, cpus=launches[0].world_size, gpus=gpus))
        total = len(cases)
        running: list[_CaseRun] = []
        self._sweep_leftovers()
        self._warn_oversubscribed(pending)
        old_handler = signal.getsignal(signal.SIGINT)
        old_term = signal.getsignal(signal.SIGTERM)

        def on_sigint(signum, frame):  # noqa: ARG001
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True

        try:
            signal.signal(signal.SIGINT, on_sigint)
            signal.signal(signal.SIGTERM, on_sigint)
        except ValueError:  # not in the main thread
            pass
        guard = StopEverything(self.backend, running, pending, results,
                               on_stopped=lambda: setattr(self, "_stop_starting", True))
        try:
            with guard:
                self._loop(pending, running, results, total, backend_id)
        finally:
            if self._pools is not None:
                self._pools.close()   # stop the warm pools of this run
            try:
                signal.signal(signal.SIGINT, old_handler)
                signal.signal(signal.SIGTERM, old_term)
            except ValueError:
                pass
        if guard.interrupted:
            self.interrupted = True
        self.internal_error = guard.internal_error
        self.on_progress(len(results), 0, total)
        return [results[c.id] for c in cases if c.id in results]

    def _loop(self, pending: list[_CaseRun], running: list[_CaseRun], results: dict[str, CaseResult],
              total: int, backend_id: str) -> None:
        while pending or running:
            if self.interrupted and not self._stop_starting:
                self._stop_starting = True
                for r in running:
                    if r.handle is not None:
                        self.backend.cancel(r.handle, "interrupt")
            if not self._stop_starting:
                for run in list(pending):
                    if not self._fits(run, running):
                        if self.jobs is not None and len(running) >= self.jobs:
                            break
                        continue
                    pending.remove(run)
                    run.started = time.monotonic()
                    running.append(run)   # before submitting: a failure half-way is still cleaned up
                    problem = self._try_submit(run)
                    if problem is not None:
                        running.remove(run)
                        results[run.case.id] = CaseResult(run.case, problem[0], problem[1], 0.0, backend_id)
                        self.on_result(results[run.case.id])
            elif pending:
                for run in pending:
                    results[run.case.id] = CaseResult(run.case, Verdict.INTERRUPTED,
                                                      "not run (session stopped)" if not self.interrupted
                                                      else "not run (interrupted)", 0.0, backend_id)
                pending.clear()
            self.on_progress(len(results), len(running), total)
            if not running:
                continue
            time.sleep(self.backend.poll_interval)
            states = self.backend.poll([r.handle for r in running if r.handle is not None])
            now = time.monotonic()
            for run in list(running):
                h = run.handle
                assert h is not None
                state = states.get(h.id)
                if state is None or not state.done:
                    if h.cancel_reason is None and now - run.launch_started > run.launches[run.index].timeout:
                        self.backend.cancel(h, "timeout")
                    continue
                outcome = self.backend.collect(h)
                self.session.plugins.hook.runner_launch_finished(outcome=outcome)
                outcome = _with_attempts(outcome, run.attempt)
                retry = self.session.plugins.hook.runner_should_retry(case=run.case, outcome=outcome,
                                                                      attempt=run.attempt)
                if retry and not self.interrupted:
                    run.attempt += 1
                    self._archive_attempt(run)
                    problem = self._try_submit(run)
                    if problem is None:
                        continue
                    outcome = LaunchOutcome(outcome.launch, Outcome.INFRA, problem[1], attempts=run.attempt)
                run.outcomes.append(outcome)
                if outcome.outcome is Outcome.COMPLETED and run.index + 1 < len(run.launches):
                    run.index += 1
                    run.attempt = 1
                    problem = self._try_submit(run)
                    if problem is None:
                        continue
                    run.outcomes.append(LaunchOutcome(run.launches[run.index], Outcome.INFRA if problem[0] is
                                                      Verdict.INFRA else Outcome.ERROR, problem[1]))
                running.remove(run)
                result = decide(self.session, run.case, run.outcomes, backend=backend_id,
                                duration=time.monotonic() - run.started)
                results[run.case.id] = result
                self._write_case_result(run, result)
                self.on_result(result)
                self.session.plugins.hook.runner_case_result(result=result)
                if self.exitfirst and result.verdict.is_failure and not self._stop_starting:
                    self._stop_starting = True
                    for other in running:
                        if other.handle is not None:
                            self.backend.cancel(other.handle, "interrupt")

    # -- ownership ------------------------------------------------------------------------------
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
        for run in pending:
            if run.cpus > self.cap_cpus:
                self.on_warning(f"{run.case.id} starts {run.cpus} processes on {self.cap_cpus} CPU slot"
                                f"{'s' if self.cap_cpus != 1 else ''}: oversubscribed (expect slow collectives "
                                f"and time limits reached)")

    def _try_submit(self, run: _CaseRun) -> tuple[Verdict, str] | None:
        """Submit the case's current launch; (verdict, reason) when it could not start."""
        try:
            self._submit(run)
        except UsageError as exc:
            return Verdict.INFRA, str(exc)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            return Verdict.ERROR, f"cannot prepare the launch: {exc.strerror or exc}{where}"
        return None

    def _submit(self, run: _CaseRun) -> None:
        launch = run.launches[run.index]
        rdir = Path(launch.results_dir)
        if run.attempt == 1 and rdir.exists() and any(rdir.iterdir()):
            # an earlier session used the same results dir: keep its files, start clean
            k = 1
            while rdir.with_name(f"{rdir.name}.earlier{k}").exists():
                k += 1
            rdir.rename(rdir.with_name(f"{rdir.name}.earlier{k}"))
        rdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(rdir / "launch.json", launch.to_json())
        run.handle = self.backend.submit(launch)
        run.launch_started = time.monotonic()
        self.session.plugins.hook.runner_launch_started(launch=launch, attempt=run.attempt)

    def _archive_attempt(self, run: _CaseRun) -> None:
        """Keep the failed attempt's results next to the new one (nothing is lost)."""
        launch = run.launches[run.index]
        rdir = Path(launch.results_dir)
        if rdir.exists():
            target = rdir.with_name(f"{rdir.name}.attempt{run.attempt - 1}")
            if target.exists():
                shutil.rmtree(target)
            rdir.rename(target)

    def _write_case_result(self, run: _CaseRun, result: CaseResult) -> None:
        try:
            write_json_atomic(Path(run.launches[0].results_dir).parent / "result.json", result.to_json())
        except OSError:
            pass


def _with_pools(session: Any, backend: Backend) -> Backend | None:
    """The backend with warm worker pools for poolable kinds, when it offers them (a
    ``pooled(poolable)`` method, e.g. the local backend) and ``--no-reuse`` is not given."""
    pooled = getattr(backend, "pooled", None)
    if pooled is None or not getattr(getattr(session, "options", None), "reuse", True):
        return None

    def poolable(launch: Launch) -> bool:
        return bool(getattr(session.plugins.kind(launch.kind), "poolable", False))

    return pooled(poolable)


def _with_attempts(outcome: LaunchOutcome, attempt: int) -> LaunchOutcome:
    if outcome.attempts == attempt:
        return outcome
    from dataclasses import replace

    return replace(outcome, attempts=attempt)
