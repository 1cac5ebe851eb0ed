"""The scheduler: concurrency within capacity, never oversubscribing GPUs, -x, retries of INFRA."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from runner.run.backend import Backend, Capacity, Handle, JobState, outcome_from_records
from runner.config import ProjectConfig
from runner.hookspecs import hookimpl
from runner.records import CheckResult, Verdict
from runner.plugins import PluginManager
from runner.run.scheduler import Scheduler
from runner.run.session import Options, Session

WORKER = textwrap.dedent('''
    import json, os, sys, time
    rd, rank, world, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    time.sleep(float(os.environ.get("SLEEP", "0.5")))
    os.makedirs(os.path.join(rd, "done"), exist_ok=True)
    status = "error" if mode == "fail" else "ok"
    rec = {"rank": rank, "status": status, "exception": "RuntimeError: planted", "finished": time.time()}
    json.dump(rec, open(os.path.join(rd, "done", f"rank{rank}.json"), "w"))
''')


class ProcessBackend(Backend):
    """A real backend for scheduler tests: each rank is a plain subprocess (no torchrun), with a
    GPU capacity to hand out, and an 'infra' mode that fails the first attempt like a lost node."""

    id = "procs"
    poll_interval = 0.05
    options = {"cpus": "CPU slots (default 8)", "gpus": "GPUs to hand out (default 2)"}
    log: list[tuple[str, float, float]] = []

    def __init__(self, options=None):
        super().__init__(options)
        self.gpus_in_use = 0
        self.max_gpus_in_use = 0
        self.polls: list[int] = []
        self.infra_failed: set[str] = set()

    def capacity(self):
        return Capacity(cpus=int(self.opts.get("cpus", 8)), gpus=int(self.opts.get("gpus", 2)))

    def render(self, launch):
        raise NotImplementedError

    def submit(self, launch):
        mode = (launch.args.get("argv") or ["ok"])[0]
        env = dict(os.environ, **launch.env)
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, launch.results_dir, str(r), str(launch.world_size),
                                   mode], env=env) for r in range(launch.world_size)]
        g = launch.gpus_per_node * launch.nodes
        self.gpus_in_use += g
        self.max_gpus_in_use = max(self.max_gpus_in_use, self.gpus_in_use)
        return Handle(str(procs[0].pid), launch, time.monotonic(), {"procs": procs, "gpus": g, "mode": mode})

    def poll(self, handles):
        self.polls.append(len(handles))
        return {h.id: JobState(all(p.poll() is not None for p in h.data["procs"])) for h in handles}

    def cancel(self, handle, reason):
        handle.cancel_reason = reason
        for p in handle.data["procs"]:
            p.kill()

    def collect(self, handle):
        self.gpus_in_use -= handle.data["gpus"]
        ProcessBackend.log.append((handle.launch.case_id, handle.submitted_at, time.monotonic()))
        infra = None
        if handle.data["mode"] == "infra" and handle.launch.case_id not in self.infra_failed:
            self.infra_failed.add(handle.launch.case_id)
            import shutil
            shutil.rmtree(Path(handle.launch.results_dir) / "done", ignore_errors=True)
            infra = "node n2 failed (NODE_FAIL)"
        return outcome_from_records(handle.launch, exit_code=0, duration=0.1, infra_reason=infra,
                                    cancel_reason=handle.cancel_reason)


def make_session(tmp_path: Path, spec: str, **opts) -> tuple[Session, list]:
    (tmp_path / "specs").mkdir(exist_ok=True)
    (tmp_path / "specs" / "x.py").write_text("")
    (tmp_path / "specs" / "s.yaml").write_text(textwrap.dedent(spec))
    pm = PluginManager()
    pm.load()
    options = Options(paths=[str(tmp_path / "specs")], results_dir=str(tmp_path / "results"),
                      platform=opts.pop("platform", "cpu"), **opts)
    session = Session(options, pm, ProjectConfig(tmp_path))
    return session, session.collect()


def test_gpus_never_oversubscribed_and_cases_overlap(tmp_path):
    session, cases = make_session(tmp_path, """
        defaults: {kind: script, resources: {nproc_per_node: 1, gpus: 1}, env: {SLEEP: "0.6"}}
        cases:
          - name: c{i}
            matrix: {i: [1, 2, 3, 4, 5, 6]}
            args: {script: x.py, golden: false}
    """, platform="dgx_h100")
    backend = ProcessBackend({"gpus": "2", "cpus": "16"})
    ProcessBackend.log.clear()
    results = Scheduler(session, backend).run(cases)
    assert [r.verdict for r in results] == [Verdict.PASSED] * 6
    assert backend.max_gpus_in_use == 2               # never more than the machine has
    spans = [(start, end) for _, start, end in ProcessBackend.log]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])   # overlapped
    assert max(backend.polls) == 2                    # one batched poll for all in flight


def test_case_needing_more_gpus_than_exist_is_skipped(tmp_path):
    session, cases = make_session(tmp_path, """
        cases:
          - {name: big, kind: script, resources: {nproc_per_node: 8, gpus: 8}, args: {script: x.py, golden: false}}
    """, platform="dgx_h100")
    results = Scheduler(session, ProcessBackend({"gpus": "2"})).run(cases)
    assert results[0].verdict is Verdict.SKIPPED and "needs 8 GPUs, 2 available" in results[0].detail


def test_exitfirst_stops_after_first_failure(tmp_path):
    session, cases = make_session(tmp_path, """
        defaults: {kind: script, resources: {nproc_per_node: 1}}
        cases:
          - {name: a_fail, args: {script: x.py, argv: [fail], golden: false}}
          - {name: b, args: {script: x.py, golden: false}}
          - {name: c, args: {script: x.py, golden: false}}
    """)
    results = Scheduler(session, ProcessBackend({"cpus": "1"}), exitfirst=True).run(cases)
    verdicts = {r.case.name: r.verdict for r in results}
    assert verdicts["a_fail"] is Verdict.ERROR
    assert verdicts["b"] is Verdict.INTERRUPTED and verdicts["c"] is Verdict.INTERRUPTED


@pytest.mark.parametrize("retries,expected", [(0, Verdict.INFRA), (1, Verdict.PASSED)])
def test_infra_is_retried_per_case_retries(tmp_path, retries, expected):
    session, cases = make_session(tmp_path, f"""
        cases:
          - {{name: flaky, kind: script, retries: {retries}, args: {{script: x.py, argv: [infra], golden: false}}}}
    """)
    results = Scheduler(session, ProcessBackend()).run(cases)
    r = results[0]
    assert r.verdict is expected, r.detail
    if retries:
        assert r.launches[0].attempts == 2
        assert (Path(r.launches[0].launch.results_dir).parent / "main.attempt1").is_dir()   # nothing lost
    else:
        assert "NODE_FAIL" in r.detail


def test_any_exception_in_the_loop_cancels_every_running_handle(tmp_path):
    """A result callback that raises while other cases still run: every handle is cancelled and
    waited for, every case gets a result, and the traceback is kept for the command line."""
    session, cases = make_session(tmp_path, """
        defaults: {kind: script, resources: {nproc_per_node: 1}}
        cases:
          - {name: a_quick, args: {script: x.py, golden: false}, env: {SLEEP: "0.1"}}
          - {name: b_slow, args: {script: x.py, golden: false}, env: {SLEEP: "300"}}
          - {name: c_slow, args: {script: x.py, golden: false}, env: {SLEEP: "300"}}
          - {name: d_waiting, args: {script: x.py, golden: false}}
    """)
    backend = ProcessBackend({"cpus": "3"})
    submitted = []
    real_submit = backend.submit

    def submit(launch):
        h = real_submit(launch)
        submitted.append(h)
        return h

    backend.submit = submit

    def explode(result):
        if result.case.name == "a_quick":
            raise OSError("planted failure in a result callback")

    sched = Scheduler(session, backend, on_result=explode)
    results = sched.run(cases)
    assert sched.internal_error and "OSError: planted failure" in sched.internal_error
    verdicts = {r.case.name: r.verdict for r in results}
    assert verdicts == {"a_quick": Verdict.PASSED, "b_slow": Verdict.INTERRUPTED,
                        "c_slow": Verdict.INTERRUPTED, "d_waiting": Verdict.INTERRUPTED}
    # d_waiting may have started in a_quick's slot while a_quick was compared; it is stopped too
    assert {h.launch.case_id.rsplit("::")[-1] for h in submitted} - {"d_waiting"} == {"a_quick", "b_slow", "c_slow"}
    for h in submitted:   # nothing left running
        assert all(p.poll() is not None for p in h.data["procs"])
    assert {h.cancel_reason for h in submitted if "quick" not in h.launch.case_id} == {"interrupt"}


def test_session_lock_names_the_holder_and_is_taken_over_after_death(tmp_path):
    session, _ = make_session(tmp_path, """
        cases:
          - {name: a, kind: script, args: {script: x.py, golden: false}}
    """)
    session.ensure_results_root()
    holder = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from pathlib import Path
        from runner.run.lock import ResultsLock
        print(ResultsLock().acquire(Path({str(tmp_path / 'results')!r})))
    """)], capture_output=True, text=True)
    assert holder.stdout.strip() == str(__import__("os").getpid()), holder.stderr
    session.release()
    # a holder that dies (SIGKILL) leaves its lock to the next one
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from runner.run.lock import ResultsLock
        lock = ResultsLock(); assert lock.acquire(Path({str(tmp_path / 'results')!r})) is None
        print("held", flush=True); time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    from runner.errors import UsageError

    with pytest.raises(UsageError, match=f"in use by another runner \\(PID {proc.pid}\\)"):
        session.ensure_results_root()
    proc.kill()
    proc.wait()
    assert session.ensure_results_root() == (tmp_path / "results").resolve()
    session.release()


