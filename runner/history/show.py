"""``runner history CASE``: a case's recent verdicts and how its metrics drifted."""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from tabulate import tabulate

from runner.errors import UsageError, did_you_mean
from runner.history.store import DEFAULT_PATH, HistoryStore, RunRecord


def resolve_case(store: HistoryStore, wanted: str) -> str:
    ids = store.case_ids()
    matches = [i for i in ids if i == wanted] or [i for i in ids if i.rpartition("::")[2] == wanted] or \
              [i for i in ids if i.endswith(wanted)]
    if not matches:
        names = [i.rpartition("::")[2] for i in ids]
        raise UsageError(f"no runs of '{wanted}' in the history {store.path}{did_you_mean(wanted, names)}"
                         + ("" if ids else " (it is empty: `runner run` records each case there)"))
    if len(matches) > 1:
        raise UsageError(f"'{wanted}' matches {len(matches)} cases in the history: " + ", ".join(matches[:5]))
    return matches[0]


def _fmt(v: float) -> str:
    return f"{v:.6g}" if isinstance(v, (int, float)) and math.isfinite(v) else str(v)


def _drift(new: float, old: float) -> str:
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (new, old)):
        return ""
    if old == 0:
        return " (=)" if new == 0 else " (changed)"
    rel = (new - old) / abs(old)
    return " (=)" if rel == 0 else f" ({rel:+.2%})"


def metric_names(runs: list[RunRecord]) -> list[str]:
    names: list[str] = []
    for r in runs:
        for n in r.figures.get("metrics", {}):
            if n not in names:
                names.append(n)
    preferred = [n for n in ("lm loss", "loss") if n in names]
    return preferred + [n for n in names if n not in preferred]


def render(case_id: str, runs: list[RunRecord], *, max_metrics: int = 3) -> str:
    shown = metric_names(runs)[:max_metrics]
    rows = []
    for i, r in enumerate(runs):
        older = runs[i + 1] if i + 1 < len(runs) else None
        cells = []
        for name in shown:
            cur = r.figures.get("metrics", {}).get(name, {}).get("last")
            prev = older.figures.get("metrics", {}).get(name, {}).get("last") if older else None
            cells.append("" if cur is None else _fmt(cur) + (_drift(cur, prev) if prev is not None else ""))
        rows.append([time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.at)), r.verdict, r.git_rev or "-",
                     f"{r.platform} {r.fingerprint_hash[:6]}", f"{r.duration:.1f}s", *cells,
                     (r.detail[:60] + "...") if len(r.detail) > 63 else r.detail])
    headers = ["when", "verdict", "git rev", "platform", "duration", *[f"{n} (last)" for n in shown], "detail"]
    out = [f"{case_id}: {len(runs)} run{'s' if len(runs) != 1 else ''} (newest first)", "",
           tabulate(rows, headers=headers, tablefmt="simple")]
    drift = []
    if len(runs) > 1:
        newest, oldest = runs[0], runs[-1]
        for name in metric_names(runs):
            a = oldest.figures.get("metrics", {}).get(name, {}).get("last")
            b = newest.figures.get("metrics", {}).get(name, {}).get("last")
            if a is not None and b is not None:
                drift.append(f"  {name}: {_fmt(a)} -> {_fmt(b)}{_drift(b, a)}")
    if drift:
        out += ["", "metric drift over these runs (last step's value, oldest -> newest):", *drift]
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    out += ["", "verdicts: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))]
    return "\n".join(out)


def cmd_history(ns: argparse.Namespace) -> int:
    from runner.config import load_config

    config = load_config()
    path = Path(ns.store or DEFAULT_PATH)
    if not path.is_absolute():
        path = config.root / path
    store = HistoryStore(path)
    if ns.limit < 1:
        raise UsageError("--limit must be at least 1")
    case_id = resolve_case(store, ns.case)
    print(render(case_id, store.runs(case_id, limit=ns.limit)))
    return 0
