"""The history store: ``<project>/.runner/history.sqlite`` (git-ignored), one row per case per run.

A row holds the case, its verdict, key figures (each metric's first and last value, the
kind's numeric info), a hash of the platform fingerprint (and the fingerprint itself), the git
revision of the project when it has one, and a hash of the golden file the case compared with.
Several runs may write at once: SQLite's own locking, with a generous busy timeout.
"""
from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,                 -- unix time the session started
    session TEXT NOT NULL,            -- the results dir: one per session
    case_id TEXT NOT NULL,
    case_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    platform TEXT NOT NULL,
    fingerprint_hash TEXT NOT NULL,
    fingerprint TEXT NOT NULL,        -- JSON
    git_rev TEXT,
    verdict TEXT NOT NULL,
    duration REAL NOT NULL,
    detail TEXT NOT NULL,
    golden_hash TEXT,
    figures TEXT NOT NULL             -- JSON: {"metrics": {name: {"first": x, "last": y, "steps": n}}, "info": {...}}
);
CREATE INDEX IF NOT EXISTS runs_case ON runs (case_id, at);
"""
DEFAULT_PATH = Path(".runner") / "history.sqlite"


@dataclass(frozen=True)
class RunRecord:
    at: float
    session: str
    case_id: str
    case_name: str
    kind: str
    platform: str
    fingerprint_hash: str
    verdict: str
    duration: float
    detail: str
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    git_rev: str | None = None
    golden_hash: str | None = None
    figures: Mapping[str, Any] = field(default_factory=dict)


def fingerprint_hash(fp: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(dict(fp), sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_hash(path: Path) -> str | None:
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return None


def git_revision(root: Path) -> str | None:
    """The project's HEAD commit (short), with ``+dirty`` when tracked files changed; None outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, stdin=subprocess.DEVNULL)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root, capture_output=True,
                               timeout=20, stdin=subprocess.DEVNULL)
        return rev.stdout.strip() + ("+dirty" if dirty.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return None


def metric_figures(metrics: Mapping[str, Mapping[int, float]]) -> dict[str, dict[str, Any]]:
    """Each metric's first and last finite value and its number of steps."""
    out: dict[str, dict[str, Any]] = {}
    for name, series in sorted(metrics.items()):
        steps = [s for s in sorted(series) if isinstance(series[s], (int, float)) and math.isfinite(series[s])]
        if steps:
            out[name] = {"first": series[steps[0]], "last": series[steps[-1]], "steps": len(steps),
                         "last_step": steps[-1]}
    return out


class HistoryStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60)
        con.executescript(SCHEMA)
        return con

    def append(self, records: Sequence[RunRecord]) -> None:
        if not records:
            return
        con = self._connect()
        try:
            with con:
                con.executemany(
                    "INSERT INTO runs (at, session, case_id, case_name, kind, platform, fingerprint_hash, fingerprint,"
                    " git_rev, verdict, duration, detail, golden_hash, figures) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(r.at, r.session, r.case_id, r.case_name, r.kind, r.platform, r.fingerprint_hash,
                      json.dumps(dict(r.fingerprint), default=str), r.git_rev, r.verdict, r.duration, r.detail,
                      r.golden_hash, json.dumps(dict(r.figures), default=str, allow_nan=True)) for r in records])
        finally:
            con.close()

    def runs(self, case_id: str, *, limit: int = 20, before: float | None = None) -> list[RunRecord]:
        """A case's most recent runs, newest first."""
        if not self.path.is_file():
            return []
        con = self._connect()
        try:
            sql = "SELECT * FROM runs WHERE case_id = ?"
            params: list[Any] = [case_id]
            if before is not None:
                sql += " AND at < ?"
                params.append(before)
            sql += " ORDER BY at DESC, id DESC LIMIT ?"
            params.append(limit)
            con.row_factory = sqlite3.Row
            return [_record(row) for row in con.execute(sql, params)]
        finally:
            con.close()

    def case_ids(self) -> list[str]:
        if not self.path.is_file():
            return []
        con = self._connect()
        try:
            return [row[0] for row in con.execute("SELECT DISTINCT case_id FROM runs ORDER BY case_id")]
        finally:
            con.close()

    def __iter__(self) -> Iterator[RunRecord]:
        for case_id in self.case_ids():
            yield from self.runs(case_id, limit=10**9)


def _record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(at=row["at"], session=row["session"], case_id=row["case_id"], case_name=row["case_name"],
                     kind=row["kind"], platform=row["platform"], fingerprint_hash=row["fingerprint_hash"],
                     verdict=row["verdict"], duration=row["duration"], detail=row["detail"],
                     fingerprint=json.loads(row["fingerprint"]), git_rev=row["git_rev"],
                     golden_hash=row["golden_hash"], figures=json.loads(row["figures"]))
