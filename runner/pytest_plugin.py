"""Spec files as pytest tests: ``pytest specs/examples/`` collects one item per case.

Collection, planning, running and verdicts go through the runner's own machinery
(``runner.run.session.Session`` collects, ``runner.run.scheduler.Scheduler`` runs one case
through the backend and decides its verdict); this module only maps them onto pytest:

* a YAML file is collected when it is named on the command line or lies under a spec path
  (ini ``runner_spec_paths``; default: ``paths`` of ``[tool.runner]``, else ``specs``) — so
  ``pytest`` on the project's own ``tests/`` collects exactly what it did before;
* item name = case name; the case's tags become markers (``-m gpt``), its tags and kind are
  keywords (``-k``);
* verdicts: PASSED -> passed, SKIPPED -> skipped, XFAIL -> xfailed, FAILED / ERROR / TIMEOUT /
  INFRA / XPASS -> failed with the runner's detail (and the log tail), so ``--junitxml`` works.

Every case's verdict goes into the run history as with ``runner run`` (``runner history CASE``;
a failing golden case's detail says whether it passed before on this platform).

Options: ``--runner-backend``, ``--runner-backend-opt KEY=VALUE``, ``--runner-platform``,
``--runner-results-dir``, ``--runner-history FILE``, ``--runner-no-history``. Loaded with the ``runner_testing`` pytest plugin of this package.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import pytest

from runner.errors import UsageError
from runner.records import Case, CaseResult, Verdict

_STATE = pytest.StashKey["_RunnerState"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("runner", "runner spec files")
    group.addoption("--runner-backend", default=None, help="backend for spec cases (default: configured, else local)")
    group.addoption("--runner-backend-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="a backend option for spec cases (repeatable)")
    group.addoption("--runner-platform", default=None, help="force the platform of spec cases")
    group.addoption("--runner-results-dir", default=None, help="results root of spec cases")
    group.addoption("--runner-history", default=None, metavar="FILE",
                    help="the run history spec cases are recorded in (default: .runner/history.sqlite)")
    group.addoption("--runner-no-history", action="store_true", help="do not record spec cases in the history")
    parser.addini("runner_spec_paths", type="paths", default=[],
                  help="folders whose YAML files are runner spec files (default: [tool.runner] paths, else specs)")


@dataclass
class _RunnerState:
    """One runner session's worth of shared parts for the whole pytest session."""

    config: Any
    plugins: Any
    options: Any
    spec_roots: list[Path]
    given: set[Path]
    backend: Any = None
    history: Any = None
    results: list[CaseResult] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def session_for(self, path: Path) -> Any:
        from runner.run.session import Session

        try:  # case ids and messages name the file as the user wrote it: relative to the project
            path = path.resolve().relative_to(self.config.root)
        except ValueError:
            pass
        return Session(replace(self.options, paths=[str(path)]), self.plugins, self.config)

    def backend_for(self, session: Any) -> Any:
        if self.backend is None:
            opts = session.options
            known = dict(getattr(self.plugins.backends.get(opts.backend).cls, "options", {}) or {})
            unknown = sorted(set(opts.backend_opts) - set(known))
            if unknown:
                raise UsageError(f"backend '{opts.backend}': unknown option '{unknown[0]}'; "
                                 f"known: {', '.join(sorted(known)) or 'none'}")
            self.backend = self.plugins.backend(opts.backend, opts.backend_opts)
            self.backend.check()
        return self.backend

    def record(self, config: pytest.Config, session: Any, result: CaseResult) -> CaseResult:
        """Keeps the result for the history (annotated as ``runner run`` annotates it)."""
        if config.getoption("runner_no_history"):
            return result
        if self.history is None:
            from runner.history.reporter import HistoryReporter, store_path

            self.history = HistoryReporter(session, store_path(session, config.getoption("runner_history")))
        result = self.history.annotate(result)
        self.results.append(result)
        return result

    def finish(self, exit_code: int) -> None:
        if self.history is not None and self.results:
            from runner.report.base import SessionSummary

            summary = SessionSummary(platform=self.history.session.platform, backend=self.options.backend,
                                     results_dir=str(self.options.results_dir),
                                     duration=time.time() - self.started, exit_code=exit_code)
            self.history.session_finish(self.history.session, self.results, summary)


