"""Warm worker pools: isolation between cases, a crashing / dying / hanging case costs only
itself, ``--no-reuse`` starts fresh ranks per case, and the verdicts are the same either way.

Real torchrun, real gloo, the real CLI; the probe kind is tests/pool_probe.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]

#: case name -> (action, timeout); run in this order (--jobs 1)
SEQUENCE = [
    ("first", "check", 300),
    ("dirty", "dirty", 300),
    ("after_dirty", "check", 300),
    ("destroy", "destroy", 300),
    ("after_destroy", "check", 300),
    ("crash", "crash", 300),
    ("after_crash", "check", 300),
    ("die", "die", 300),
    ("after_die", "check", 300),
    ("hang", "hang", 20),
    ("after_hang", "check", 300),
]
EXPECTED = {"first": "PASSED", "dirty": "PASSED", "after_dirty": "PASSED", "destroy": "PASSED",
            "after_destroy": "PASSED", "crash": "ERROR",
            "after_crash": "PASSED", "die": "ERROR", "after_die": "PASSED", "hang": "TIMEOUT",
            "after_hang": "PASSED"}


def run_cli(tmp_path: Path, spec: Path, *extra: str, name: str = "run") -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / f"{name}.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    proc = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "-p", "pool_probe", "--jobs", "1",
                           "--results-dir", str(tmp_path / name), "--json", str(report), "--platform", "cpu",
                           *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert report.is_file(), proc.stdout + proc.stderr
    return proc, {c["name"]: c for c in json.loads(report.read_text())["cases"]}


def probe_spec(tmp_path: Path, names: list[str] | None = None) -> Path:
    spec = tmp_path / "probe.yaml"
    spec.write_text(json.dumps({
        "defaults": {"kind": "pool_probe", "resources": {"nodes": 1, "nproc_per_node": 2}},
        "cases": [{"name": n, "args": {"action": a}, "timeout": t} for n, a, t in SEQUENCE
                  if names is None or n in names],
    }))
    return spec


def pids(case: dict) -> set[int]:
    return set(case["info"]["pids"])


@pytest.mark.slow
def test_pool_isolates_cases_and_survives_crash_death_and_hang(tmp_path: Path) -> None:
    proc, cases = run_cli(tmp_path, probe_spec(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert {n: c["verdict"] for n, c in cases.items()} == EXPECTED, proc.stdout
    # the case after `dirty` saw a fresh rank's state (its compare checks every fact) ...
    assert cases["after_dirty"]["verdict"] == "PASSED", cases["after_dirty"]["detail"]
    # ... in the same ranks: the pool was reused
    assert pids(cases["first"]) == pids(cases["dirty"]) == pids(cases["after_dirty"])
    # a pool that cannot go on after a case (default group destroyed) ends; the next case,
    # dispatched before that was known, runs again on a fresh pool instead of being blamed
    assert pids(cases["destroy"]) == pids(cases["first"])
    assert pids(cases["after_destroy"]).isdisjoint(pids(cases["destroy"]))
    # each failure cost only its own case; the next one ran in a fresh pool
    assert "rank 1: RuntimeError: planted crash" in cases["crash"]["detail"]
    assert pids(cases["after_crash"]).isdisjoint(pids(cases["after_destroy"]))
    # a rank that died without a record: torchrun's account of it is in the case's launcher log
    die_dir = Path(cases["die"]["launches"][0]["results_dir"])
    assert "exitcode  : 7" in (die_dir / "logs" / "launcher.log").read_text()
    assert pids(cases["after_die"]).isdisjoint(pids(cases["after_crash"]))
    assert "time limit" in cases["hang"]["detail"]
    # a failed case keeps its own logs, including the pool's launcher output of its time
    crash_dir = Path(cases["crash"]["launches"][0]["results_dir"])
    assert "planted crash" in (crash_dir / "logs" / "rank1.log").read_text()
    # nothing of the run is left running
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "run")], capture_output=True, text=True).stdout.split()
    assert not left, left


@pytest.mark.slow
def test_no_reuse_starts_fresh_ranks_per_case_with_the_same_verdicts(tmp_path: Path) -> None:
    # fresh ranks cost a torchrun start each: the sequence up to the first failure and after it
    names = ["first", "dirty", "after_dirty", "crash", "after_crash"]
    proc, cases = run_cli(tmp_path, probe_spec(tmp_path, names), "--no-reuse")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert {n: c["verdict"] for n, c in cases.items()} == {n: EXPECTED[n] for n in names}, proc.stdout
    assert pids(cases["first"]).isdisjoint(pids(cases["dirty"]))
    assert pids(cases["dirty"]).isdisjoint(pids(cases["after_dirty"]))
    assert not (tmp_path / "run" / ".pools").exists()


@pytest.mark.slow
def test_a_pool_that_skipped_the_reset_would_be_caught(tmp_path: Path, monkeypatch) -> None:
    """Negative control for the isolation check: with the pool's state reset planted away
    (RUNNER_POOL_SKIP_RESET=1, for this test only), the case after `dirty` must FAIL."""
    spec = tmp_path / "probe.yaml"
    spec.write_text(json.dumps({
        "defaults": {"kind": "pool_probe", "resources": {"nodes": 1, "nproc_per_node": 2}, "timeout": 300},
        "cases": [{"name": "dirty", "args": {"action": "dirty"}}, {"name": "after", "args": {"action": "check"}}],
    }))
    monkeypatch.setenv("RUNNER_POOL_SKIP_RESET", "1")
    proc, cases = run_cli(tmp_path, spec)
    assert cases["dirty"]["verdict"] == "PASSED", proc.stdout
    assert cases["after"]["verdict"] == "FAILED", proc.stdout
    for fact in ("torch_rng_fresh", "deterministic", "default_dtype", "leak_var", "cwd"):
        assert fact in cases["after"]["detail"], cases["after"]["detail"]
