"""Command line: ``runner run|list|validate|show|plugins|golden``.

Exit codes (pytest's): 0 all passed, 1 some failed, 2 interrupted, 3 internal error,
4 usage error, 5 nothing collected. A UsageError anywhere becomes one line on stderr and
exit 4, caught here and only here. Nothing in this module imports torch: listing,
validating and dry runs stay fast.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

from runner.errors import UsageError, did_you_mean

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_TESTS = 0, 1, 2, 3, 4, 5


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 by default; usage errors are 4
        raise UsageError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser, *, paths: bool = True) -> None:
    if paths:
        p.add_argument("paths", nargs="*", metavar="PATH",
                       help="spec files or directories (default: the configured paths, else specs/)")
        p.add_argument("-k", dest="keyword", metavar="EXPR",
                       help="only cases whose id contains these words (and/or/not, parentheses; tags and kinds match too)")
        p.add_argument("--platform", help="force the platform (cpu, dgx_h100, ...); default: detected")
    p.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                   help="load a plugin module; -p no:NAME blocks one")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runner", description="Declarative YAML test specs for distributed training.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    run = sub.add_parser("run", help="run cases and print the verdict table")
    _common(run)
    _run_options(run)

    lst = sub.add_parser("list", help="list the collected cases")
    _common(lst)

    val = sub.add_parser("validate", help="check spec files (and golden files) without running anything")
    _common(val)
    val.add_argument("--golden-dir", help="golden root (default: golden/)")
    val.add_argument("--environment", default=None, help="golden environment (default: dev)")

    show = sub.add_parser("show", help="show a fully expanded case and its rendered launches")
    show.add_argument("case", metavar="CASE_ID", help="a case id (file::name) or a unique case name")
    _common(show)
    show.add_argument("--backend", help="render launches for this backend (default: local)")
    show.add_argument("--backend-opt", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument("--results-dir", help="results root used in the rendering")

    plg = sub.add_parser("plugins", help="list plugins, backends and case kinds and where they come from")
    _common(plg, paths=False)

    golden = sub.add_parser("golden", help="golden values: update")
    gsub = golden.add_subparsers(dest="golden_command", parser_class=_Parser)
    upd = gsub.add_parser("update", help="run cases and write their golden files for this platform")
    _common(upd)
    _run_options(upd, golden=True)
    upd.add_argument("--only-failing", action="store_true",
                     help="rewrite only goldens whose check failed (or that are missing)")
    return parser


def _run_options(p: argparse.ArgumentParser, *, golden: bool = False) -> None:
    p.add_argument("--backend", help="backend id (default: configured, else local)")
    p.add_argument("--backend-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend option (repeatable); see `runner plugins`")
    p.add_argument("--jobs", "-j", type=int, default=None, help="cases run at once (default: as many as fit)")
    p.add_argument("--results-dir", help="results root (default: runner-results/run-<time>)")
    p.add_argument("--golden-dir", help="golden root (default: golden/)")
    p.add_argument("--environment", default=None, help="Megatron environment in golden file names (default: dev)")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write a JSON report")
    p.add_argument("--junit-xml", dest="junit_path", metavar="FILE", help="write a JUnit XML report")
    p.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failing case")
    p.add_argument("-v", "--verbose", action="count", default=0)
    if not golden:
        p.add_argument("--dry-run", action="store_true", help="print each launch as it would be submitted")


# -- helpers ------------------------------------------------------------------------------------
def _load(ns: argparse.Namespace):
    from runner.config import load_config
    from runner.plugins import PluginManager

    config = load_config()
    plugins = PluginManager()
    plugins.load(list(config.get("plugins", []) or []) + list(ns.plugins))
    return config, plugins


def _options(ns: argparse.Namespace, config) -> "object":
    from runner.run.session import Options

    paths = list(getattr(ns, "paths", []) or [])
    if not paths:
        paths = list(config.get("paths", []) or [])
        if not paths:
            if not Path("specs").is_dir():
                raise UsageError("no PATH given and no specs/ directory here")
            paths = ["specs"]
    backend = getattr(ns, "backend", None) or config.get("backend", "local")
    opts = config.backend_options(backend)
    for item in getattr(ns, "backend_opt", []) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--backend-opt {item!r}: expected KEY=VALUE")
        opts[key.strip()] = value
    jobs = getattr(ns, "jobs", None) if getattr(ns, "jobs", None) is not None else config.get("jobs")
    if jobs is not None and int(jobs) < 1:
        raise UsageError("--jobs must be at least 1")
    return Options(
        paths=paths, keyword=getattr(ns, "keyword", None), backend=backend, backend_opts=opts,
        platform=getattr(ns, "platform", None), dry_run=getattr(ns, "dry_run", False),
        jobs=int(jobs) if jobs is not None else None, results_dir=getattr(ns, "results_dir", None),
        json_path=getattr(ns, "json_path", None), junit_path=getattr(ns, "junit_path", None),
        exitfirst=getattr(ns, "exitfirst", False), golden_dir=getattr(ns, "golden_dir", None),
        environment=getattr(ns, "environment", None) or config.get("environment", "dev"),
        plugins=list(ns.plugins), verbose=getattr(ns, "verbose", 0),
    )


def _backend(session):
    opts = session.options
    reg = session.plugins.backends.get(opts.backend)
    known = dict(getattr(reg.cls, "options", {}) or {})
    for key in opts.backend_opts:
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise UsageError(f"backend '{opts.backend}': unknown option '{key}'{did_you_mean(key, known)}; "
                             f"known: {allowed}")
    return reg.cls(opts.backend_opts)


def _session(ns: argparse.Namespace):
    from runner.run.session import Session

    config, plugins = _load(ns)
    options = _options(ns, config)
    session = Session(options, plugins, config)
    plugins.hook.runner_configure(session=session)
    return session


# -- commands -----------------------------------------------------------------------------------
def cmd_list(ns: argparse.Namespace) -> int:
    session = _session(ns)
    cases = session.collect()
    for c in cases:
        res = c.resources
        tags = f" [{', '.join(c.tags)}]" if c.tags else ""
        print(f"{c.id}  ({c.kind}, {res.nodes}x{res.nproc_per_node}){tags}")
    print(f"\n{len(cases)} case{'s' if len(cases) != 1 else ''} collected (platform: {session.platform})")
    return EXIT_OK if cases else EXIT_NO_TESTS


def cmd_validate(ns: argparse.Namespace) -> int:
    session = _session(ns)
    cases = session.collect()
    session.check_goldens(cases)
    files = sorted({c.spec_file for c in cases})
    print(f"ok: {len(cases)} case{'s' if len(cases) != 1 else ''} in {len(files)} file{'s' if len(files) != 1 else ''} "
          f"(platform: {session.platform})")
    return EXIT_OK if cases else EXIT_NO_TESTS


def cmd_show(ns: argparse.Namespace) -> int:
    session = _session(ns)
    session.options.allow_missing_golden = True
    cases = session.collect()
    matches = [c for c in cases if c.id == ns.case] or [c for c in cases if c.name == ns.case] or \
              [c for c in cases if c.id.endswith(ns.case)]
    if not matches:
        raise UsageError(f"no case '{ns.case}'{did_you_mean(ns.case, [c.name for c in cases])}")
    if len(matches) > 1:
        raise UsageError(f"'{ns.case}' matches {len(matches)} cases: " + ", ".join(c.id for c in matches[:5]))
    case = matches[0]
    backend = _backend(session)
    print(json.dumps(case.to_json(), indent=2, default=str))
    for line in session.plugins.kind(case.kind).describe(case):
        print(line)
    for launch in session.plan(case):
        rendered = backend.render(launch)
        print(f"\n# launch '{launch.name}' on {backend.id}: {launch.world_size} ranks "
              f"({launch.nodes} node(s) x {launch.nproc_per_node}), timeout {launch.timeout:g}s")
        print(rendered.text)
    return EXIT_OK


def cmd_plugins(ns: argparse.Namespace) -> int:
    from tabulate import tabulate

    _, plugins = _load(ns)
    rows = [[p.name, p.origin, p.module, ("FAILED: " + p.error) if p.error else "ok"] for p in plugins.plugins]
    print(tabulate(rows, headers=["plugin", "from", "module", "status"]))
    print()
    rows = [[r.id, "backend", r.plugin, r.origin, getattr(r.cls, "description", "")] for r in plugins.backends.items()]
    rows += [[r.id, "case kind", r.plugin, r.origin, getattr(r.cls, "description", "")] for r in plugins.kinds.items()]
    print(tabulate(rows, headers=["id", "type", "plugin", "from", "description"]))
    for r in plugins.backends.items():
        opts = getattr(r.cls, "options", {}) or {}
        if opts:
            print(f"\nbackend '{r.id}' options (--backend-opt KEY=VALUE):")
            for k, v in sorted(opts.items()):
                print(f"  {k:<20} {v}")
    failed = [p for p in plugins.plugins if p.error]
    return EXIT_INTERNAL if failed else EXIT_OK


def cmd_run(ns: argparse.Namespace, *, golden_update: bool = False) -> int:
    from runner.records import Verdict
    from runner.report.terminal import TerminalReporter
    from runner.run.scheduler import Scheduler

    session = _session(ns)
    if golden_update:
        session.options.allow_missing_golden = True
    cases = session.collect()
    reporter = TerminalReporter(verbose=session.options.verbose)
    if not cases:
        reporter.line("no cases collected")
        return EXIT_NO_TESTS
    session.check_goldens(cases)
    backend = _backend(session)
    if session.options.dry_run:
        for case in cases:
            for launch in session.plan(case):
                rendered = backend.render(launch)
                print(f"# {case.id} [{launch.name}] on {backend.id}")
                print(rendered.text)
                print()
        print(f"# {len(cases)} case{'s' if len(cases) != 1 else ''}; nothing was started (--dry-run)")
        return EXIT_OK
    backend.check()
    session.ensure_results_root()
    reporter.line(f"runner: {len(cases)} case{'s' if len(cases) != 1 else ''} on backend '{backend.id}', "
                  f"platform {session.platform}, results in {session.results_root}")
    started = time.monotonic()
    scheduler = Scheduler(session, backend, jobs=session.options.jobs, exitfirst=session.options.exitfirst,
                          on_result=reporter.case_result, on_progress=reporter.progress)
    try:
        results = scheduler.run(cases)
    finally:
        backend.close()
    elapsed = time.monotonic() - started
    reporter.table(results)
    reporter.summary(results, elapsed)
    rewritten: set[str] = set()
    if golden_update and not scheduler.interrupted:
        from runner.compare.golden_update import update_goldens

        rewritten = update_goldens(session, results, only_failing=ns.only_failing, out=reporter)
    # under `golden update`, a case that failed only against the golden it just rewrote is done
    code = exit_code(results, interrupted=scheduler.interrupted,
                     forgiven={r.case.id for r in results if r.case.id in rewritten and r.verdict is Verdict.FAILED})
    meta = {"platform": session.platform, "backend": backend.id, "results_dir": str(session.results_root),
            "duration": round(elapsed, 3), "exit_code": code}
    if session.options.json_path:
        from runner.report.files import write_json

        write_json(session.options.json_path, results, meta)
    if session.options.junit_path:
        from runner.report.files import write_junit

        write_junit(session.options.junit_path, results)
    session.plugins.hook.runner_session_finish(session=session, results=results, exit_code=code)
    return code


def exit_code(results: Sequence, *, interrupted: bool = False, forgiven: set[str] = frozenset()) -> int:
    """pytest's codes; ``forgiven``: case ids whose failure does not count (goldens rewritten)."""
    if interrupted:
        return EXIT_INTERRUPTED
    if not results:
        return EXIT_NO_TESTS
    if any(r.verdict.is_failure and r.case.id not in forgiven for r in results):
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        if ns.version:
            from importlib.metadata import PackageNotFoundError, version

            try:
                print(f"runner {version('dist-spec-runner')}")
            except PackageNotFoundError:
                print("runner (not installed)")
            return EXIT_OK
        if ns.command is None:
            parser.print_help()
            return EXIT_USAGE
        if ns.command == "run":
            return cmd_run(ns)
        if ns.command == "list":
            return cmd_list(ns)
        if ns.command == "validate":
            return cmd_validate(ns)
        if ns.command == "show":
            return cmd_show(ns)
        if ns.command == "plugins":
            return cmd_plugins(ns)
        if ns.command == "golden":
            if ns.golden_command != "update":
                raise UsageError("runner golden: expected 'update'")
            return cmd_run(ns, golden_update=True)
        raise UsageError(f"unknown command {ns.command!r}")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception:  # noqa: BLE001 - an internal error: the one place a traceback is right
        traceback.print_exc()
        print("error: internal error (the traceback above is a bug in the runner or a plugin)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
