"""Machine-readable reports: JSON (``--json FILE``) and JUnit XML (``--junit-xml FILE``), as reporters."""
from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from runner.errors import UsageError
from runner.hookspecs import hookimpl
from runner.records import CaseResult, Verdict
from runner.results import write_text_atomic
from runner.report.base import Reporter, SessionSummary

if TYPE_CHECKING:
    from runner.run.session import Session


def write_report(path: Path, text: str) -> None:
    """Write a report file atomically; a path that cannot be written is a usage error."""
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise UsageError(f"cannot write report {path}: {exc.strerror or exc}") from None


def write_json(path: str | Path, results: Sequence[CaseResult], meta: dict[str, Any]) -> None:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.verdict.value] = counts.get(r.verdict.value, 0) + 1
    doc = {**meta, "summary": counts, "cases": [r.to_json() for r in results]}
    write_report(Path(path), json.dumps(doc, indent=2, default=str, allow_nan=True) + "\n")


def write_junit(path: str | Path, results: Sequence[CaseResult], *, suite_name: str = "runner") -> None:
    suite = ET.Element("testsuite", name=suite_name, tests=str(len(results)))
    counts = {"failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for r in results:
        file_part, _, name = r.case.id.rpartition("::")
        tc = ET.SubElement(suite, "testcase", classname=file_part or r.case.spec_file, name=name or r.case.id,
                           time=f"{r.duration:.3f}")
        total_time += r.duration
        v = r.verdict
        if v in (Verdict.FAILED, Verdict.XPASS):
            counts["failures"] += 1
            el = ET.SubElement(tc, "failure", message=r.detail[:1000], type=v.value)
            el.text = "\n".join(f"{c.name}: {c.detail}" for c in r.checks if not c.passed) or r.detail
        elif v in (Verdict.ERROR, Verdict.TIMEOUT, Verdict.INFRA):
            counts["errors"] += 1
            el = ET.SubElement(tc, "error", message=r.detail[:1000], type=v.value)
            el.text = "\n".join(o.log_tail for o in r.launches if o.log_tail) or r.detail
        elif v in (Verdict.SKIPPED, Verdict.XFAIL, Verdict.INTERRUPTED):
            counts["skipped"] += 1
            ET.SubElement(tc, "skipped", message=f"{v.value}: {r.detail}"[:1000])
    for k, n in counts.items():
        suite.set(k, str(n))
    suite.set("time", f"{total_time:.3f}")
    tree = ET.ElementTree(suite)
    ET.indent(tree)
    write_report(Path(path), ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n")


class FileReporter(Reporter):
    """A reporter that writes one file named by its option (``--json FILE``...): subclasses
    set ``option``, ``dest`` and ``help`` and implement ``write``."""

    option: ClassVar[str]
    dest: ClassVar[str]
    help: ClassVar[str]

    def __init__(self, path: str | Path) -> None:
        self.path = path

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(cls.option, dest=cls.dest, metavar="FILE", help=cls.help)

    @classmethod
    def create(cls, ns: argparse.Namespace, session: "Session") -> "FileReporter | None":
        path = getattr(ns, cls.dest, None)
        return cls(path) if path and cls.wanted(ns) else None

    @classmethod
    def wanted(cls, ns: argparse.Namespace) -> bool:
        """Whether this command line gets the report when the option is given."""
        return True

    def session_finish(self, session: "Session", results: Sequence[CaseResult], summary: SessionSummary) -> None:
        self.write(session, results, summary)

    def write(self, session: "Session", results: Sequence[CaseResult], summary: SessionSummary) -> None:
        raise NotImplementedError


class JSONReporter(FileReporter):
    id = "json"
    description = "--json FILE: every case, its launches, checks and info as JSON"
    option, dest, help = "--json", "json_path", "write a JSON report"

    def write(self, session: "Session", results: Sequence[CaseResult], summary: SessionSummary) -> None:
        write_json(self.path, results, summary.to_json())


class JUnitReporter(FileReporter):
    id = "junit"
    description = "--junit-xml FILE: JUnit XML for CI test tabs"
    option, dest, help = "--junit-xml", "junit_path", "write a JUnit XML report"

    def write(self, session: "Session", results: Sequence[CaseResult], summary: SessionSummary) -> None:
        write_junit(self.path, results)


@hookimpl
def runner_register_reporters(registry: Any) -> None:
    registry.add(JSONReporter)
    registry.add(JUnitReporter)
