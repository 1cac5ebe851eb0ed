"""End to end against a real Slurm: munge, slurmctld and two slurmd nodes on this host.

The behaviour tests drive the real runner CLI in a subprocess (``python -m runner run SPEC
--backend slurm``) with the ``script`` kind running small torch.distributed scripts under
srun + torchrun across the nodes n1 and n2: a passing 2-node case, a time limit, a cancel
from outside (INFRA, retried), a dead node (INFRA), Ctrl-C, hostile case names. A few
backend-level tests talk to the cluster directly: hostile strings in every field of a
Launch, ``sbatch --test-only`` on rendered scripts, the scontrol/sacct status fallbacks.
Time limits are short; after each test no job and no job process may be left running.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from backends.slurm.backend import SlurmBackend
from backends.slurm.status import parse_scontrol_jobs, parse_squeue_json
from runner.run.backend import Handle, job_name
from runner.records import Launch, Outcome

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

ROOT = Path(__file__).resolve().parents[2]

ALLREDUCE = '''
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
assert t.item() == world * (world + 1) / 2, t
out = os.path.join(os.environ["RUNNER_RESULTS_DIR"], "nodes")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, f"rank{rank}"), "w") as fh:
    fh.write(os.environ.get("SLURMD_NODENAME", "?") + " " + os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
dist.barrier()
dist.destroy_process_group()
'''

# Initialises the group, says it started, then sleeps; exits at once when the file named by
# its first argument exists (so a retried attempt is quick).
SLEEPER = '''
import os, sys, time, torch.distributed as dist
if len(sys.argv) > 1 and os.path.exists(sys.argv[1]):
    sys.exit(0)
dist.init_process_group("gloo")
rank = dist.get_rank()
open(os.path.join(os.environ["RUNNER_RESULTS_DIR"], f"started-rank{rank}"), "w").close()
time.sleep(600)
'''


def write_suite(tmp_path: Path, cases: str, defaults: str = "") -> Path:
    (tmp_path / "allreduce.py").write_text(ALLREDUCE)
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    spec = tmp_path / "suite.yaml"
    spec.write_text(textwrap.dedent(f"""\
        defaults:
          kind: script
          timeout: 60
          resources: {{nodes: 2, nproc_per_node: 1}}
        {textwrap.indent(textwrap.dedent(defaults), '  ').strip()}
        cases:
        """) + textwrap.indent(textwrap.dedent(cases), "  "))
    return spec


def runner_argv(spec: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "runner", "run", str(spec), "--backend", "slurm",
            "--results-dir", str(tmp_path / "results"), "--json", str(tmp_path / "r.json"), *extra]


def runner_env(cluster: Any) -> dict[str, str]:
    env = cluster.client_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_runner(cluster: Any, spec: Path, tmp_path: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(runner_argv(spec, tmp_path, *extra), env=runner_env(cluster), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def results_by_name(tmp_path: Path) -> dict[str, dict[str, Any]]:
    report = json.loads((tmp_path / "r.json").read_text())
    cases = report["cases"] if isinstance(report, dict) and "cases" in report else report
    return {c["name"]: c for c in cases}


def job_ids_of(results_dir: Path) -> list[str]:
    """Slurm job ids of a launch (and its archived attempts) from the launcher log names."""
    ids = []
    for log in sorted(results_dir.parent.glob(f"{results_dir.name}*/logs/launcher-*.log")):
        ids.append(log.stem.split("-", 1)[1])
    return ids


def squeue_jobs(cluster: Any) -> dict[str, Any]:
    proc = cluster.run("squeue", "--json")
    assert proc.returncode == 0, proc.stderr
    return parse_squeue_json(proc.stdout)


def processes_of_jobs(job_ids: list[str]) -> list[str]:
    """Live processes that belong to these Slurm jobs (SLURM_JOB_ID in their environment)."""
    wanted = {f"SLURM_JOB_ID={j}".encode() for j in job_ids}
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if env & wanted:
            found.append(f"{pid}: {cmd[:120]}")
    return found


def assert_nothing_left(cluster: Any, job_ids: list[str], wait: float = 20.0) -> None:
    assert job_ids, "no Slurm job id found in the results dir"
    deadline = time.monotonic() + wait
    while True:
        jobs = squeue_jobs(cluster)
        active = {j: jobs[j].describe() for j in job_ids if j in jobs and not jobs[j].done}
        procs = processes_of_jobs(job_ids)
        if not active and not procs:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"left running after the runner exited: jobs {active}, processes {procs}")
        time.sleep(0.5)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"runner exited ({proc.returncode}) while waiting for {what}:\n{out}\n{err}")
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def stop_runner(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_two_node_torchrun_case_passes(slurm_cluster: Any, tmp_path: Path) -> None:
    """2 nodes x 2 ranks, gloo all_reduce; with the cluster's fake GPUs the allocation also
    asks for --gpus-per-node=1 (scheduled for real; the ranks stay on CPU without CUDA)."""
    gpus = 1 if slurm_cluster.gpus_per_node else 0
    spec = write_suite(tmp_path, f"""\
        - name: allreduce_2x2
          resources: {{nodes: 2, nproc_per_node: 2, gpus: {gpus}}}
          args: {{script: allreduce.py, metrics: none}}
        """)
    proc = run_runner(slurm_cluster, spec, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    case = results_by_name(tmp_path)["allreduce_2x2"]
    assert case["verdict"] == "PASSED", case
    rd = Path(case["launches"][0]["results_dir"])
    seen = {p.name: p.read_text().split() for p in (rd / "nodes").iterdir()}
    nodes = {rank: node for rank, (node, _) in seen.items()}
    if gpus:
        assert "--gpus-per-node=1" in (rd / "slurm-job.sh").read_text()
        assert all(cvd != "-" and len(cvd.split(",")) == 1 for _, cvd in seen.values()), seen
    # two ranks per node (c10d picks which node gets ranks 0-1)
    assert sorted(nodes.values()) == ["n1", "n1", "n2", "n2"], nodes
    assert nodes["rank0"] == nodes["rank1"] and nodes["rank2"] == nodes["rank3"], nodes
    assert len(list((rd / "done").glob("rank*.json"))) == 4
    assert_nothing_left(slurm_cluster, job_ids_of(rd))


def test_timeout_is_cancelled_and_reported(slurm_cluster: Any, tmp_path: Path) -> None:
    spec = write_suite(tmp_path, """\
        - name: sleeps_too_long
          timeout: 10
          args: {script: sleeper.py, metrics: none}
        """)
    proc = run_runner(slurm_cluster, spec, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    case = results_by_name(tmp_path)["sleeps_too_long"]
    assert case["verdict"] == "TIMEOUT", case
    # the runner cancelled it at the case's limit (its own kill reason, naming the limit) --
    # not Slurm at its --time backstop (10 s + time_margin), which would read "Slurm time limit"
    assert "time limit of 10s reached; job cancelled" in case["detail"], case["detail"]
    (launch,) = case["launches"]
    assert launch["outcome"] == "timeout", launch
    rd = Path(launch["results_dir"])
    ids = job_ids_of(rd)
    # the batch script ran (it prints this line first thing on the head node)
    assert "runner: job" in (rd / "logs" / f"launcher-{ids[0]}.log").read_text()
    assert_nothing_left(slurm_cluster, ids)
    assert squeue_jobs(slurm_cluster)[ids[0]].state == "CANCELLED"


def test_external_scancel_is_infra_and_retried(slurm_cluster: Any, tmp_path: Path) -> None:
    marker = tmp_path / "cancelled-once"
    spec = write_suite(tmp_path, f"""\
        - name: cancelled_retried
          retries: 1
          args: {{script: sleeper.py, argv: ["{marker}"], metrics: none}}
        - name: cancelled_not_retried
          retries: 0
          args: {{script: sleeper.py, metrics: none}}
        """)
    proc = subprocess.Popen(runner_argv(spec, tmp_path), env=runner_env(slurm_cluster), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        results = tmp_path / "results"
        wait_for(lambda: len(list(results.glob("*/main/started-rank*"))) == 4, 60,
                 "both jobs to run on both nodes", proc)
        ids = [log.stem.split("-", 1)[1] for log in results.glob("*/main/logs/launcher-*.log")]
        assert len(ids) == 2
        marker.write_text("the next attempt exits at once")
        cancel = slurm_cluster.run("scancel", *ids)
        assert cancel.returncode == 0, cancel.stderr
        out, err = proc.communicate(timeout=90)
    finally:
        stop_runner(proc)
    assert proc.returncode == 1, out + err
    cases = results_by_name(tmp_path)
    retried, not_retried = cases["cancelled_retried"], cases["cancelled_not_retried"]
    assert not_retried["verdict"] == "INFRA", not_retried
    assert "cancelled outside the runner" in not_retried["detail"]
    assert not_retried["launches"][0]["attempts"] == 1
    assert retried["verdict"] == "PASSED", retried
    assert retried["launches"][0]["attempts"] == 2
    rd = Path(retried["launches"][0]["results_dir"])
    all_ids = job_ids_of(rd) + job_ids_of(Path(not_retried["launches"][0]["results_dir"]))
    assert len(all_ids) == 3          # two cancelled jobs and the retry
    assert_nothing_left(slurm_cluster, all_ids)


def test_node_down_is_infra(slurm_cluster: Any, tmp_path: Path) -> None:
    spec = write_suite(tmp_path, """\
        - name: loses_node_n2
          args: {script: sleeper.py, metrics: none}
        """)
    proc = subprocess.Popen(runner_argv(spec, tmp_path), env=runner_env(slurm_cluster), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        results = tmp_path / "results"
        wait_for(lambda: len(list(results.glob("*/main/started-rank*"))) == 2, 60,
                 "the job to run on both nodes", proc)
        slurm_cluster.stop_node("n2")
        out, err = proc.communicate(timeout=90)
    finally:
        stop_runner(proc)
        slurm_cluster.start_node("n2")
    assert proc.returncode == 1, out + err
    case = results_by_name(tmp_path)["loses_node_n2"]
    assert case["verdict"] == "INFRA", case
    assert "n2" in case["detail"], case["detail"]
    assert_nothing_left(slurm_cluster, job_ids_of(Path(case["launches"][0]["results_dir"])))


HOSTILE = ['x"; touch PWNED; echo "', "$(touch PWNED)"]


def test_hostile_case_names_through_the_cli(slurm_cluster: Any, tmp_path: Path) -> None:
    cases = "".join(textwrap.dedent(f"""\
        - name: {json.dumps(name)}
          resources: {{nodes: 1, nproc_per_node: 1}}
          env: {{HOSTILE: {json.dumps(name)}}}
          args: {{script: allreduce.py, metrics: none}}
        """) for name in HOSTILE)
    spec = write_suite(tmp_path, cases)
    proc = run_runner(slurm_cluster, spec, tmp_path)
    pwned = [p for p in (tmp_path, ROOT, Path.cwd()) if (p / "PWNED").exists()]
    pwned += list(tmp_path.rglob("PWNED"))
    assert not pwned, f"a case name ran a command: {pwned}"
    if proc.returncode == 4:      # rejected cleanly by the spec loader: one line, no traceback
        assert "Traceback" not in proc.stderr and "name" in proc.stderr, proc.stderr
        assert "malformed YAML" not in proc.stderr, proc.stderr   # the test's own spec is valid
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases_by_name = results_by_name(tmp_path)
    assert sorted(cases_by_name) == sorted(HOSTILE)
    assert all(c["verdict"] == "PASSED" for c in cases_by_name.values()), cases_by_name


def test_hostile_names_at_the_backend_level(slurm_cluster: Any, slurm_env: dict[str, str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Case id, results dir and env all hostile, submitted straight through the backend."""
    name = 'x"; touch PWNED; echo "$(touch PWNED)`touch PWNED`'
    (tmp_path / "allreduce.py").write_text(ALLREDUCE)
    case_id = f"{tmp_path}/suite.yaml::{name}"
    rd = tmp_path / "results" / name / "main"
    rd.mkdir(parents=True)
    launch = Launch(case_id=case_id, name="main", kind="script", entry="runner.kinds.script_worker:run",
                    args={"script": str(tmp_path / "allreduce.py"), "argv": []}, nodes=1, nproc_per_node=2,
                    gpus_per_node=0, env={"RUNNER_CASE_ID": case_id, "HOSTILE": name}, timeout=60,
                    results_dir=str(rd), job_name=job_name(case_id, "main"))
    (rd / "launch.json").write_text(json.dumps(launch.to_json()))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    backend = SlurmBackend({})
    handle = backend.submit(launch)
    deadline = time.monotonic() + 60
    while not backend.poll([handle])[handle.id].done:
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.5)
    outcome = backend.collect(handle)
    assert not list(tmp_path.rglob("PWNED")) and not (ROOT / "PWNED").exists()
    assert outcome.outcome is Outcome.COMPLETED, (outcome.detail, outcome.log_tail)
    assert (rd / "logs" / f"launcher-{handle.id}.log").is_file()