def _all_stopped(handles) -> bool:
    return all(p.poll() is not None for h in handles for p in h.data["procs"])


def _press_twice() -> None:
    """Ctrl-C, Ctrl-C: two real SIGINTs to this process (the scheduler's handler takes them)."""
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)   # the handler runs here at the latest


def test_second_ctrl_c_while_a_launch_is_being_submitted_still_stops_that_launch(tmp_path):
    """The second Ctrl-C lands in a submit after the backend started the launch's processes
    but before the scheduler holds its handle: that launch is stopped too, not left running."""
    session, cases = make_session(tmp_path, """
        defaults: {kind: script, resources: {nproc_per_node: 1}, env: {SLEEP: "300"}}
        cases:
          - {name: a_running, args: {script: x.py, golden: false}}
          - {name: b_submitting, args: {script: x.py, golden: false}}
    """)
    backend = ProcessBackend({"cpus": "2"})
    started = []
    real_submit = backend.submit

    def submit(launch):
        handle = real_submit(launch)
        started.append(handle)
        if "b_submitting" in launch.case_id:
            _press_twice()
        return handle

    backend.submit = submit
    sched = Scheduler(session, backend)
    results = sched.run(cases)
    assert len(started) == 2
    assert _all_stopped(started), "a launch whose submit was interrupted is still running"
    assert {h.cancel_reason for h in started} == {"interrupt"}
    assert [(r.case.name, r.verdict) for r in results] == [("a_running", Verdict.INTERRUPTED),
                                                          ("b_submitting", Verdict.INTERRUPTED)]
    assert sched.interrupted and sched.internal_error is None


