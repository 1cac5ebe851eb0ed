"""Classifying a finished launch: its completion records, plus what Kubernetes said.

* INFRA: a pod evicted / disrupted (``DisruptionTarget``, reason ``Evicted``, preemption),
  image pull failures, a pod unschedulable for longer than ``pending_timeout``, a pod in
  phase ``Unknown`` (node lost), the Job deleted by someone else, the API server failing.
* TIMEOUT: the runner cancelled for the time limit, or the Job hit
  ``activeDeadlineSeconds`` (``DeadlineExceeded``) before the runner got there.
* ERROR: a non-zero exit (the Job fails through its podFailurePolicy); ``OOMKilled`` is the
  workload's problem and is named in the detail.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from backends.kubernetes import status
from runner.records import Launch, LaunchOutcome, Outcome
from runner.run.backend import outcome_from_records


def classify(launch: Launch, pods: list[Any], *, duration: float, cancel_reason: str | None,
             infra: str | None, failed_reason: str | None, has_pvc: bool) -> LaunchOutcome:
    exit_code, oom = status.exit_code(pods)
    if cancel_reason is None and failed_reason == "DeadlineExceeded":
        cancel_reason = "timeout"   # Kubernetes enforced the same limit a moment earlier
    outcome = outcome_from_records(launch, exit_code=exit_code, duration=duration,
                                   cancel_reason=cancel_reason, infra_reason=infra)
    if outcome.outcome is not Outcome.ERROR:
        return outcome
    detail = outcome.detail
    if oom is not None:
        detail = f"OOMKilled (pod index {oom}); {detail}"
    elif failed_reason and failed_reason not in detail:
        detail = f"{detail}; Job failed: {failed_reason}"
    rd = Path(launch.results_dir)
    if not has_pvc and not (rd / "done").is_dir() and not list(rd.glob("logs/rank*.log")):
        detail += ("; no completion record nor rank log: without the 'pvc' option the pods "
                   "cannot see the results dir")
    return dataclasses.replace(outcome, detail=detail)
