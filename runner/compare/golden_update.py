"""``runner golden update``: write golden files for this platform from a run, and say what changed.

Only cases whose launches all completed are written (a crashed run never becomes a golden).
With ``--only-failing`` a golden is rewritten only when its check failed or it is missing.
Each file is written atomically, with the platform fingerprint in its sidecar
(``fingerprint_<env>_<platform>.json``, which Megatron's reader never sees); the summary lists, per
case and metric, how many steps changed and the largest relative change, for review
(``git diff golden/`` shows the rest).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from runner.compare.golden import golden_path_for, load_golden, write_golden
from runner.records import CaseResult, Outcome, Verdict
from runner.platforms import fingerprint


def update_goldens(session: Any, results: Sequence[CaseResult], *, only_failing: bool, out: Any) -> set[str]:
    """Write the goldens; returns the ids of the cases whose golden was (re)written."""
    written: set[str] = set()
    fp = fingerprint(session.platform)
    for r in results:
        kind = session.plugins.kind(r.case.kind)
        if not kind.case_uses_golden(r.case):
            continue
        if not r.launches or any(o.outcome is not Outcome.COMPLETED for o in r.launches):
            out.line(f"golden: {r.case.id}: not written (the run did not complete: {r.verdict.value})")
            continue
        path = golden_path_for(r.case, session.golden_root, session.environment_for(r.case))
        golden_failed = any(c.name.startswith("golden") and not c.passed for c in r.checks)
        if only_failing and path.is_file() and not golden_failed:
            continue
        if r.verdict is Verdict.FAILED and not golden_failed:
            out.line(f"golden: {r.case.id}: not written (a non-golden check failed: {r.detail})")
            continue
        metrics = kind.golden_metrics(r.case, r.launches)
        if not metrics:
            out.line(f"golden: {r.case.id}: the run produced no metrics; nothing written")
            continue
        old = load_golden(path) if path.is_file() else None
        write_golden(path, metrics, fp)
        written.add(r.case.id)
        out.line(f"golden: wrote {path}")
        for line in _diff_summary(old, metrics):
            out.line(f"    {line}")
    n = len(written)
    out.line(f"golden: {n} file{'s' if n != 1 else ''} written; review with `git diff`")
    return written


def _diff_summary(old: Any, new: dict[str, dict[int, float]]) -> list[str]:
    if old is None:
        return [f"new file: {len(new)} metrics"]
    lines = []
    for name in sorted(set(old.metrics) | set(new)):
        if name not in new:
            lines.append(f"{name}: removed")
            continue
        if name not in old.metrics:
            lines.append(f"{name}: added ({len(new[name])} steps)")
            continue
        o, n = old.metrics[name].as_dict(), new[name]
        changed, worst = 0, 0.0
        for step in sorted(set(o) | set(n)):
            a, b = o.get(step), n.get(step)
            if a is None or b is None:
                changed += 1
                continue
            if (math.isnan(a) and math.isnan(b)) or a == b or (math.isinf(a) and math.isnan(b)):
                continue
            changed += 1
            worst = max(worst, abs(b - a) / abs(a) if a else math.inf)
        lines.append(f"{name}: {changed} step(s) changed" + (f", max rel change {worst:.3g}" if changed else ""))
    return lines