def test_ctrl_c_cancels_the_job(slurm_cluster: Any, tmp_path: Path) -> None:
    spec = write_suite(tmp_path, """\
        - name: interrupted
          args: {script: sleeper.py, metrics: none}
        """)
    proc = subprocess.Popen(runner_argv(spec, tmp_path), env=runner_env(slurm_cluster), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        results = tmp_path / "results"
        wait_for(lambda: len(list(results.glob("*/main/started-rank*"))) == 2, 60,
                 "the job to run on both nodes", proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        stop_runner(proc)
    assert proc.returncode == 2, out + err
    (rd,) = list(results.glob("*/main"))
    ids = job_ids_of(rd)
    assert_nothing_left(slurm_cluster, ids)
    assert squeue_jobs(slurm_cluster)[ids[0]].state == "CANCELLED"


def test_rendered_scripts_are_accepted_by_sbatch(slurm_cluster: Any, slurm_env: dict[str, str], tmp_path: Path) -> None:
    """``sbatch --test-only`` parses every #SBATCH line of what --dry-run would print and
    checks the request against the real cluster, without submitting anything."""
    gpus = min(2, slurm_cluster.gpus_per_node)
    backend = SlurmBackend({"partition": "debug", "extra_sbatch": "--exclusive --comment='two words'",
                            "time_margin": "30"})
    name = 'x"; touch PWNED; echo "$(touch PWNED)'
    for case_name, nodes, nproc, rd in (("plain", 2, 4, tmp_path / "plain" / "main"),
                                        (name, 2, 1, tmp_path / name / "main"),
                                        ("gpus", 2, 2, tmp_path / "100%" / "main")):
        case_id = f"suite.yaml::{case_name}"
        launch = Launch(case_id=case_id, name="main", kind="script", entry="x:y", args={}, nodes=nodes,
                        nproc_per_node=nproc, gpus_per_node=gpus if case_name == "gpus" else 0,
                        env={"RUNNER_CASE_ID": case_id}, timeout=90, results_dir=str(rd),
                        job_name=job_name(case_id, "main"))
        rd.mkdir(parents=True)
        script = rd / "job.sh"
        script.write_text(backend.render(launch).text)
        before = set(squeue_jobs(slurm_cluster))
        proc = slurm_cluster.run("sbatch", "--test-only", str(script))
        assert proc.returncode == 0, (case_name, proc.stderr)
        assert "to start at" in proc.stderr, proc.stderr
        assert set(squeue_jobs(slurm_cluster)) == before     # nothing submitted
    bad = SlurmBackend({"partition": "no_such_partition"})
    script = tmp_path / "bad.sh"
    script.write_text(bad.render(launch).text)
    proc = slurm_cluster.run("sbatch", "--test-only", str(script))
    assert proc.returncode != 0 and "partition" in proc.stderr.lower()
    assert not list(tmp_path.rglob("PWNED"))


def test_status_fallbacks_scontrol_sacct_and_lost_jobs(slurm_cluster: Any, slurm_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    """scontrol and sacct (no accounting database here: 'sacct -c' reads the jobcomp file)
    agree with squeue on a finished job; an id no source knows is reported lost (INFRA)."""
    proc = slurm_cluster.run("sbatch", "--parsable", "--wait", "-o", str(tmp_path / "exit3.log"),
                             "--wrap", "exit 3", timeout=60)
    job = proc.stdout.strip().split(";")[0]
    assert job.isdigit(), proc.stdout + proc.stderr
    backend = SlurmBackend({})
    via_squeue = backend.query([job])[job]
    scontrol = parse_scontrol_jobs(slurm_cluster.run("scontrol", "-o", "show", "job", job).stdout)[job]
    via_sacct = backend._sacct([job])[job]
    assert backend._sacct_mode == "jobcomp"          # plain sacct said accounting is disabled
    for info in (via_squeue, scontrol, via_sacct):
        assert (info.state, info.exit_code, info.done) == ("FAILED", 3, True), info

    launch = Launch(case_id="suite.yaml::lost", name="main", kind="script", entry="x:y", args={}, nodes=1,
                    nproc_per_node=1, gpus_per_node=0, env={}, timeout=60, results_dir=str(tmp_path / "lost"),
                    job_name="lost-main")
    handle = Handle(id="987654", launch=launch, submitted_at=time.time() - 3600)
    first = backend.poll([handle])["987654"]
    assert not first.done                            # absence alone is not yet final
    handle.state.missing_since -= 3600
    state = backend.poll([handle])["987654"]
    assert state.done and state.state == "UNKNOWN"
    outcome = backend.collect(handle)
    assert outcome.outcome is Outcome.INFRA and "lost" in outcome.detail
