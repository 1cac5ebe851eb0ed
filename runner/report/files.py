"""Machine-readable reports: JSON and JUnit XML."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

from runner.errors import UsageError
from runner.records import CaseResult, Verdict
from runner.results import write_text_atomic


def _atomic_write(path: Path, text: str) -> None:
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise UsageError(f"cannot write report {path}: {exc.strerror or exc}") from None


def write_json(path: str | Path, results: Sequence[CaseResult], meta: dict[str, Any]) -> None:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.verdict.value] = counts.get(r.verdict.value, 0) + 1
    doc = {**meta, "summary": counts, "cases": [r.to_json() for r in results]}
    _atomic_write(Path(path), json.dumps(doc, indent=2, default=str, allow_nan=True) + "\n")


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
    _atomic_write(Path(path), ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n")