def test_ctrl_c_while_everything_is_being_stopped_does_not_escape_and_every_case_has_a_result(tmp_path):
    """Ctrl-C twice while the scheduler stops everything (here: after an internal error) neither
    raises out of Scheduler.run nor leaves a launch running."""
    session, cases = make_session(tmp_path, """
        defaults: {kind: script, resources: {nproc_per_node: 1}}
        cases:
          - {name: a_quick, args: {script: x.py, golden: false}, env: {SLEEP: "0.1"}}
          - {name: b_slow, args: {script: x.py, golden: false}, env: {SLEEP: "300"}}
    """)
    backend = ProcessBackend({"cpus": "2"})
    started = []
    real_submit, real_cancel = backend.submit, backend.cancel

    def submit(launch):
        started.append(real_submit(launch))
        return started[-1]

    def cancel(handle, reason):
        _press_twice()
        real_cancel(handle, reason)

    backend.submit, backend.cancel = submit, cancel

    def explode(result):
        if result.case.name == "a_quick":
            raise OSError("planted failure in a result callback")

    sched = Scheduler(session, backend, on_result=explode)
    try:
        results = sched.run(cases)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C during the stop raised out of Scheduler.run (no verdict table)")
    assert sched.internal_error and "planted failure" in sched.internal_error
    assert {r.case.name: r.verdict for r in results} == {"a_quick": Verdict.PASSED, "b_slow": Verdict.INTERRUPTED}
    assert _all_stopped(started)


class _HoldComparison:
    """A plugin check that holds case ``held``'s comparison until ``released`` is set (by the
    next case's submit) or a generous deadline passes: only a scheduler that dispatches while
    it compares can pass it."""

    def __init__(self, held: str, released) -> None:
        self.held, self.released = held, released

    @hookimpl
    def runner_case_checks(self, case, outcomes):
        if case.name != self.held:
            return []
        ok = self.released.wait(120)
        return [CheckResult("next case dispatched during this comparison", ok,
                            "" if ok else "the scheduler waited on this comparison before dispatching")]


