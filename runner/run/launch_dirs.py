"""A launch's results folder on the scheduler's side: made fresh before a submit (an earlier
session's files kept beside it), a failed attempt kept beside the retry, the case's
``result.json`` written when its verdict is known."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.errors import UsageError
from runner.records import CaseResult, Launch, Verdict
from runner.results import write_json_atomic


@dataclass(frozen=True)
class LaunchProblem:
    """Why a launch could not be started: INFRA (the backend refused it) or ERROR (its folder)."""
    verdict: Verdict
    reason: str

    @classmethod
    def from_exception(cls, exc: UsageError | OSError) -> "LaunchProblem":
        if isinstance(exc, UsageError):
            return cls(Verdict.INFRA, str(exc))
        where = f" ({exc.filename})" if exc.filename else ""
        return cls(Verdict.ERROR, f"cannot prepare the launch: {exc.strerror or exc}{where}")


def prepare_results_dir(launch: Launch, *, first_attempt: bool) -> None:
    """An empty results folder with ``launch.json``; on a first attempt, files an earlier
    session left there move to ``<name>.earlier<k>``."""
    rdir = Path(launch.results_dir)
    if first_attempt and rdir.exists() and any(rdir.iterdir()):
        k = 1
        while rdir.with_name(f"{rdir.name}.earlier{k}").exists():
            k += 1
        rdir.rename(rdir.with_name(f"{rdir.name}.earlier{k}"))
    rdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(rdir / "launch.json", launch.to_json())


def archive_attempt(launch: Launch, attempt: int) -> None:
    """Keep a failed attempt's results as ``<name>.attempt<n>`` next to the retry (nothing is lost)."""
    rdir = Path(launch.results_dir)
    if rdir.exists():
        target = rdir.with_name(f"{rdir.name}.attempt{attempt}")
        if target.exists():
            import shutil

            shutil.rmtree(target)
        rdir.rename(target)


def write_case_result(first_launch: Launch, result: CaseResult) -> None:
    """``<case folder>/result.json``; a folder that cannot be written loses only this file."""
    try:
        write_json_atomic(Path(first_launch.results_dir).parent / "result.json", result.to_json())
    except OSError:
        pass
