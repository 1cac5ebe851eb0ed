"""The CLI end to end: real `runner` subprocesses, real torchrun, real files."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


WORKER = '''
import os, sys, time, json
import torch.distributed as dist
mode = sys.argv[1]
dist.init_process_group("gloo")
rank = dist.get_rank()
if mode == "sleep":
    time.sleep(300)
if mode == "raise" and rank == 1:
    raise ValueError("boom on purpose")
if mode == "exit3" and rank == 0:
    os._exit(3)
dist.barrier()
dist.destroy_process_group()
'''


def _env_pids(needle: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                env = (p / "environ").read_bytes()
            except OSError:
                continue
            if needle.encode() in env:
                out.append(int(p.name))
    return out


def _own_pids(project) -> list[int]:
    """The processes of this test's launches only (other test runs on the machine use the
    same case ids): the spec gives them RUNNER_TEST_PROJECT=<this project's folder>."""
    return _env_pids(f"RUNNER_TEST_PROJECT={project.path}\0")


@pytest.fixture
def project(runner_project):
    runner_project.write("specs/w.py", WORKER)
    return runner_project


def spec(project, body: str, name: str = "specs/s.yaml") -> None:
    project.write(name, body)


def test_help_is_fast_and_torch_free(project):
    """What makes list/validate/--dry-run/--help fast is what they do not import (torch takes
    seconds); asserted by module, not by wall time, so a busy machine cannot fail it."""
    code = ("import sys, runner.cli as c; c.main(['list', 'specs']); c.main(['validate', 'specs']);"
            "c.main(['run', 'specs', '--dry-run']);"
            "assert 'torch' not in sys.modules, 'torch imported'; print('TORCH-FREE')")
    spec(project, """
        cases:
          - {name: a, kind: script, args: {script: w.py, argv: [ok], golden: false}, resources: {nproc_per_node: 2}}
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=project.path, capture_output=True, text=True)
    assert "TORCH-FREE" in out.stdout, out.stderr
    code = ("import sys, runner.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'deepdiff', 'jsonschema') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "run" in r.stdout and "HEAVY []" in r.stdout, (r.stdout, r.stderr)


def test_validate_misspelled_key_exit_4(project):
    spec(project, """
        cases:
          - name: a
            kind: script
            args: {script: w.py}
            resorces: {nodes: 1}
    """)
    r = project.run("validate", "specs")
    assert r.exit_code == 4, r
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in r.stderr
    assert "specs/s.yaml:5:5" in line and "did you mean 'resources'" in line


def test_dry_run_prints_and_starts_nothing(project):
    spec(project, """
        cases:
          - {name: a, kind: script, args: {script: w.py, argv: [ok], golden: false}, resources: {nodes: 2, nproc_per_node: 2}}
    """)
    r = project.run("run", "specs", "--dry-run")
    assert r.exit_code == 0, r
    assert r.stdout.count("-m backends.local.torchrun") == 2   # two simulated nodes (torchrun agents)
    assert "--nnodes 2 --nproc-per-node 2" in r.stdout and "runner.worker" in r.stdout
    assert not (project.path / "results").exists()


def test_pass_error_and_nothing_collected(project):
    spec(project, """
        defaults: {kind: script, resources: {nproc_per_node: 2}, timeout: 120}
        cases:
          - {name: ok, args: {script: w.py, argv: [ok], golden: false}}
          - {name: raises, args: {script: w.py, argv: [raise], golden: false}}
          - {name: exits, args: {script: w.py, argv: [exit3], golden: false}}
          - {name: two_nodes, args: {script: w.py, argv: [ok], golden: false}, resources: {nodes: 2, nproc_per_node: 1}}
          - {name: expected_failure, args: {script: w.py, argv: [raise], golden: false}, xfail: known bug}
    """)
    r = project.run("run", "specs", "--junit-xml", str(project.path / "j.xml"))
    assert r.exit_code == 1, r
    v = r.verdicts
    assert v == {"ok": "PASSED", "raises": "ERROR", "exits": "ERROR", "two_nodes": "PASSED",
                 "expected_failure": "XFAIL"}, r
    raises = r.case("raises")
    assert "rank 1" in raises["detail"] and "ValueError: boom on purpose" in raises["detail"]
    assert "rank 0 exited with code 3" in r.case("exits")["detail"]
    assert "verdict" in r.stdout and "ERROR" in r.stdout    # the table
    junit = (project.path / "j.xml").read_text()
    assert 'errors="2"' in junit and "boom on purpose" in junit
    none = project.run("run", "specs", "-k", "nomatch")
    assert none.exit_code == 5


@pytest.mark.slow
def test_timeout_kills_everything(project):
    spec(project, """
        cases:
          - {name: sleeper, kind: script, timeout: 4, resources: {nproc_per_node: 2},
             args: {script: w.py, argv: [sleep], golden: false}, env: {RUNNER_TEST_PROJECT: "{project}"}}
    """.replace("{project}", str(project.path)))
    t0 = time.monotonic()
    r = project.run("run", "specs", "--backend-opt", "grace=3")
    took = time.monotonic() - t0
    assert r.exit_code == 1, r
    assert r.verdicts == {"sleeper": "TIMEOUT"}
    assert took < 4 + 10 + 5, took   # + interpreter start and the report
    assert "time limit" in r.case("sleeper")["detail"]
    time.sleep(0.5)
    assert _own_pids(project) == []


@pytest.mark.slow
def test_ctrl_c_stops_processes_and_prints_table(project):
    spec(project, """
        cases:
          - {name: sleeper, kind: script, timeout: 300, resources: {nproc_per_node: 2},
             args: {script: w.py, argv: [sleep], golden: false}, env: {RUNNER_TEST_PROJECT: "{project}"}}
    """.replace("{project}", str(project.path)))
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", "specs", "--results-dir",
                             str(project.path / "results"), "--backend-opt", "grace=3"],
                            cwd=project.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(_own_pids(project)) >= 4:   # 1 agent + 2 workers + ...
            break
        time.sleep(0.3)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert "INTERRUPTED" in out and "verdict" in out
    time.sleep(0.5)
    assert _own_pids(project) == []


def test_usage_errors(project, tmp_path):
    spec(project, """
        cases:
          - {name: a, kind: script, args: {script: w.py, argv: [ok], golden: false}}
    """)
    r = project.run("run", "specs", "--backend", "slurmm")
    assert r.exit_code == 4 and "unknown backend 'slurmm'" in r.stderr and "did you mean 'slurm'" in r.stderr
    r = project.run("run", "specs", "--backend-opt", "gracee=1")
    assert r.exit_code == 4 and "unknown option 'gracee'" in r.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    r = project.run("run", "specs", "--results-dir", str(ro / "file" / "sub"))
    assert r.exit_code == 4 and "not writable" in r.stderr
    r = project.run("run", "nope/")
    assert r.exit_code == 4 and "nope/: no such file" in r.stderr
    for res in (r,):
        assert "Traceback" not in res.stderr


def test_show_renders_launches(project):
    spec(project, """
        cases:
          - {name: a, kind: script, args: {script: w.py, argv: [ok], golden: false}, resources: {nproc_per_node: 3}}
    """)
    r = project.run("show", "a")
    assert r.exit_code == 0, r
    assert '"nproc_per_node": 3' in r.stdout and "--nproc-per-node 3" in r.stdout
    r = project.run("show", "b")
    assert r.exit_code == 4 and "no case 'b'" in r.stderr
