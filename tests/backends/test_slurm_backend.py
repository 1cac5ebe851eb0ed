"""Fast tests of the Slurm backend: the rendered script, option checks, status parsing.

No Slurm needed: the script is checked with ``bash -n`` and by running its environment
part in a real bash; the parsers get real 22.05 output (captured from the local test
cluster) and the newer list/object shapes.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from backends.slurm.backend import SlurmBackend, SlurmJob
from backends.slurm.script import SCRIPT_NAME, format_time_limit
from backends.slurm.status import (
    SlurmJobInfo,
    SlurmParseError,
    accounting_disabled,
    decode_wait_status,
    parse_sacct,
    parse_sbatch_parsable,
    parse_scontrol_jobs,
    parse_squeue_json,
    parse_unhealthy_nodes,
    split_state,
)
from runner.run.backend import Handle, job_name
from runner.errors import UsageError
from runner.records import Launch, Outcome
from runner.results import write_json_atomic

HOSTILE_NAMES = ['x"; touch PWNED; echo "', "$(touch PWNED)", "`touch PWNED`", "a'b; touch PWNED #"]


def make_launch(tmp_path: Path, name: str = "allreduce", *, nodes: int = 2, nproc: int = 2, gpus: int = 0,
                env: dict[str, str] | None = None, timeout: float = 120.0, results_dir: Path | None = None) -> Launch:
    case_id = f"specs/x.yaml::{name}"
    rd = results_dir or tmp_path / "results" / "main"
    return Launch(case_id=case_id, name="main", kind="script", entry="runner.kinds.script:run", args={},
                  nodes=nodes, nproc_per_node=nproc, gpus_per_node=gpus, env=env or {}, timeout=timeout,
                  results_dir=str(rd), job_name=job_name(case_id, "main"))


def sbatch_lines(text: str) -> list[str]:
    return [line[len("#SBATCH "):] for line in text.splitlines() if line.startswith("#SBATCH ")]


# -- render -------------------------------------------------------------------------------------
def test_render_has_the_allocation_and_the_torchrun_line(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, nodes=2, nproc=4, gpus=4, timeout=300)
    text = SlurmBackend({"partition": "gpu", "account": "proj", "qos": "high"}).render(launch).text
    flags = sbatch_lines(text)
    rd = launch.results_dir
    assert f"--job-name={launch.job_name}" in flags
    assert "--nodes=2" in flags and "--ntasks-per-node=1" in flags and "--gpus-per-node=4" in flags
    assert "--time=00:06:00" in flags          # 300 s + 60 s margin, whole minutes
    assert f"--output={rd}/logs/launcher-%j.log" in flags and f"--error={rd}/logs/launcher-%j.log" in flags
    assert "--partition=gpu" in flags and "--account=proj" in flags and "--qos=high" in flags
    assert "--no-requeue" in flags
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    torchrun = text[text.index(srun):]
    for part in ("--nnodes 2", "--nproc-per-node 4", "--rdzv-backend c10d",
                 '--rdzv-endpoint "$HEAD_IP:$RDZV_PORT"', '--rdzv-id "$SLURM_JOB_ID"',
                 f"-m runner.worker {rd}/launch.json", "torch.distributed.run"):
        assert part in torchrun, part
    assert shlex.quote(sys.executable) in text


def test_render_cpu_launch_has_no_gpu_flag_and_is_valid_bash(tmp_path: Path) -> None:
    text = SlurmBackend({}).render(make_launch(tmp_path, gpus=0)).text
    assert not any(f.startswith("--gpus") for f in sbatch_lines(text))
    proc = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_render_is_pure_and_names_the_submit_command(tmp_path: Path) -> None:
    launch = make_launch(tmp_path)
    rendered = SlurmBackend({}).render(launch)
    assert not Path(launch.results_dir).exists()
    assert rendered.files == {SCRIPT_NAME: rendered.text}
    assert rendered.command == ("sbatch", "--parsable", str(Path(launch.results_dir) / SCRIPT_NAME))


def test_render_options_container_extra_flags_port_export(tmp_path: Path) -> None:
    opts = {"container_image": "nvcr.io#nvidia/pytorch:24.05-py3", "container_mounts": "/data:/data,/res:/res",
            "extra_sbatch": "--constraint='a100&ib' --exclusive", "rdzv_port": "29400",
            "env_passthrough": "PATH,HOME", "python": "/opt/py 3/bin/python", "time_margin": "0"}
    text = SlurmBackend(opts).render(make_launch(tmp_path, timeout=61)).text
    flags = sbatch_lines(text)
    assert "--time=00:02:00" in flags
    assert "--export=PATH,HOME" in flags
    assert "'--constraint=a100&ib'" in flags and "--exclusive" in flags
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert "--container-image='nvcr.io#nvidia/pytorch:24.05-py3'" in srun
    assert "--container-mounts=/data:/data,/res:/res" in srun
    assert "--export=ALL" in srun   # tasks see the script's exports whatever sbatch got
    assert "RUNNER_PYTHON='/opt/py 3/bin/python'" in text
    assert "29400)" in text
    assert "< <(python3 -c " in text    # the head IP is found outside the container


def test_head_ip_and_port_snippet_runs(tmp_path: Path) -> None:
    """The batch host's helper prints an IPv4 address and a port (a free one for 0)."""
    text = SlurmBackend({}).render(make_launch(tmp_path)).text
    assert '< <("$RUNNER_PYTHON" -c ' in text
    line = next(line for line in text.splitlines() if line.startswith("read -r HEAD_IP"))
    start = text.index(line)
    end = text.index("' 0)\n", start) + len("' 0)")
    probe = f"RUNNER_PYTHON={shlex.quote(sys.executable)}\n" + text[start:end] + '\necho "$HEAD_IP $RDZV_PORT"\n'
    proc = subprocess.run(["bash", "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ip, port = proc.stdout.split()
    assert len(ip.split(".")) == 4 and all(p.isdigit() for p in ip.split("."))
    assert 0 < int(port) < 65536


@pytest.mark.parametrize("opts, key", [
    ({"partition": "gpu; rm -rf /"}, "partition"),
    ({"account": "a b"}, "account"),
    ({"time_margin": "ten"}, "time_margin"),
    ({"time_margin": "-5"}, "time_margin"),
    ({"rdzv_port": "70000"}, "rdzv_port"),
    ({"extra_sbatch": "--exclusive 'unclosed"}, "extra_sbatch"),
    ({"extra_sbatch": "exclusive"}, "extra_sbatch"),
    ({"env_passthrough": "PATH,1BAD"}, "env_passthrough"),
    ({"python": "/usr/bin/python\ntouch x"}, "python"),
    ({"nodes": "3"}, "nodes"),
])
def test_bad_options_are_usage_errors_naming_the_option(opts: dict[str, str], key: str) -> None:
    with pytest.raises(UsageError, match=key):
        SlurmBackend(opts)


def test_check_names_the_missing_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UsageError, match="'sbatch' not found"):
        SlurmBackend({}).check()


def test_format_time_limit() -> None:
    assert format_time_limit(1) == "00:01:00"
    assert format_time_limit(60) == "00:01:00"
    assert format_time_limit(61) == "00:02:00"
    assert format_time_limit(3600 * 25 + 1) == "1-01:01:00"


def test_env_values_reach_the_job_verbatim(tmp_path: Path) -> None:
    """Run the script's export lines in a real bash: hostile values stay data."""
    env = {"PLAIN": "1", "SPACES": "a b  c", "QUOTES": "it's \"q\"", "SUBST": "$(touch PWNED) `touch PWNED`",
           "NEWLINE": "line1\nline2; touch PWNED"}
    text = SlurmBackend({}).render(make_launch(tmp_path, env=env)).text
    block = text[text.index("# the case's environment\n"):text.index("\nRUNNER_PYTHON=")]
    probe = block + f"\n{shlex.quote(sys.executable)} -c 'import json, os, sys; " \
        f"print(json.dumps({{k: os.environ[k] for k in sys.argv[1:]}}))' {' '.join(sorted(env))}\n"
    proc = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == env
    assert not (tmp_path / "PWNED").exists()


def test_bad_env_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="environment variable name"):
        SlurmBackend({}).render(make_launch(tmp_path, env={"A;touch x": "1"}))



