"""A pytest plugin for testing specs and runner plugins (like pytest's ``pytester``).

The ``runner_project`` fixture gives a scratch project directory and runs the real CLI in a
subprocess there::

    def test_my_backend(runner_project):
        runner_project.write("specs/a.yaml", '''
            cases:
              - name: hello
                kind: script
                args: {script: hello.py, golden: false}
        ''')
        runner_project.write("specs/hello.py", "print('hi')")
        result = runner_project.run("run", "specs", "--backend", "mine")
        assert result.exit_code == 0
        assert result.verdicts == {"hello": "PASSED"}

Registered through the ``pytest11`` entry point, so any project with this package installed
has the fixture — and the spec-file collector of ``runner.pytest_plugin`` (``pytest specs/``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: spec files as pytest items come with this plugin
pytest_plugins = ["runner.pytest_plugin"]


@dataclass
class RunResult:
    exit_code: int
    stdout: str
    stderr: str
    report: dict[str, Any] | None = None
    args: list[str] = field(default_factory=list)

    @property
    def verdicts(self) -> dict[str, str]:
        """Case name -> verdict from the JSON report (``run`` adds ``--json`` by itself)."""
        if not self.report:
            return {}
        return {c["name"]: c["verdict"] for c in self.report["cases"]}

    def case(self, name: str) -> dict[str, Any]:
        assert self.report, f"no JSON report; stderr:\n{self.stderr}"
        for c in self.report["cases"]:
            if c["name"] == name:
                return c
        raise KeyError(f"no case {name!r} in the report: {list(self.verdicts)}")

    def __str__(self) -> str:
        return f"exit {self.exit_code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class RunnerProject:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.env: dict[str, str] = {}

    def write(self, relpath: str, text: str) -> Path:
        p = self.path / relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"))
        return p

    def run(self, *args: str, timeout: float = 600, json_report: bool = True, env: dict[str, str] | None = None,
            python_path: list[str] | None = None) -> RunResult:
        argv = [str(a) for a in args]
        report_path = None
        if json_report and argv and argv[0] in ("run", "golden") and "--json" not in argv and "--dry-run" not in argv:
            report_path = self.path / f".report-{len(list(self.path.glob('.report-*')))}.json"
            argv += ["--json", str(report_path)]
        if argv and argv[0] in ("run", "golden") and "--results-dir" not in argv and "--dry-run" not in argv:
            argv += ["--results-dir", str(self.path / "results")]
        full_env = dict(os.environ)
        full_env.update(self.env)
        full_env.update(env or {})
        if python_path:
            full_env["PYTHONPATH"] = os.pathsep.join(python_path + [full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        proc = subprocess.run([sys.executable, "-m", "runner", *argv], cwd=self.path, env=full_env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        report = None
        if report_path and report_path.is_file():
            report = json.loads(report_path.read_text())
        return RunResult(proc.returncode, proc.stdout, proc.stderr, report, argv)


@pytest.fixture
def runner_project(tmp_path: Path) -> RunnerProject:
    """A scratch project directory with a ``run(...)`` that calls the real ``runner`` CLI."""
    return RunnerProject(tmp_path)