def test_the_next_launch_starts_while_a_finished_case_is_compared(tmp_path):
    session, cases = make_session(tmp_path, """
        defaults: {kind: script, resources: {nproc_per_node: 1}, env: {SLEEP: "0.2"}}
        cases:
          - {name: a_compared_slowly, args: {script: x.py, golden: false}}
          - {name: b_next, args: {script: x.py, golden: false}}
          - {name: c_last, args: {script: x.py, golden: false}}
    """)
    b_submitted = threading.Event()
    session.plugins.pm.register(_HoldComparison("a_compared_slowly", b_submitted), name="hold")
    backend = ProcessBackend({"cpus": "2"})   # a's comparison holds one slot, b fits in the other
    real_submit = backend.submit

    def submit(launch):
        if "b_next" in launch.case_id:
            b_submitted.set()
        return real_submit(launch)

    backend.submit = submit
    reported = []
    # one case at a time: b can only start once a has finished, i.e. during a's comparison
    results = Scheduler(session, backend, jobs=1, on_result=reported.append).run(cases)
    assert [(r.case.name, r.verdict) for r in results] == [
        ("a_compared_slowly", Verdict.PASSED), ("b_next", Verdict.PASSED), ("c_last", Verdict.PASSED)], \
        [r.detail for r in results]
    assert [r.case.name for r in reported] == ["a_compared_slowly", "b_next", "c_last"]   # order kept


def test_exitfirst_stops_the_launch_dispatched_while_the_failure_was_compared(tmp_path):
    session, cases = make_session(tmp_path, """
        defaults: {kind: script, resources: {nproc_per_node: 1}}
        cases:
          - {name: a_fail, args: {script: x.py, argv: [fail], golden: false}, env: {SLEEP: "0.1"}}
          - {name: b_started_meanwhile, args: {script: x.py, golden: false}, env: {SLEEP: "300"}}
          - {name: c_never, args: {script: x.py, golden: false}}
    """)
    backend = ProcessBackend({"cpus": "2"})
    started = []
    real_submit = backend.submit

    def submit(launch):
        started.append(real_submit(launch))
        return started[-1]

    backend.submit = submit
    sched = Scheduler(session, backend, jobs=1, exitfirst=True)
    results = {r.case.name: r for r in sched.run(cases)}
    assert results["a_fail"].verdict is Verdict.ERROR
    assert results["b_started_meanwhile"].verdict is Verdict.INTERRUPTED
    assert results["c_never"].verdict is Verdict.INTERRUPTED and "not run" in results["c_never"].detail
    assert _all_stopped(started) and not sched.interrupted


def test_comparisons_come_back_in_queue_order_and_a_jobs_exception_is_raised_where_it_is_taken():
    from runner.run.comparisons import Comparisons

    comparisons: Comparisons[str, int] = Comparisons()
    gate = threading.Event()
    comparisons.submit("slow", lambda: gate.wait(60) and 1)
    comparisons.submit("quick", lambda: 2)

    def planted() -> int:
        raise ValueError("planted comparison bug")

    comparisons.submit("broken", planted)
    assert list(comparisons.take_ready()) == [] and len(comparisons) == 3   # nothing overtakes 'slow'
    gate.set()
    taken: list[tuple[str, int]] = []
    with pytest.raises(ValueError, match="planted comparison bug"):
        while len(comparisons):
            comparisons.wait(0.5)
            for item in comparisons.take_ready():
                taken.append(item)
    assert taken == [("slow", 1), ("quick", 2)] and len(comparisons) == 0
    comparisons.close()


def test_a_comparison_holds_a_cpu_slot_so_a_case_that_needs_the_whole_machine_waits_for_it(tmp_path):
    """On a machine the launches fill, the comparison is not overlapped with the next case
    (both would only run slower): b starts after a's verdict."""
    session, cases = make_session(tmp_path, """
        defaults: {kind: script, resources: {nproc_per_node: 2}, env: {SLEEP: "0.2"}}
        cases:
          - {name: a_compared, args: {script: x.py, golden: false}}
          - {name: b_whole_machine, args: {script: x.py, golden: false}}
    """)
    events: list[str] = []

    class Record:
        @hookimpl
        def runner_case_checks(self, case, outcomes):
            time.sleep(0.3)
            events.append(f"compared {case.name}")
            return []

    session.plugins.pm.register(Record(), name="record")
    backend = ProcessBackend({"cpus": "2"})
    real_submit = backend.submit

    def submit(launch):
        events.append(f"submit {launch.case_id.rsplit('::')[-1]}")
        return real_submit(launch)

    backend.submit = submit
    results = Scheduler(session, backend).run(cases)
    assert [r.verdict for r in results] == [Verdict.PASSED, Verdict.PASSED]
    assert events == ["submit a_compared", "compared a_compared", "submit b_whole_machine", "compared b_whole_machine"]