def test_head_node_program_is_the_module_file(tmp_path: Path) -> None:
    """The script runs the source of backends/slurm/head_node.py, which is also a program of its own."""
    import backends.slurm.head_node as head_node

    source = Path(head_node.__file__).read_text()
    assert shlex.quote(source) in SlurmBackend({}).render(make_launch(tmp_path)).text
    proc = subprocess.run([sys.executable, head_node.__file__, "29400"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ip, port = proc.stdout.split()
    assert len(ip.split(".")) == 4 and port == "29400"

@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_case_name_is_sanitised_and_quoted(tmp_path: Path, name: str) -> None:
    rd = tmp_path / name / "main"          # results dirs are derived from case names
    launch = make_launch(tmp_path, name=name, results_dir=rd)
    assert launch.job_name.replace("-", "").isalnum()
    text = SlurmBackend({}).render(launch).text
    assert f"--chdir={shlex.quote(str(rd))}" in sbatch_lines(text)
    # the name appears only inside single-quoted paths
    quoted = [shlex.quote(p) for p in (f"{rd}/logs/launcher-%j.log", str(rd / "launch.json"), str(rd))]
    for line in text.splitlines():
        for q in quoted:
            line = line.replace(q, "")
        assert name not in line, line
    proc = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_line_breaks_in_results_dir_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="line breaks"):
        SlurmBackend({}).render(make_launch(tmp_path, results_dir=tmp_path / "a\n#SBATCH --x" / "main"))


def test_percent_in_results_dir_is_escaped_for_slurm_patterns(tmp_path: Path) -> None:
    text = SlurmBackend({}).render(make_launch(tmp_path, results_dir=tmp_path / "100%x" / "main")).text
    assert f"--output={tmp_path}/100%%x/main/logs/launcher-%j.log" in sbatch_lines(text)


# -- status parsing -----------------------------------------------------------------------------
# captured from the local test cluster (Slurm 22.05.8), trimmed to the fields that matter
SQUEUE_22_05 = {
    "meta": {"plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
             "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"}},
    "errors": [],
    "jobs": [
        {"job_id": 2, "job_state": "FAILED", "exit_code": 768, "derived_exit_code": 0,
         "state_reason": "NonZeroExitCode", "nodes": "n1", "name": "e3.sh", "batch_host": "n1"},
        {"job_id": 3, "job_state": "FAILED", "exit_code": 9, "derived_exit_code": 0,
         "state_reason": "JobLaunchFailure", "nodes": "n1", "name": "k9.sh", "batch_host": "n1"},
        {"job_id": 7, "job_state": "CANCELLED", "exit_code": 15, "derived_exit_code": 256,
         "state_reason": "None", "nodes": "n[1-2]", "name": "ext-main", "batch_host": "n1"},
        {"job_id": 9, "job_state": "RUNNING", "exit_code": 0, "derived_exit_code": 0,
         "state_reason": "None", "nodes": "n[1-2]", "name": "run-main", "batch_host": "n1"},
    ],
}

