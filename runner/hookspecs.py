"""The plugin contract: every hook the runner calls, by phase.

Plugins are Python modules (or objects) with functions named like these hooks and marked
with ``runner.hookimpl``. They are found, in this order: the built-ins, the ``runner``
entry-point group (``[project.entry-points.runner]``), then ``-p module`` on the command
line; ``-p no:NAME`` blocks a plugin by its entry-point or module name.

Phases::

    configure  runner_register_backends, runner_register_kinds, runner_register_reporters,
               runner_register_checks, runner_register_sources, runner_register_layouts,
               runner_addoption, runner_configure
    collect    runner_collect_modifycases
    plan       runner_plan_launches (wrapper-friendly)
    run        runner_launch_started, runner_launch_finished, runner_should_retry
    compare    runner_case_checks
    report     runner_case_result, runner_session_finish

The built-in backends (``backends.local.backend``, ``backends.slurm.backend``, ``backends.kubernetes.backend``)
and case kinds (``runner.kinds.script``, ``workloads.moe.kind``, ``workloads.gpt.kind``)
use exactly these hooks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pluggy

if TYPE_CHECKING:
    import argparse

    from runner.plan.kind import LaunchPlan
    from runner.records import Case, CaseResult, CheckResult, Launch, LaunchOutcome
    from runner.plugins import (BackendRegistry, CheckRegistry, KindRegistry, LayoutRegistry, ReporterRegistry,
                                SourceRegistry)
    from runner.run.session import Session

PROJECT = "runner"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- configure ------------------------------------------------------------------------------
@hookspec(historic=True)
def runner_register_backends(registry: "BackendRegistry") -> None:
    """Register backend classes: ``registry.add(MyBackend)``.

    Historic: a plugin registered late (``-p``) still sees the call. Ids are static; a
    second backend with the same id is an error naming both plugins.
    """


@hookspec(historic=True)
def runner_register_kinds(registry: "KindRegistry") -> None:
    """Register case-kind classes: ``registry.add(MyKind)``. Same rules as backends."""


@hookspec(historic=True)
def runner_register_checks(registry: "CheckRegistry") -> None:
    """Register metric-check classes (``runner.compare.checks.MetricCheck`` subclasses):
    ``registry.add(MyCheck)``; specs name them in ``compare.metrics.<metric>.checks``.
    The built-ins (``runner.compare.checks``) are registered through this same hook."""


@hookspec(historic=True)
def runner_register_reporters(registry: "ReporterRegistry") -> None:
    """Register reporter classes (``runner.report.base.Reporter``): ``registry.add(MyReporter)``.

    Each reporter declares its own command-line options (``add_options``) and decides from
    the parsed options whether it runs (``create``). The terminal, JSON, JUnit XML, HTML and
    history reporters are registered this way. Same id rules as backends.
    """


@hookspec(historic=True)
def runner_register_sources(registry: "SourceRegistry") -> None:
    """Register case sources: ``registry.add(MySource)``. A source turns files into cases
    (``runner.sources.CaseSource``: ``claims(path)``, ``collect(path, ...)``); the built-ins
    are ``yaml`` (spec files) and ``megatron`` (Megatron-LM's model_config.yaml)."""


@hookspec(historic=True)
def runner_register_layouts(registry: "LayoutRegistry") -> None:
    """Register checkpoint layouts for resume tests: ``registry.add(MyLayout)``
    (``runner.resume.layouts.CheckpointLayout``); the built-in one is ``megatron``."""


@hookspec
def runner_addoption(parser: "argparse.ArgumentParser") -> None:
    """Add command-line options to ``runner run`` and ``runner golden update``.

    Plugins are loaded before the command line is parsed (``-p NAME`` is read first), so
    this is called for every plugin; the parsed values reach plugins as
    ``session.options.extra`` (a mapping: option dest -> value) in ``runner_configure``.
    """


@hookspec
def runner_configure(session: "Session") -> None:
    """Called once after plugins are loaded and options parsed, before collection."""


# -- collect --------------------------------------------------------------------------------
@hookspec
def runner_collect_modifycases(session: "Session", cases: list["Case"]) -> None:
    """Filter or reorder the collected cases in place (after -k and profiles)."""


# -- plan -----------------------------------------------------------------------------------
@hookspec(firstresult=True)
def runner_plan_launches(case: "Case") -> "Sequence[LaunchPlan] | None":
    """Override a case kind's plan for a case; return None to let the kind plan it.

    The built-in implementation (trylast) asks the case's kind.
    """


# -- run ------------------------------------------------------------------------------------
@hookspec
def runner_launch_started(launch: "Launch", attempt: int) -> None:
    """A launch was submitted to its backend (attempt counts from 1)."""


@hookspec
def runner_launch_finished(outcome: "LaunchOutcome") -> None:
    """A launch ended (any outcome), after the backend collected it."""


@hookspec(firstresult=True)
def runner_should_retry(case: "Case", outcome: "LaunchOutcome", attempt: int) -> "bool | None":
    """Decide whether to resubmit a finished launch. The built-in policy (trylast):
    INFRA outcomes are retried while ``attempt <= case.retries``; nothing else is."""


# -- compare --------------------------------------------------------------------------------
@hookspec
def runner_case_checks(case: "Case", outcomes: "Sequence[LaunchOutcome]") -> "list[CheckResult]":
    """Add checks to a case's verdict besides its kind's (each plugin returns a list). Called
    on the scheduler's comparison thread (one at a time), not the thread that dispatches."""


# -- report ---------------------------------------------------------------------------------
@hookspec
def runner_case_result(result: "CaseResult") -> None:
    """A case has its verdict (live progress, streaming reporters)."""


@hookspec
def runner_session_finish(session: "Session", results: "Sequence[CaseResult]", exit_code: int) -> None:
    """All cases are done (or interrupted); write reports."""
