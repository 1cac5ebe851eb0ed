"""Running the gpt worker outside any spec: one launch of given args on a backend, and its
results once every rank completed (what the gpt tests and benchmarks use)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from runner.records import Launch, LaunchOutcome, Outcome
from runner.results import ResultsDir
from runner.run.backend import Backend, run_launch
from workloads.gpt.kind import ENTRY, GPTKind


def direct_launch(results_dir: Path, args: Mapping[str, Any], *, nproc: int, timeout: float,
                  env: Mapping[str, str] | None = None, case_id: str = "direct::gpt") -> Launch:
    """A one-node launch of the gpt worker with ``args`` on ``nproc`` CPU ranks."""
    return Launch(case_id=case_id, name=results_dir.name, kind=GPTKind.id, entry=ENTRY, args=dict(args), nodes=1,
                  nproc_per_node=nproc, gpus_per_node=0, env=dict(env or {}), timeout=timeout,
                  results_dir=str(results_dir), job_name=case_id.replace("::", "-").replace("_", "-"))


def run_direct(backend: Backend, results_dir: Path, args: Mapping[str, Any], *, nproc: int, timeout: float,
               env: Mapping[str, str] | None = None, case_id: str = "direct::gpt") -> LaunchOutcome:
    """Run ``direct_launch(...)`` to its end through ``backend``."""
    return run_launch(backend, direct_launch(results_dir, args, nproc=nproc, timeout=timeout, env=env,
                                             case_id=case_id))


def completed_results(outcome: LaunchOutcome, results_dir: Path) -> ResultsDir:
    """The launch's results; ``RuntimeError`` with the outcome's detail and log tail unless
    every rank completed."""
    if outcome.outcome is not Outcome.COMPLETED:
        raise RuntimeError(f"{results_dir.name}: workers failed: {outcome.detail}\n{outcome.log_tail}")
    return ResultsDir(results_dir)
