"""Classifying a finished Slurm job: what Slurm said about it, plus its completion records.

The records in the results dir decide COMPLETED vs ERROR (``outcome_from_records``); the
scheduler's state only adds what the workload cannot know: node failure, preemption, a
cancel from outside the runner (INFRA), or Slurm's own time limit (TIMEOUT).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from backends.slurm.script import format_time_limit
from backends.slurm.status import INFRA_STATES, SlurmJobInfo
from runner.records import Launch, LaunchOutcome, Outcome
from runner.run.backend import outcome_from_records

#: why a job is gone when no status source lists it
NOT_FOUND = "not found by squeue, scontrol or sacct"


def classify(launch: Launch, job_id: str, info: SlurmJobInfo | None, *, duration: float,
             cancel_reason: str | None, lost: str | None, time_margin: int,
             unhealthy_nodes: Callable[[str], str | None]) -> LaunchOutcome:
    """The outcome of job ``job_id``; ``unhealthy_nodes(nodes)`` says which of them are down."""
    state = info.state if info else "UNKNOWN"
    exit_code = info.exit_code if info else None
    infra_reason: str | None = None
    slurm_timeout = state == "TIMEOUT" and cancel_reason is None
    if slurm_timeout:
        cancel_reason = "timeout"
    elif state in INFRA_STATES:
        infra_reason = f"Slurm job {job_id} ended {info.describe() if info else state}"
        if info and info.nodes:
            infra_reason += f" on {info.nodes}"
            unhealthy = unhealthy_nodes(info.nodes)
            if unhealthy:
                infra_reason += f": {unhealthy}"
    elif state == "CANCELLED" and cancel_reason is None:
        infra_reason = f"Slurm job {job_id} was cancelled outside the runner (scancel or an administrator)"
    elif state == "UNKNOWN":
        infra_reason = f"Slurm job {job_id} lost: {lost or NOT_FOUND}"

    if infra_reason is None and cancel_reason is None and state not in ("COMPLETED", "TIMEOUT"):
        # A node that dies mid-job often makes the job fail (srun loses a task) before
        # the controller declares the node down; by the time the job has left
        # COMPLETING the controller knows, so ask about the job's nodes once.
        unhealthy = unhealthy_nodes(info.nodes if info else "")
        if unhealthy:
            infra_reason = f"{unhealthy}: Slurm job {job_id} ended {info.describe() if info else state}"

    outcome = outcome_from_records(launch, exit_code=exit_code, duration=duration,
                                   cancel_reason=cancel_reason, infra_reason=infra_reason)
    if slurm_timeout and outcome.outcome is Outcome.TIMEOUT:
        limit = format_time_limit(float(launch.timeout) + time_margin)
        return replace(outcome, detail=f"Slurm time limit ({limit}) reached: job {job_id} ended TIMEOUT")
    if infra_reason and outcome.outcome is Outcome.ERROR:
        # Ranks that lost their peers to a dead node or a cancel fail too; the cause
        # is the infrastructure, and the rank's error is a consequence.
        detail = f"{infra_reason}; {outcome.detail}" if outcome.detail else infra_reason
        return replace(outcome, outcome=Outcome.INFRA, detail=detail)
    return outcome