# the newer shape: state lists, {"set","number"} numbers, exit_code objects
SQUEUE_NEWER = {
    "jobs": [
        {"job_id": 11, "job_state": ["RUNNING"], "state_reason": "None", "nodes": "gpu[1-2]",
         "exit_code": {"status": ["SUCCESS"], "return_code": {"set": True, "infinite": False, "number": 0}}},
        {"job_id": 12, "job_state": ["CANCELLED", "COMPLETING"], "state_reason": "None", "nodes": "gpu3",
         "exit_code": {"status": ["SIGNALED"], "return_code": {"set": False, "infinite": False, "number": 0},
                       "signal": {"id": {"set": True, "infinite": False, "number": 15}, "name": "TERM"}}},
        {"job_id": 13, "job_state": ["NODE_FAIL"], "state_reason": "NodeDown", "nodes": "gpu4",
         "exit_code": {"set": True, "infinite": False, "number": 0}},
        {"job_id": 14, "job_state": ["FAILED"], "state_reason": "NonZeroExitCode", "nodes": "gpu5",
         "exit_code": {"status": ["ERROR"], "return_code": {"set": True, "infinite": False, "number": 3}}},
    ],
}


def test_squeue_22_05_string_states_and_wait_statuses() -> None:
    jobs = parse_squeue_json(json.dumps(SQUEUE_22_05))
    assert set(jobs) == {"2", "3", "7", "9"}
    assert (jobs["2"].state, jobs["2"].exit_code, jobs["2"].reason, jobs["2"].done) == ("FAILED", 3, "NonZeroExitCode", True)
    assert (jobs["3"].exit_code, jobs["3"].signal) == (None, 9)
    assert (jobs["7"].state, jobs["7"].signal, jobs["7"].reason) == ("CANCELLED", 15, "")
    assert not jobs["9"].done and jobs["9"].nodes == "n[1-2]"


def test_squeue_filters_wanted_ids() -> None:
    assert set(parse_squeue_json(json.dumps(SQUEUE_22_05), ["7", "404"])) == {"7"}


