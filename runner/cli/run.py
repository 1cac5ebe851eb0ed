"""``runner run`` and ``runner golden update``: collect, check goldens, run through the
scheduler, report; ``--dry-run`` renders every launch and starts nothing."""
from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, Sequence

from runner.cli.codes import EXIT_INTERNAL, EXIT_NO_TESTS, EXIT_OK, exit_code
from runner.cli.session_setup import make_backend, make_session
from runner.records import Case, CaseResult

if TYPE_CHECKING:
    from runner.report.base import ReporterSet
    from runner.run.scheduler import Scheduler
    from runner.run.session import Session


def _plural(n: int) -> str:
    return f"{n} case{'s' if n != 1 else ''}"


def cmd_run(ns: argparse.Namespace, *, golden_update: bool = False) -> int:
    from runner.report.base import ReporterSet

    session = make_session(ns)
    if golden_update:
        session.options.allow_missing_golden = True
    cases = session.collect()
    reporter = ReporterSet.from_registry(session.plugins.reporters, ns, session)
    if not cases:
        reporter.line("no cases collected")
        return EXIT_NO_TESTS
    session.check_goldens(cases)
    backend = make_backend(session)
    if session.options.dry_run:
        return _dry_run(session, backend, cases)
    backend.check()
    session.ensure_results_root()
    reporter.session_start(session, cases)
    reporter.line(f"runner: {_plural(len(cases))} on backend '{backend.id}', "
                  f"platform {session.platform}, results in {session.results_root}")
    started = time.monotonic()
    scheduler, results = _schedule(session, backend, cases, reporter)
    elapsed = time.monotonic() - started
    if scheduler.internal_error:   # everything was stopped and the table printed; now the bug
        _finish(session, reporter, results, backend.id, elapsed, EXIT_INTERNAL, scheduler.interrupted)
        print(scheduler.internal_error, file=sys.stderr, end="")
        print("error: internal error (the traceback above is a bug in the runner or a plugin); "
              "every launch was stopped", file=sys.stderr)
        return EXIT_INTERNAL
    code = _exit_code(session, ns, results, scheduler.interrupted, reporter, golden_update=golden_update)
    _finish(session, reporter, results, backend.id, elapsed, code, scheduler.interrupted)
    session.plugins.hook.runner_session_finish(session=session, results=results, exit_code=code)
    return code


def cmd_golden(ns: argparse.Namespace) -> int:
    """``runner golden update``: a run that rewrites the goldens of this platform."""
    from runner.errors import UsageError

    if ns.golden_command != "update":
        raise UsageError("runner golden: expected 'update'")
    return cmd_run(ns, golden_update=True)


def _dry_run(session: "Session", backend: Any, cases: Sequence[Case]) -> int:
    chunks: list[str] = []   # one write at the end: 10k cases print in one go
    for case in cases:
        for launch in session.plan(case):
            rendered = backend.render(launch)
            chunks.append(f"# {case.id} [{launch.name}] on {backend.id}\n{rendered.text}\n\n")
    sys.stdout.write("".join(chunks))
    print(f"# {_plural(len(cases))}; nothing was started (--dry-run)")
    return EXIT_OK


def _schedule(session: "Session", backend: Any, cases: Sequence[Case],
              reporter: "ReporterSet") -> "tuple[Scheduler, list[CaseResult]]":
    from runner.run.scheduler import Scheduler

    scheduler = Scheduler(session, backend, jobs=session.options.jobs, exitfirst=session.options.exitfirst,
                          on_result=reporter.case_result, on_progress=reporter.progress)
    try:
        return scheduler, reporter.annotated(scheduler.run(cases))
    except BaseException:
        reporter.close()
        raise
    finally:
        backend.close()
        session.release()


def _exit_code(session: "Session", ns: argparse.Namespace, results: list[CaseResult], interrupted: bool,
               reporter: "ReporterSet", *, golden_update: bool) -> int:
    """Under ``golden update``, the goldens are rewritten first, and a case that failed only
    against the golden it just rewrote is done."""
    from runner.records import Verdict

    rewritten: set[str] = set()
    if golden_update and not interrupted:
        from runner.compare.golden_update import update_goldens

        rewritten = update_goldens(session, results, only_failing=ns.only_failing, out=reporter)
    forgiven = {r.case.id for r in results if r.case.id in rewritten and r.verdict is Verdict.FAILED}
    return exit_code(results, interrupted=interrupted, forgiven=forgiven)


def _finish(session: "Session", reporter: "ReporterSet", results: list[CaseResult], backend_id: str,
            elapsed: float, code: int, interrupted: bool) -> None:
    from runner.report.base import SessionSummary

    reporter.session_finish(session, results, SessionSummary(
        platform=session.platform, backend=backend_id, results_dir=str(session.results_root),
        duration=elapsed, exit_code=code, interrupted=interrupted))
