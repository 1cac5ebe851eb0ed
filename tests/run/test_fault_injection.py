"""Fault injection on the real runner, torchrun and gloo: every fault ends in the right verdict and
exit code, and leaves no process behind.

Leftovers are counted per launch token: each local launch records its token under
``<results root>/.runner/local/``, and every process of that launch (agents, workers, whatever
they start) carries it in its environment. Processes of other runs on the machine are never
counted nor touched.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends.local import ownership, proctree

# the Kubernetes stand-in cluster's fixture and helpers live with the backend's tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
try:   # the Kubernetes stand-in cluster (a real API server and kubelet on this machine)
    import test_kubernetes_standin as k8s
    from test_kubernetes_standin import cluster  # noqa: F401 - the fixture
except pytest.skip.Exception:
    k8s = None

FAULTS = '''
import os, signal, sys, time
import torch.distributed as dist
mode = sys.argv[1]
dist.init_process_group("gloo")
rank = dist.get_rank()
if mode == "raise" and rank == 1:
    raise RuntimeError("planted failure")
if mode == "exit" and rank == 1:
    os._exit(7)
if mode == "segv" and rank == 1:
    os.kill(os.getpid(), signal.SIGSEGV)
if mode == "hang" and rank == 0:
    time.sleep(600)          # rank 1 waits in the barrier below: a hang in a collective
if mode == "sleep":
    open(os.path.join(os.environ["RUNNER_RESULTS_DIR"], f"started{rank}"), "w").close()
    time.sleep(600)
dist.barrier()
dist.destroy_process_group()
'''

pytestmark = pytest.mark.slow


def leftovers(results_root: Path) -> list[int]:
    """Live processes of this results root's launches (by launch token)."""
    pids: list[int] = []
    for rec in ownership.read_records(results_root):
        pids += [p for p in proctree.processes_with_token(rec.token) if proctree.is_alive(p)]
    return pids