def test_squeue_newer_list_states_and_exit_objects() -> None:
    jobs = parse_squeue_json(json.dumps(SQUEUE_NEWER))
    assert not jobs["11"].done and jobs["11"].state == "RUNNING"
    assert jobs["12"].state == "CANCELLED" and jobs["12"].flags == ("COMPLETING",) and not jobs["12"].done
    assert jobs["12"].signal == 15
    assert jobs["13"].state == "NODE_FAIL" and jobs["13"].done and jobs["13"].reason == "NodeDown"
    assert jobs["14"].exit_code == 3


def test_squeue_garbage_is_a_parse_error() -> None:
    with pytest.raises(SlurmParseError):
        parse_squeue_json("slurm_load_jobs error: Unable to contact slurm controller")
    with pytest.raises(SlurmParseError):
        parse_squeue_json('{"jobs": 3}')


def test_scontrol_one_liners() -> None:
    text = (
        "JobId=8 JobName=node-main UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901752 Nice=0 "
        "Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=0 "
        "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=137:0 RunTime=00:00:07 NodeList=n[1-2] BatchHost=n1\n"
        "JobId=9 JobName=x JobState=COMPLETING Reason=None ExitCode=0:15 NodeList=n1\n"
        "JobId=10 JobName=y JobState=PENDING Reason=Resources ExitCode=0:0 NodeList=(null)\n"
    )
    jobs = parse_scontrol_jobs(text, ["8", "9", "10"])
    assert (jobs["8"].state, jobs["8"].exit_code, jobs["8"].nodes, jobs["8"].done) == ("FAILED", 137, "n[1-2]", True)
    assert (jobs["9"].state, jobs["9"].signal, jobs["9"].done) == ("COMPLETING", 15, False)
    assert (jobs["10"].reason, jobs["10"].nodes) == ("Resources", "")


def test_sacct_jobcomp_and_database_lines() -> None:
    text = "2|FAILED|3:0|n1\n3|FAILED|0:9|n1\n4|CANCELLED by 0|0:15|n1\n4.batch|CANCELLED|0:15|n1\n5|NODE_FAIL|0:0|n2\n"
    jobs = parse_sacct(text, ["2", "3", "4", "5"])
    assert jobs["2"].exit_code == 3 and jobs["3"].signal == 9
    assert jobs["4"].state == "CANCELLED" and jobs["4"].signal == 15
    assert jobs["5"].state == "NODE_FAIL" and jobs["5"].done


def test_small_helpers() -> None:
    assert decode_wait_status(768) == (3, None) and decode_wait_status(9) == (None, 9)
    assert decode_wait_status(35072) == (137, None)
    assert split_state(["PENDING", "REQUEUED"]) == ("PENDING", ("REQUEUED",))
    assert split_state("CANCELLED by 1000") == ("CANCELLED", ())
    assert accounting_disabled("sacct: error: Slurm accounting storage is disabled")
    assert not accounting_disabled("sacct: error: Invalid job id")
    assert parse_sbatch_parsable("1234\n") == "1234" and parse_sbatch_parsable("77;cluster2") == "77"
    with pytest.raises(SlurmParseError):
        parse_sbatch_parsable("sbatch: error: Batch job submission failed")


def test_unhealthy_nodes_from_sinfo() -> None:
    text = "n1|idle|none\nn2|down*|Not responding\nn3|mixed|none\nn4|idle*|none\nn5|drained|maint\n"
    assert parse_unhealthy_nodes(text) == [("n2", "down*", "Not responding"), ("n4", "idle*", "")]


