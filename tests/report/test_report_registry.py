"""Reporters are a registry: the built-ins are plugins with their own options."""
from __future__ import annotations

import pytest

SPEC = """
cases:
  - name: sleepy
    kind: script
    resources: {nproc_per_node: 1}
    args: {script: sleepy.py, golden: false}
"""
SLEEPY = "import time\ntime.sleep(2)\nprint('done')\n"


def test_builtin_reporters_are_listed_and_blockable(runner_project) -> None:
    listed = runner_project.run("plugins")
    assert listed.exit_code == 0, listed
    for ident in ("terminal", "json", "junit", "html", "history"):
        assert any(line.split()[:2] == [ident, "reporter"] for line in listed.stdout.splitlines()), listed.stdout
    runner_project.write("specs/s.yaml", SPEC)
    runner_project.write("specs/sleepy.py", SLEEPY)
    blocked = runner_project.run("run", "specs", "--html", "x.html", "-p", "no:html", json_report=False)
    assert blocked.exit_code == 4 and "unrecognized arguments: --html" in blocked.stderr, blocked


def test_html_without_matplotlib_says_what_to_install(runner_project) -> None:
    runner_project.write("specs/s.yaml", SPEC)
    runner_project.write("specs/sleepy.py", SLEEPY)
    # a planted missing dependency: this matplotlib cannot be imported
    runner_project.write("shadow/matplotlib/__init__.py", "raise ImportError('No module named matplotlib')\n")
    r = runner_project.run("run", "specs", "--html", "r.html", python_path=[str(runner_project.path / "shadow")])
    assert r.exit_code == 4, r
    assert "--html needs matplotlib, which is not installed: pip install 'dist-spec-runner[html]'" in r.stderr
    assert "Traceback" not in r.stderr and not (runner_project.path / "results").exists()


@pytest.mark.slow
def test_live_progress_and_plain_lines(runner_project) -> None:
    runner_project.write("specs/s.yaml", SPEC)
    runner_project.write("specs/sleepy.py", SLEEPY)
    live = runner_project.run("run", "specs", "--progress", "live", "--no-history")
    assert live.exit_code == 0, live
    assert "RUNNING" in live.stdout and "1 running" in live.stdout, live.stdout   # the live status of the case
    assert "\x1b[" in live.stdout and "== 1 passed" in live.stdout
    plain = runner_project.run("run", "specs", "--no-history", env={"CI": "true"})
    assert plain.exit_code == 0, plain
    assert "\x1b[" not in plain.stdout and "RUNNING" not in plain.stdout
    assert "PASSED   specs/s.yaml::sleepy" in plain.stdout and "== 1 passed" in plain.stdout