def wait_no_leftovers(results_root: Path, within: float = 15.0) -> list[int]:
    deadline = time.monotonic() + within
    while (left := leftovers(results_root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture
def project(runner_project):
    runner_project.write("specs/faults.py", FAULTS)
    return runner_project


def spec(project, cases: str, timeout: int = 300) -> None:
    project.write("specs/s.yaml", f"""
defaults: {{kind: script, timeout: {timeout}, resources: {{nproc_per_node: 2}}}}
cases:
{cases}
""")


def case_line(name: str, mode: str) -> str:
    return f"  - {{name: {name}, args: {{script: faults.py, argv: [{mode}], metrics: none}}}}"


def start(project, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner", "run", "specs", "--results-dir",
                             str(project.path / "results"), "--backend-opt", "grace=3", *extra],
                            cwd=project.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def wait_started(project, ranks: int = 2, within: float = 180.0) -> Path:
    """Until every rank of the (single) sleeping case is inside the script."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        marks = list((project.path / "results").glob("*/main/started*"))
        if len(marks) >= ranks:
            return marks[0].parent
        time.sleep(0.2)
    raise AssertionError("the ranks did not start in time")


def test_rank_raise_exit_and_segfault(project):
    spec(project, "\n".join([case_line("raises", "raise"), case_line("exits", "exit"), case_line("segv", "segv")]))
    r = project.run("run", "specs", "--backend-opt", "grace=3")
    assert r.exit_code == 1, r
    assert r.verdicts == {"raises": "ERROR", "exits": "ERROR", "segv": "ERROR"}, r
    assert "rank 1: RuntimeError: planted failure" in r.case("raises")["detail"]
    assert "rank 1 exited with code 7" in r.case("exits")["detail"]
    assert "rank 1 was killed by SIGSEGV" in r.case("segv")["detail"], r.case("segv")
    assert len(ownership.read_records(project.path / "results")) == 3
    assert wait_no_leftovers(project.path / "results", within=2) == []
    for name in ("raises", "exits", "segv"):
        print(f"{name}: {r.case(name)['verdict']} in {r.case(name)['duration']:.1f}s, leftovers 0")


def test_hang_in_a_collective_times_out_within_limit_plus_10s(project):
    limit = 30
    spec(project, case_line("hangs", "hang"), timeout=limit)
    r = project.run("run", "specs", "--backend-opt", "grace=3")
    assert r.exit_code == 1, r
    assert r.verdicts == {"hangs": "TIMEOUT"}, r
    took = r.case("hangs")["duration"]
    # the runner's own clock, from submission; includes interpreter and rendezvous start-up
    assert took < limit + 10, took
    assert wait_no_leftovers(project.path / "results", within=2) == []
    print(f"hang: TIMEOUT in {took:.1f}s (limit {limit}s), leftovers 0")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_sigterm_of_the_runner(project, sig):
    spec(project, case_line("sleeper", "sleep"))
    proc = start(project)
    wait_started(project)
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 2, (out, err)
    assert "INTERRUPTED" in out and "verdict" in out, out       # the table is printed
    assert leftovers(project.path / "results") == []            # nothing left once the runner is gone
    print(f"{sig.name}: INTERRUPTED, exit 2, {took:.1f}s after the signal, leftovers 0")


def test_sigkill_of_the_runner_takes_everything_with_it(project):
    spec(project, case_line("sleeper", "sleep"))
    proc = start(project)
    rdir = wait_started(project)
    assert len(leftovers(project.path / "results")) >= 3       # an agent and two workers
    t0 = time.monotonic()
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    left = wait_no_leftovers(project.path / "results", within=15)
    took = time.monotonic() - t0
    assert left == [], left
    # the next run on the same root takes the dead runner's lock over and reuses the root
    spec(project, case_line("ok", "ok"))
    r = project.run("run", "specs", "--backend-opt", "grace=3")
    assert r.exit_code == 0, r
    assert r.verdicts == {"ok": "PASSED"}
    assert rdir.exists()   # the killed run's case folder was not removed (moved aside at most)
    print(f"SIGKILL: all processes gone {took:.1f}s after the kill, leftovers 0")


def test_two_runs_on_one_results_dir(project):
    spec(project, case_line("sleeper", "sleep"))
    first = start(project)
    rdir = wait_started(project)
    second = project.run("run", "specs")
    assert second.exit_code == 4, second
    assert f"in use by another runner (PID {first.pid})" in second.stderr, second
    assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    assert rdir.is_dir() and len(list(rdir.glob("started*"))) == 2   # the live folder untouched
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 2, (out, err)
    assert leftovers(project.path / "results") == []
    print("two runs: the second exits 4 naming the first's PID; first INTERRUPTED, leftovers 0")


def test_startup_sweep_ends_a_dead_runs_leftovers_only(project, tmp_path):
    root = project.path / "results"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                    # a PID that no longer runs: the "dead runner"
    orphans = {}
    for owner, name in ((dead.pid, "orphan"), (os.getpid(), "alive")):
        token = f"{name}-{os.getpid()}-{time.time_ns()}"
        env = dict(os.environ, **{proctree.TOKEN_VAR: token})
        orphans[name] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env)
        ownership.write_record(root, ownership.LaunchRecord(token, owner, ownership.start_time(owner),
                                                            f"specs/s.yaml::{name}", str(root / name)))
    try:
        spec(project, case_line("ok", "ok"))
        r = project.run("run", "specs")
        assert r.exit_code == 0, r
        assert "ended 1 leftover process of specs/s.yaml::orphan" in r.stderr, r
        assert orphans["orphan"].wait(timeout=10) == -signal.SIGKILL
        assert orphans["alive"].poll() is None      # a live owner's launch is never touched
    finally:
        for p in orphans.values():
            p.kill()
            p.wait()


def test_internal_error_stops_everything_prints_table_exits_3(project):
    project.write("plug/explode.py", """
        from runner.hookspecs import hookimpl

        @hookimpl
        def runner_launch_started(launch, attempt):
            import os, time
            # wait until the ranks run, then fail inside the scheduler
            while not os.path.exists(os.path.join(launch.results_dir, "started1")):
                time.sleep(0.1)
            raise RuntimeError("planted scheduler failure")
    """)
    spec(project, case_line("sleeper", "sleep"))
    r = project.run("run", "specs", "-p", "explode", "--backend-opt", "grace=3",
                    python_path=[str(project.path / "plug")])
    assert r.exit_code == 3, r
    assert "verdict" in r.stdout and "INTERRUPTED" in r.stdout, r      # the table, after cleanup
    assert "RuntimeError: planted scheduler failure" in r.stderr and "internal error" in r.stderr
    assert leftovers(project.path / "results") == []


def test_a_file_where_a_case_folder_goes_is_that_cases_error(project):
    spec(project, "\n".join([case_line("blocked", "ok"), case_line("fine", "ok")]))
    from runner.plugins import PluginManager
    from runner.run.session import case_dir_name
    from runner.spec.loader import SpecLoader

    pm = PluginManager()
    pm.load()
    cases = SpecLoader(pm, "cpu", root=project.path).load_paths([str(project.path / "specs/s.yaml")])
    blocked = next(c for c in cases if c.name == "blocked")
    (project.path / "results").mkdir()
    (project.path / "results" / case_dir_name(blocked)).write_text("in the way")
    r = project.run("run", "specs")
    assert r.exit_code == 1, r
    assert r.verdicts == {"blocked": "ERROR", "fine": "PASSED"}, r
    assert "cannot prepare the launch" in r.case("blocked")["detail"]
    assert "Traceback" not in r.stderr


def test_oversubscription_warns(project):
    project.write("specs/s.yaml", """
        cases:
          - {name: wide, kind: script, resources: {nproc_per_node: 3}, args: {script: faults.py, argv: [ok], metrics: none}}
    """)
    r = project.run("run", "specs", "--backend-opt", "cpus=2")
    assert r.exit_code == 0, r
    assert "warning: specs/s.yaml::wide starts 3 processes on 2 CPU slots: oversubscribed" in r.stderr
    assert json.dumps(r.verdicts) == '{"wide": "PASSED"}'


@pytest.mark.slurm
def test_slurm_sweep_cancels_a_dead_runs_jobs_only(slurm_cluster, slurm_env, tmp_path):
    """Jobs carry the results root's tag and their runner in the job comment; a later run of the
    same root scancels those of a dead runner, and leaves other roots' and live runners' jobs."""
    from backends.slurm.backend import COMMENT_PREFIX, SlurmBackend
    from runner.run.lock import owner_tag, root_tag

    root = tmp_path / "results"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    comments = {
        "orphan": f"{COMMENT_PREFIX}{root_tag(root)}:{dead.pid}.1.{socket.gethostname()}",
        "live": f"{COMMENT_PREFIX}{root_tag(root)}:{owner_tag()}",
        "other_root": f"{COMMENT_PREFIX}{root_tag(tmp_path / 'elsewhere')}:{dead.pid}.1.{socket.gethostname()}",
    }
    jobs = {}
    for name, comment in comments.items():
        proc = slurm_cluster.run("sbatch", "--parsable", f"--comment={comment}", "-o", str(tmp_path / f"{name}.log"),
                                 "--wrap", "sleep 300", timeout=60)
        jobs[name] = proc.stdout.strip().split(";")[0]
        assert jobs[name].isdigit(), proc.stdout + proc.stderr
    try:
        lines = SlurmBackend({}).sweep(root)
        assert len(lines) == 1 and jobs["orphan"] in lines[0], lines
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            queued = slurm_cluster.run("squeue", "--noheader", "--format=%i", timeout=30).stdout.split()
            if jobs["orphan"] not in queued:
                break
            time.sleep(0.5)
        assert jobs["orphan"] not in queued
        assert jobs["live"] in queued and jobs["other_root"] in queued
    finally:
        slurm_cluster.run("scancel", *jobs.values(), timeout=30)


def test_kubernetes_sweep_deletes_a_dead_sessions_objects_of_this_root_only(cluster, tmp_path):
    """Objects carry the results root's label; a later session of the same root deletes those of
    an earlier session (whose runner is gone: the root's lock says so) and nothing else."""
    if k8s is None:
        pytest.skip("the kubernetes client is not installed")
    import dataclasses

    root = tmp_path / "results"
    dead_session = k8s.make_backend(cluster, tmp_path)
    left = dataclasses.replace(k8s.make_launch(tmp_path, "test_kubernetes_standin:sleep_payload", nodes=1,
                                               case="k8s/left"), results_root=str(root))
    other = dataclasses.replace(k8s.make_launch(tmp_path, "test_kubernetes_standin:sleep_payload", nodes=1,
                                                case="k8s/other"), results_root=str(tmp_path / "elsewhere"))
    h_left, h_other = dead_session.submit(left), dead_session.submit(other)
    k8s.wait_for(lambda: cluster.pods_of(h_left.id) and cluster.pods_of(h_other.id), 60)
    lines = k8s.make_backend(cluster, tmp_path).sweep(root)
    assert len(lines) == 1 and h_left.id in lines[0], lines
    k8s.wait_for(lambda: not cluster.pods_of(h_left.id)
                 and ("default", h_left.id) not in cluster.objects["jobs"], 60)
    assert ("default", h_left.id) not in cluster.objects["services"]
    assert ("default", h_other.id) in cluster.objects["jobs"]     # another root: untouched
    dead_session.cancel(h_other, "interrupt")
