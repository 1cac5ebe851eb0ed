"""`pytest specs/`: spec files collected as pytest items through the runner's own session
machinery; pytest's verdicts, -k, -m from tags, JUnit; the project's tests/ collect as before."""
from __future__ import annotations

import re

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from runner.history.store import HistoryStore

REPO = Path(__file__).resolve().parents[1]

SPEC = """
defaults:
  kind: script
  resources: {nproc_per_node: 1}
  tags: [smoke]
cases:
  - name: fine
    args: {script: ok.py, golden: false}
  - name: broken
    tags: [smoke, fragile]
    args: {script: crash.py, golden: false}
  - name: known_bug
    xfail: "issue 7: crashes"
    args: {script: crash.py, golden: false}
  - name: not_here
    skip: "needs a GPU"
    args: {script: ok.py, golden: false}
"""


def pytest_run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "cases.yaml").write_text(SPEC)
    (tmp_path / "specs" / "ok.py").write_text("print('fine')\n")
    (tmp_path / "specs" / "crash.py").write_text("print('going down')\nraise SystemExit('boom: planted crash')\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_plain.py").write_text("def test_plain():\n    assert True\n")
    # a spec file among the tests: not collected unless named (it is not under a spec path)
    shutil.copy(tmp_path / "specs" / "cases.yaml", tmp_path / "tests" / "data.yaml")
    for script in ("ok.py", "crash.py"):
        shutil.copy(tmp_path / "specs" / script, tmp_path / "tests" / script)
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ntestpaths = ['tests']\n")
    return tmp_path


def test_collects_one_item_per_case_and_leaves_tests_alone(project: Path) -> None:
    specs = pytest_run(project, "--collect-only", "-q", "specs")
    assert specs.returncode == 0, specs.stdout + specs.stderr
    items = [line for line in specs.stdout.splitlines() if "::" in line]
    assert items == [f"specs/cases.yaml::{n}" for n in ("fine", "broken", "known_bug", "not_here")]
    plain = pytest_run(project, "--collect-only", "-q")
    assert [line for line in plain.stdout.splitlines() if "::" in line] == ["tests/test_plain.py::test_plain"]
    tests_dir = pytest_run(project, "--collect-only", "-q", "tests")
    assert [line for line in tests_dir.stdout.splitlines() if "::" in line] == ["tests/test_plain.py::test_plain"]
    named = pytest_run(project, "--collect-only", "-q", "tests/data.yaml")
    assert len([line for line in named.stdout.splitlines() if "::" in line]) == 4, named.stdout
    # -k and -m from tags select through pytest's own machinery
    k = pytest_run(project, "--collect-only", "-q", "specs", "-k", "fine or known")
    assert [line for line in k.stdout.splitlines() if "::" in line] == ["specs/cases.yaml::fine",
                                                                     "specs/cases.yaml::known_bug"]
    m = pytest_run(project, "--collect-only", "-q", "specs", "-m", "fragile")
    assert [line for line in m.stdout.splitlines() if "::" in line] == ["specs/cases.yaml::broken"]


def test_bad_spec_is_a_one_line_collection_error(project: Path) -> None:
    (project / "specs" / "bad.yaml").write_text("cases:\n  - name: x\n    kind: script\n    args: {scrpt: ok.py}\n")
    r = pytest_run(project, "--collect-only", "-q", "specs/bad.yaml")
    assert r.returncode != 0
    assert "error: specs/bad.yaml:4" in r.stdout and "scrpt" in r.stdout, r.stdout
    assert "Traceback" not in r.stdout


@pytest.mark.slow
def test_verdicts_map_to_pytest_outcomes_and_junit(project: Path) -> None:
    junit = project / "junit.xml"
    r = pytest_run(project, "specs", "-rA", f"--junitxml={junit}", "--runner-results-dir", str(project / "res"))
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed" in out, out
    assert "ERROR: rank 0" in out or "ERROR:" in out
    assert "boom: planted crash" in out            # the failing rank's log tail
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"fine", "broken", "known_bug", "not_here"}
    assert cases["broken"].find("failure") is not None
    assert cases["not_here"].find("skipped") is not None and cases["fine"].find("failure") is None
    # the runner's results dir holds the launches, as for `runner run`
    assert list((project / "res").glob("broken-*/main/logs/*.log"))
    # and the history has every case that ran, with its verdict, as `runner run` records it
    runs = {r.case_name: r for r in HistoryStore(project / ".runner" / "history.sqlite")}
    assert {n: r.verdict for n, r in runs.items()} == {"fine": "PASSED", "broken": "ERROR", "known_bug": "XFAIL"}
    assert {r.session for r in runs.values()} == {str(project / "res")}
    shown = subprocess.run([sys.executable, "-m", "runner", "history", "broken"], cwd=project, capture_output=True,
                           text=True, timeout=300)
    assert shown.returncode == 0 and "ERROR" in shown.stdout, shown.stdout + shown.stderr


def test_no_history_option_records_nothing(project: Path) -> None:
    r = pytest_run(project, "specs", "-k", "fine", "--runner-no-history", "--runner-results-dir", str(project / "res"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (project / ".runner" / "history.sqlite").exists()
    elsewhere = project / "h.sqlite"
    r = pytest_run(project, "specs", "-k", "fine", "--runner-history", str(elsewhere),
                   "--runner-results-dir", str(project / "res2"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [x.verdict for x in HistoryStore(elsewhere)] == ["PASSED"]


@pytest.mark.slow
def test_pytest_runs_the_project_examples() -> None:
    r = pytest_run(REPO, "specs/examples/", "-q", "-k", "1ranks", "--runner-no-history", "--runner-results-dir",
                   str(Path(os.environ.get("TMPDIR", "/tmp")) / f"runner-pytest-examples-{os.getpid()}"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"\b1 passed, \d+ deselected\b", r.stdout), r.stdout