# -- classification (collect) -------------------------------------------------------------------
def finished(tmp_path: Path, state: str, *, records: dict[int, str], cancel_reason: str | None = None,
             reason: str = "", exit_code: int | None = 0, monkeypatch: pytest.MonkeyPatch) -> Outcome:
    """collect() on a job Slurm reported in ``state``, with these ranks' completion records.

    PATH holds no Slurm tools, so only the records and the reported state decide."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    launch = make_launch(tmp_path, nodes=1, nproc=2)
    rd = Path(launch.results_dir)
    for rank, status in records.items():
        write_json_atomic(rd / "done" / f"rank{rank}.json",
                          {"rank": rank, "status": status, "exception": "RuntimeError: boom" if status != "ok" else None})
    handle = Handle(id="42", launch=launch, submitted_at=0.0, cancel_reason=cancel_reason)
    handle.state = SlurmJob(info=SlurmJobInfo("42", state, (), reason, exit_code, None, "n1", "squeue"),
                            finished_at=5.0)
    outcome = SlurmBackend({}).collect(handle)
    assert outcome.duration == 5.0
    return outcome


@pytest.mark.parametrize("state, records, cancel_reason, expected, words", [
    ("COMPLETED", {0: "ok", 1: "ok"}, None, Outcome.COMPLETED, ""),
    ("FAILED", {0: "ok", 1: "error"}, None, Outcome.ERROR, "rank 1: RuntimeError: boom"),
    ("FAILED", {0: "ok"}, None, Outcome.ERROR, "rank 1 ended without a completion record"),
    ("OUT_OF_MEMORY", {0: "ok"}, None, Outcome.ERROR, "rank 1"),
    ("CANCELLED", {}, None, Outcome.INFRA, "cancelled outside the runner"),
    ("CANCELLED", {}, "timeout", Outcome.TIMEOUT, "time limit"),
    ("CANCELLED", {}, "interrupt", Outcome.INTERRUPTED, "interrupted"),
    ("TIMEOUT", {0: "ok"}, None, Outcome.TIMEOUT, "Slurm time limit (00:03:00)"),
    ("NODE_FAIL", {0: "error"}, None, Outcome.INFRA, "NODE_FAIL"),     # a rank lost its peer
    ("PREEMPTED", {}, None, Outcome.INFRA, "PREEMPTED"),
    ("BOOT_FAIL", {}, None, Outcome.INFRA, "BOOT_FAIL"),
    ("NODE_FAIL", {0: "ok", 1: "ok"}, None, Outcome.COMPLETED, ""),     # the records decide
])
def test_collect_classifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str,
                            records: dict[int, str], cancel_reason: str | None, expected: Outcome,
                            words: str) -> None:
    outcome = finished(tmp_path, state, records=records, cancel_reason=cancel_reason, monkeypatch=monkeypatch)
    assert outcome.outcome is expected, outcome.detail
    assert words in outcome.detail


# -- warm pools: options and the pool's time limit ---------------------------------------------
def test_pool_options_give_pool_settings_and_pools_0_turns_them_off() -> None:
    from runner.run.pooling import PoolingBackend

    backend = SlurmBackend({"pools": "2", "pool_time": "900", "pool_poll": "0.5"})
    wrapped = backend.pooled(lambda launch: True)
    assert isinstance(wrapped, PoolingBackend) and wrapped.inner is backend and wrapped.id == "slurm"
    assert (wrapped.settings.per_shape, wrapped.settings.time_cap, wrapped.settings.idle_poll_s,
            wrapped.settings.shared_fs) == (2, 900.0, 0.5, True)
    off = SlurmBackend({"pools": "0"})
    assert off.pooled(lambda launch: True) is off


@pytest.mark.parametrize("opts, words", [
    ({"pools": "two"}, "option 'pools': 'two' is not an integer"),
    ({"pools": "-1"}, "option 'pools': -1 must be >= 0"),
    ({"pool_time": "0"}, "option 'pool_time': 0 must be > 0"),
    ({"pool_poll": "nan"}, "option 'pool_poll': nan must be > 0"),
    ({"time_margin": "x"}, "option 'time_margin': 'x' is not an integer"),
])
def test_bad_pool_options_are_one_line_usage_errors(opts: dict[str, str], words: str) -> None:
    with pytest.raises(UsageError) as err:
        SlurmBackend(opts)
    assert words in str(err.value) and str(err.value).startswith("slurm backend: ") and "\n" not in str(err.value)


def test_a_pools_time_limit_is_the_sum_of_its_cases_timeouts_capped(tmp_path: Path) -> None:
    from runner.run.pools import POOL_LIFETIME_S, PoolSettings

    launches = [make_launch(tmp_path, f"c{i}") for i in range(3)]
    launches = [Launch(**{**la.__dict__, "timeout": t}) for la, t in zip(launches, (100.0, 50.0, 30.0))]
    assert PoolSettings(per_shape=1, time_cap=1000).time_limit(launches) == 180.0
    assert PoolSettings(per_shape=1, time_cap=120).time_limit(launches) == 120.0
    assert PoolSettings(per_shape=1, time_cap=60).time_limit(launches) == 100.0   # the first case fits
    assert PoolSettings().time_limit(launches) == POOL_LIFETIME_S                  # local: the run's length
