"""``runner list``, ``runner validate``, ``runner show``: the collected cases, nothing runs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Sequence

from runner.cli.codes import EXIT_NO_TESTS, EXIT_OK
from runner.cli.session_setup import make_backend, make_session
from runner.errors import UsageError, did_you_mean
from runner.records import Case


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def cmd_list(ns: argparse.Namespace) -> int:
    session = make_session(ns)
    cases = session.collect()
    for c in cases:
        res = c.resources
        tags = f" [{', '.join(c.tags)}]" if c.tags else ""
        skip = f"  SKIPPED: {c.skip}" if c.skip and c.kind == "megatron" else ""
        print(f"{c.id}  ({c.kind}, {res.nodes}x{res.nproc_per_node}){tags}{skip}")
    print(f"\n{_plural(len(cases), 'case')} collected (platform: {session.platform})")
    return EXIT_OK if cases else EXIT_NO_TESTS


def cmd_validate(ns: argparse.Namespace) -> int:
    session = make_session(ns)
    cases = session.collect()
    session.check_goldens(cases)
    for c in cases:
        if c.kind == "megatron":   # Megatron cases: which test each one is
            print(f"{c.id}  ({c.kind}, TEST_TYPE {c.args['test_type']})" + (f"  SKIPPED: {c.skip}" if c.skip else ""))
    files = {c.spec_file for c in cases}
    print(f"ok: {_plural(len(cases), 'case')} in {_plural(len(files), 'file')} (platform: {session.platform})")
    return EXIT_OK if cases else EXIT_NO_TESTS


def find_case(cases: Sequence[Case], wanted: str) -> Case:
    """The one case named by its id, its name, or the end of its id."""
    tests: tuple[Callable[[Case], bool], ...] = (lambda c: c.id == wanted, lambda c: c.name == wanted,
                                                  lambda c: c.id.endswith(wanted))
    matches = next((found for found in ([c for c in cases if test(c)] for test in tests) if found), [])
    if not matches:
        raise UsageError(f"no case '{wanted}'{did_you_mean(wanted, [c.name for c in cases])}")
    if len(matches) > 1:
        raise UsageError(f"'{wanted}' matches {len(matches)} cases: " + ", ".join(c.id for c in matches[:5]))
    return matches[0]


def cmd_show(ns: argparse.Namespace) -> int:
    file_part = ns.case.split("::", 1)[0] if "::" in ns.case else ""
    if file_part and not getattr(ns, "paths", None) and Path(file_part).exists():
        ns.paths = [file_part]      # an id names its file: collect that one (it may lie outside specs/)
    session = make_session(ns)
    session.options.allow_missing_golden = True
    case = find_case(session.collect(), ns.case)
    backend = make_backend(session)
    print(json.dumps(case.to_json(), indent=2, default=str))
    for line in session.plugins.kind(case.kind).describe(case):
        print(line)
    for launch in session.plan(case):
        rendered = backend.render(launch)
        print(f"\n# launch '{launch.name}' on {backend.id}: {launch.world_size} ranks "
              f"({launch.nodes} node(s) x {launch.nproc_per_node}), timeout {launch.timeout:g}s")
        print(rendered.text)
    return EXIT_OK