def _state(config: pytest.Config) -> _RunnerState:
    state = config.stash.get(_STATE, None)
    if state is None:
        from runner.config import load_config
        from runner.plugins import PluginManager
        from runner.run.session import Options

        rconfig = load_config(Path(config.rootpath))
        plugins = PluginManager()
        plugins.load(list(rconfig.get("plugins", []) or []))
        backend = config.getoption("runner_backend") or rconfig.get("backend", "local")
        opts = rconfig.backend_options(backend)
        for item in config.getoption("runner_backend_opt") or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UsageError(f"--runner-backend-opt {item!r}: expected KEY=VALUE")
            opts[key.strip()] = value
        results = config.getoption("runner_results_dir") or str(
            rconfig.root / "runner-results" / time.strftime("pytest-%Y%m%d-%H%M%S"))
        options = Options(backend=backend, backend_opts=opts, platform=config.getoption("runner_platform"),
                          results_dir=results, environment=rconfig.get("environment", "dev"))
        roots = [Path(p) for p in config.getini("runner_spec_paths")] or \
            [rconfig.root / p for p in (rconfig.get("paths", []) or ["specs"])]
        given = {(Path(config.invocation_params.dir) / a.split("::")[0]).resolve()
                 for a in config.invocation_params.args if not a.startswith("-")}
        state = _RunnerState(rconfig, plugins, options, [r.resolve() for r in roots], given)
        config.stash[_STATE] = state
    return state


def _is_spec_path(state: _RunnerState, path: Path) -> bool:
    path = path.resolve()
    if path in state.given:
        return True
    return any(path.is_relative_to(root) for root in state.spec_roots)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    state = _state(parent.config)
    if not _is_spec_path(state, file_path):
        return None
    return SpecFile.from_parent(parent, path=file_path)


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is None:
        return
    state.finish(int(session.exitstatus))
    if state.backend is not None:
        state.backend.close()


class SpecError(Exception):
    """A runner usage error (bad spec, missing golden): one line, no traceback."""


class SpecFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        state = _state(self.config)
        session = state.session_for(self.path)
        try:
            cases = session.collect()
            session.check_goldens(cases)
        except UsageError as exc:
            raise SpecError(str(exc)) from None
        for case in cases:
            item = CaseItem.from_parent(self, name=case.name, case=case, runner_session=session)
            for tag in case.tags:
                self.config.addinivalue_line("markers", f"{tag}: runner spec tag")
                item.add_marker(tag)
            item.extra_keyword_matches.update({case.kind, *case.tags})
            yield item

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, SpecError):
            return f"error: {excinfo.value}"
        return super().repr_failure(excinfo)


class CaseFailed(Exception):
    def __init__(self, result: CaseResult) -> None:
        super().__init__(result.detail)
        self.result = result


class CaseItem(pytest.Item):
    def __init__(self, *, case: Case, runner_session: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.runner_session = runner_session
        self.result: CaseResult | None = None

    def runtest(self) -> None:
        from runner.run.scheduler import Scheduler

        if self.case.skip:  # the runner's own verdict, without starting a backend
            pytest.skip(self.case.skip)
        state = _state(self.config)
        backend = state.backend_for(self.runner_session)
        self.runner_session.ensure_results_root()
        results = Scheduler(self.runner_session, backend, jobs=1).run([self.case])
        result = self.result = state.record(self.config, self.runner_session, results[0])
        self.user_properties.append(("verdict", result.verdict.value))
        if result.verdict is Verdict.PASSED:
            return
        if result.verdict is Verdict.SKIPPED:
            pytest.skip(result.detail)
        if result.verdict is Verdict.XFAIL:
            pytest.xfail(result.detail)
        if result.verdict is Verdict.INTERRUPTED:
            raise KeyboardInterrupt
        raise CaseFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, CaseFailed):
            r = excinfo.value.result
            lines = [f"{r.verdict.value}: {r.detail}"]
            lines += [f"  {c.name}: {c.detail}" for c in r.checks if not c.passed][:20]
            for o in r.launches:
                if o.log_tail:
                    lines += [f"--- log tail ({o.launch.name})", o.log_tail]
            if r.launches:
                lines.append(f"results: {Path(r.launches[0].launch.results_dir).parent}")
            return "\n".join(lines)
        if isinstance(excinfo.value, UsageError):
            return f"error: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.case.location.line - 1 if self.case.location else None
        return self.path, line, f"{self.case.kind} case {self.case.name}"
