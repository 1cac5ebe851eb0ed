"""Which rank a failed launch blames: torchrun's report in the launcher log against the ranks'
completion records (``outcome_from_records``)."""
from __future__ import annotations

import json
from pathlib import Path

from runner.records import Launch, Outcome
from runner.run.backend import outcome_from_records


def _report(failures: list[tuple[int, int]], root: tuple[int, int]) -> str:
    def block(i: int, rank: int, code: int) -> str:
        trace = f"Signal {-code} (SIGTERM) received by PID 4{rank}" if code < 0 else "To enable traceback see: ..."
        return (f"[{i}]:\n  time      : 2026-12-01_13:20:00\n  host      : h\n  rank      : {rank} (local_rank: {rank})\n"
                f"  exitcode  : {code} (pid: 4{rank})\n  error_file: <N/A>\n  traceback : {trace}\n")
    lines = ["torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
             "=" * 60, "runner.worker FAILED", "-" * 60, "Failures:"]
    lines += [block(i + 1, r, c) for i, (r, c) in enumerate(failures)] or ["  <NO_OTHER_FAILURES>"]
    lines += ["-" * 60, "Root Cause (first observed failure):", block(0, *root), "=" * 60]
    return "\n".join(lines) + "\n"


def _launch(tmp_path: Path, records: dict[int, dict], log: str) -> Launch:
    rd = tmp_path / "case"
    (rd / "done").mkdir(parents=True)
    (rd / "logs").mkdir()
    for rank, rec in records.items():
        (rd / "done" / f"rank{rank}.json").write_text(json.dumps({"rank": rank, **rec}))
    (rd / "logs" / "launcher.log").write_text(log)
    return Launch(case_id="s.yaml::c", name="main", kind="script", entry="x:y", args={}, nodes=1,
                  nproc_per_node=2, gpus_per_node=0, env={}, timeout=60, results_dir=str(rd), job_name="c-main")


RAISED = {"status": "error", "exception": "ValueError: boom on purpose", "finished": 1.0}


def test_a_rank_the_agent_stopped_is_not_blamed_for_the_rank_that_raised(tmp_path):
    # rank 1 raised (its record says so); torchrun then stopped rank 0 with SIGTERM before rank 0
    # could write anything (a loaded machine: rank 0 was still in its barrier)
    launch = _launch(tmp_path, {1: RAISED}, _report([(0, -15)], root=(1, 1)))
    out = outcome_from_records(launch, exit_code=1, duration=1.0)
    assert out.outcome is Outcome.ERROR
    assert out.failed_rank == 1 and out.detail == "rank 1: ValueError: boom on purpose"


def test_the_agent_stopped_rank_as_root_cause_still_loses_to_a_recorded_error(tmp_path):
    launch = _launch(tmp_path, {1: RAISED}, _report([(1, 1)], root=(0, -15)))
    out = outcome_from_records(launch, exit_code=1, duration=1.0)
    assert out.failed_rank == 1 and "boom on purpose" in out.detail


def test_a_rank_that_died_without_a_record_is_still_the_cause(tmp_path):
    # rank 0 os._exit(7)ed; rank 1 then failed in a collective and recorded that error
    peer_lost = {"status": "error", "exception": "RuntimeError: Connection closed by peer", "finished": 2.0}
    launch = _launch(tmp_path, {1: peer_lost}, _report([(1, 1)], root=(0, 7)))
    out = outcome_from_records(launch, exit_code=1, duration=1.0)
    assert out.failed_rank == 0 and out.detail == "rank 0 exited with code 7 without a completion record"


def test_a_sigterm_with_no_recorded_error_anywhere_is_the_cause(tmp_path):
    # nothing recorded an error: the SIGTERM is all there is to report
    launch = _launch(tmp_path, {}, _report([(1, -15)], root=(0, -15)))
    out = outcome_from_records(launch, exit_code=1, duration=1.0)
    assert out.failed_rank == 0 and "SIGTERM" in out.detail and "without a completion record" in out.detail
