"""A session: the plugins, the options, the collected cases and their launches.

The data flow lives here in one direction: collect (spec -> Cases) -> plan (Case ->
Launches) -> schedule (backend) -> decide (results dir -> CheckResults -> Verdict) -> report.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from runner.run.backend import job_name
from runner.config import ProjectConfig
from runner.errors import SpecError, UsageError
from runner.plan.kind import CompareContext
from runner.records import Case, Launch
from runner.resume.plan import bind_layouts
from runner.plugins import PluginManager
from runner.spec.keywords import compile_keyword
from runner.run.lock import ResultsLock


@dataclass
class Options:
    paths: list[str] = field(default_factory=list)
    keyword: str | None = None
    backend: str = "local"
    backend_opts: dict[str, str] = field(default_factory=dict)
    platform: str | None = None
    dry_run: bool = False
    jobs: int | None = None
    results_dir: str | None = None
    json_path: str | None = None
    junit_path: str | None = None
    exitfirst: bool = False
    golden_dir: str | None = None
    environment: str = "dev"
    plugins: list[str] = field(default_factory=list)
    verbose: int = 0
    allow_missing_golden: bool = False
    reuse: bool = True                 # warm worker pools for poolable kinds (--no-reuse: off)
    #: every parsed command-line option, plugins' own included (option dest -> value)
    extra: dict[str, Any] = field(default_factory=dict)
    #: per case source, settings from the command line (e.g. megatron: overlay, entry)
    source_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


class Session:
    def __init__(self, options: Options, plugins: PluginManager, config: ProjectConfig) -> None:
        from runner.platforms import detect_platform

        self.options = options
        self.plugins = plugins
        self.config = config
        self.platform = options.platform or detect_platform()
        self.root = config.root
        self.golden_root = Path(options.golden_dir or config.get("golden_dir", "golden"))
        if not self.golden_root.is_absolute():
            self.golden_root = self.root / self.golden_root
        self.started = time.time()
        self._results_root: Path | None = None
        self._lock = ResultsLock()

    # -- collect --------------------------------------------------------------------------------
    def collect(self) -> list[Case]:
        from runner.sources import SourceContext, collect_cases

        ctx = SourceContext(self.plugins, self.platform, self.root, self.source_settings(),
                            environment=self.options.environment,
                            allow_missing_golden=self.options.allow_missing_golden)
        cases = collect_cases(self.options.paths, ctx)
        if self.options.keyword:
            match = compile_keyword(self.options.keyword)
            cases = [c for c in cases if match(c)]
        self.plugins.hook.runner_collect_modifycases(session=self, cases=cases)
        return cases

    def source_settings(self) -> dict[str, dict[str, Any]]:
        """``[tool.runner.<source>]`` tables with the command line's overrides on top."""
        out = {"megatron": dict(self.config.get("megatron", {}) or {})}
        for source, values in self.options.source_overrides.items():
            out.setdefault(source, {}).update(values)
        return out

    def check_goldens(self, cases: Sequence[Case]) -> None:
        """Every case of a golden-using kind must have a readable golden with the right range."""
        for case in cases:
            kind = self.plugins.kind(case.kind)
            if not kind.case_uses_golden(case) or case.skip:
                continue
            # imported only when a case uses goldens (it pulls in deepdiff and numpy)
            from runner.compare.golden import golden_path_for, load_golden

            self._check_golden(case, golden_path_for, load_golden)

    def _check_golden(self, case: Case, golden_path_for: Any, load_golden: Any) -> None:
        kind = self.plugins.kind(case.kind)
        if not kind.case_uses_golden(case) or case.skip:
            return
        path = golden_path_for(case, self.golden_root, self.environment_for(case))
        try:
            exists = path.is_file()
        except OSError as exc:   # e.g. a name longer than the filesystem allows
            raise _at_case(case, f"{case.id}: golden file {_rel(path)[:80]}...: {exc.strerror}") from None
        if not exists:
            if self.options.allow_missing_golden:
                return
            raise _at_case(case, f"{case.id}: golden file not found: {_rel(path)} "
                                 f"(create it with `runner golden update {case.spec_file} -k {case.name}`)")
        golden = load_golden(path)
        expected = kind.expected_steps(case)
        if expected and not self.options.allow_missing_golden:
            lo, hi = golden.step_range()
            if (lo, hi) != tuple(expected):
                raise _at_case(case, f"{case.id}: golden file {_rel(path)} covers steps {lo}..{hi}, "
                                     f"the case runs steps {expected[0]}..{expected[1]}")

    def environment_for(self, case: Case) -> str:
        return (case.golden or {}).get("environment", self.options.environment)

    # -- plan -----------------------------------------------------------------------------------
    @property
    def results_root(self) -> Path:
        if self._results_root is None:
            if self.options.results_dir:
                root = Path(self.options.results_dir)
            elif self.config.get("results_dir"):
                root = Path(self.config.get("results_dir")) / time.strftime("run-%Y%m%d-%H%M%S")
            else:
                root = self.root / "runner-results" / time.strftime("run-%Y%m%d-%H%M%S")
            self._results_root = root.resolve()
        return self._results_root

    def ensure_results_root(self) -> Path:
        """Create the results root, check it is writable and lock it for this session.

        One runner per results root: a second one gets a usage error naming the holder's PID.
        A lock whose holder died is taken over (an flock ends with its process). An
        automatically named root that is taken (two runs started in the same second) moves to
        ``run-<time>-2``, ``-3``, ...
        """
        auto = not self.options.results_dir
        base = self.results_root
        for n in range(1, 100 if auto else 2):
            root = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                root.mkdir(parents=True, exist_ok=True)
                probe = root / f".write-test-{os.getpid()}"
                probe.write_text("ok")
                probe.unlink()
            except OSError as exc:
                raise UsageError(f"results dir {root} is not writable: {exc.strerror or exc}") from None
            holder = self._lock.acquire(root)
            if holder is None:
                self._results_root = root
                return root
            if not auto:
                raise UsageError(f"results dir {root} is in use by another runner (PID {holder or 'unknown'}); wait for it "
                                 f"to finish or pass a different --results-dir")
        raise UsageError(f"results dir {base}: every automatic name is in use")

    def release(self) -> None:
        """Give the results root's lock back (also happens when the process ends)."""
        self._lock.release()

    def case_dir(self, case: Case) -> Path:
        return self.results_root / case_dir_name(case)

    def plan(self, case: Case) -> list[Launch]:
        plans = self.plugins.hook.runner_plan_launches(case=case)
        if plans is None:
            plans = self.plugins.kind(case.kind).plan(case)
        plans = bind_layouts(plans, self.plugins.layouts)
        out = []
        for p in plans:
            env = {"RUNNER_CASE_ID": case.id, "RUNNER_LAUNCH": p.name}
            env.update(case.env)
            out.append(Launch(
                case_id=case.id, name=p.name, kind=case.kind, entry=p.entry, args=dict(p.args),
                nodes=case.resources.nodes, nproc_per_node=case.resources.nproc_per_node,
                gpus_per_node=case.resources.gpus_per_node(self.platform), env=env,
                timeout=case.timeout, results_dir=str(self.case_dir(case) / p.name),
                job_name=job_name(case.id, p.name), platform=self.platform,
                results_root=str(self.results_root),
            ))
        return out

    def compare_context(self, case: Case) -> CompareContext:
        return CompareContext(golden_root=self.golden_root, platform=self.platform,
                              environment=self.environment_for(case),
                              allow_missing_golden=self.options.allow_missing_golden)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def case_dir_name(case: Case) -> str:
    """A filesystem-safe, unique folder name for a case."""
    safe = _UNSAFE.sub("_", case.name).strip("._")[:80] or "case"
    digest = hashlib.sha1(case.id.encode()).hexdigest()[:8]
    return f"{safe}-{digest}"


def _at_case(case: Case, message: str) -> UsageError:
    """An error about a case, positioned at the case in its spec file when that is known."""
    loc = case.location
    if loc is None:
        return UsageError(message)
    return SpecError(message, file=loc.file, line=loc.line, col=loc.col)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
