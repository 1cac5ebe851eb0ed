"""The run history: the SQLite store, `runner history`, and the stale-golden-or-regression note."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from runner.config import ProjectConfig
from runner.history.reporter import HistoryReporter
from runner.history.show import render, resolve_case
from runner.history.store import HistoryStore, RunRecord, metric_figures
from runner.errors import UsageError
from runner.plugins import PluginManager
from runner.records import Case, CaseResult, CheckResult, Resources, Verdict
from runner.report.base import SessionSummary
from runner.run.session import Options, Session

GOLDEN = {"lm loss": {"start_step": 1, "end_step": 2, "step_interval": 1, "values": {"1": 2.0, "2": 1.5}}}


def _session(tmp_path: Path) -> Session:
    plugins = PluginManager()
    plugins.load()
    return Session(Options(paths=["specs"], platform="cpu", golden_dir=str(tmp_path / "golden")), plugins,
                   ProjectConfig(tmp_path))


def _case(tmp_path: Path) -> Case:
    return Case(id="specs/a.yaml::toy", name="toy", kind="script", args={"script": "t.py"}, resources=Resources(),
                spec_file=str(tmp_path / "specs/a.yaml"), golden={"file": str(tmp_path / "golden.json")})


def _result(case: Case, verdict: Verdict) -> CaseResult:
    failed = verdict is Verdict.FAILED
    return CaseResult(case, verdict, "lm loss: 1/2 steps differ" if failed else "", 1.0, "local",
                      checks=(CheckResult("golden:lm loss:deterministic", not failed, "lm loss differs" if failed else ""),))


def _finish(rep: HistoryReporter, result: CaseResult) -> CaseResult:
    annotated = rep.annotate(result)
    rep.session_finish(rep.session, [annotated], SessionSummary("cpu", "local", "/r", 1.0, 0))
    return annotated


def _reporter(session: Session, store: Path, at: float) -> HistoryReporter:
    rep = HistoryReporter(session, store)
    object.__setattr__(rep, "started", at)  # sessions one after another
    return rep


def test_failing_golden_case_says_regression_or_stale_golden(tmp_path: Path) -> None:
    session, case, store = _session(tmp_path), _case(tmp_path), tmp_path / "h.sqlite"
    (tmp_path / "golden.json").write_text(json.dumps(GOLDEN))
    # 1: a failure with nothing before it
    first = _finish(_reporter(session, store, 100.0), _result(case, Verdict.FAILED))
    assert "[history: no earlier run on this platform]" in first.detail
    # 2: still failing, never passed: the golden may be stale
    second = _finish(_reporter(session, store, 200.0), _result(case, Verdict.FAILED))
    assert "never passed on this platform (1 earlier run)" in second.detail
    # 3: it passes with this golden, then 4: fails with the same golden: a regression
    _finish(_reporter(session, store, 300.0), _result(case, Verdict.PASSED))
    fourth = _finish(_reporter(session, store, 400.0), _result(case, Verdict.FAILED))
    assert "PASSED on this platform with this golden file before" in fourth.detail and "a regression" in fourth.detail
    # 5: the golden file changed since the last pass: the golden changed, not the code
    (tmp_path / "golden.json").write_text(json.dumps({**GOLDEN, "num-zeros": GOLDEN["lm loss"]}))
    fifth = _finish(_reporter(session, store, 500.0), _result(case, Verdict.FAILED))
    assert "against a different golden file: the golden changed since" in fifth.detail
    # a pass or a non-golden failure is left alone
    assert _reporter(session, store, 600.0).annotate(_result(case, Verdict.PASSED)).detail == ""
    runs = HistoryStore(store).runs(case.id)
    assert [r.verdict for r in runs] == ["FAILED", "FAILED", "PASSED", "FAILED", "FAILED"]
    assert runs[0].fingerprint["platform"] == "cpu" and runs[0].golden_hash != runs[1].golden_hash


def test_another_platform_does_not_count(tmp_path: Path) -> None:
    session, case, store = _session(tmp_path), _case(tmp_path), tmp_path / "h.sqlite"
    (tmp_path / "golden.json").write_text(json.dumps(GOLDEN))
    rep = _reporter(session, store, 100.0)
    rec = rep.record(_result(case, Verdict.PASSED), SessionSummary("cpu", "local", "/r", 1.0, 0))
    HistoryStore(store).append([RunRecord(**{**rec.__dict__, "fingerprint_hash": "elsewhere0000"})])
    later = _reporter(session, store, 200.0).annotate(_result(case, Verdict.FAILED))
    assert "no earlier run on this platform" in later.detail


def test_render_shows_verdicts_and_metric_drift(tmp_path: Path) -> None:
    def rec(at: float, verdict: str, loss: float) -> RunRecord:
        return RunRecord(at=at, session="/r", case_id="specs/a.yaml::toy", case_name="toy", kind="script",
                         platform="cpu", fingerprint_hash="abcdef123456", verdict=verdict, duration=2.0, detail="",
                         git_rev="0123456789ab", figures={"metrics": metric_figures({"lm loss": {1: 3.0, 20: loss}})})
    store = HistoryStore(tmp_path / "h.sqlite")
    store.append([rec(1.0, "PASSED", 2.0), rec(2.0, "PASSED", 2.0), rec(3.0, "FAILED", 2.2)])
    case_id = resolve_case(store, "toy")
    text = render(case_id, store.runs(case_id))
    assert "specs/a.yaml::toy: 3 runs (newest first)" in text
    assert "2.2 (+10.00%)" in text and "2 (=)" in text
    assert "lm loss: 2 -> 2.2 (+10.00%)" in text
    assert "verdicts: 1 FAILED, 2 PASSED" in text
    with pytest.raises(UsageError, match="no runs of 'tyo'.*did you mean 'toy'"):
        resolve_case(store, "tyo")


def test_history_command_on_an_empty_store(runner_project) -> None:
    r = runner_project.run("history", "nothing")
    assert r.exit_code == 4 and "it is empty" in r.stderr, r


def test_no_history_option_and_dry_run_record_nothing(tmp_path: Path) -> None:
    session = _session(tmp_path)
    assert HistoryReporter.create(argparse.Namespace(no_history=True), session) is None
    assert HistoryReporter.create(argparse.Namespace(dry_run=True), session) is None
    made = HistoryReporter.create(argparse.Namespace(history_path=str(tmp_path / "x.sqlite")), session)
    assert made is not None and made.store.path == tmp_path / "x.sqlite"


def test_an_unwritable_history_warns_and_never_fails_the_run(tmp_path: Path, capsys) -> None:
    session, case = _session(tmp_path), _case(tmp_path)
    (tmp_path / "golden.json").write_text(json.dumps(GOLDEN))
    broken = tmp_path / "not-a-db.sqlite"
    broken.write_text("this is not an SQLite file" * 100)
    rep = _reporter(session, broken, 100.0)
    note = rep.annotate(_result(case, Verdict.FAILED)).detail
    assert "[history: history unavailable:" in note
    rep.session_finish(session, [_result(case, Verdict.PASSED)], SessionSummary("cpu", "local", "/r", 1.0, 0))
    assert "warning: the run was not recorded in the history" in capsys.readouterr().err
