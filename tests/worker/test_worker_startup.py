"""What a rank pays for the runner around the user's code: imports, teardown, the agent.

Real ``python -m runner.worker`` processes on real launch records (no torchrun needed for one
rank: RANK/WORLD_SIZE default to 0/1), and the local backend's real torchrun agent.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from runner.records import Launch

ROOT = Path(__file__).resolve().parents[2]
#: what the runner process needs and a rank must not pay for
HEAVY = ("pluggy", "yaml", "deepdiff", "jsonschema", "jsonschema_rs", "tabulate", "numpy", "torch")

USER_SCRIPT = textwrap.dedent("""
    import atexit, gc, json, os, sys, threading, time

    out = os.environ["PROBE_DIR"]

    def note(name, value):
        with open(os.path.join(out, name), "w") as fh:
            json.dump(value, fh)

    note("imported", sorted(m for m in {heavy!r} if m in sys.modules))

    class Cycle:
        def __del__(self):
            note("cycle_finalized", True)

    c = Cycle()
    c.me = c          # garbage only the cyclic collector finds
    del c

    def late():
        time.sleep(0.3)
        note("thread_done", True)

    threading.Thread(target=late).start()   # non-daemon: a normal exit joins it

    @atexit.register
    def at_exit():
        note("at_exit", {{"frozen": gc.get_freeze_count(), "torch": "torch" in sys.modules}})
""").format(heavy=HEAVY)


def _launch(tmp: Path, script: Path) -> Path:
    rdir = tmp / "results" / "case" / "main"
    rdir.mkdir(parents=True)
    launch = Launch(case_id="probe", name="main", kind="script", entry="runner.kinds.script_worker:run",
                    args={"script": str(script), "argv": []}, nodes=1, nproc_per_node=1, gpus_per_node=0,
                    env={}, timeout=60, results_dir=str(rdir), job_name="probe")
    (rdir / "launch.json").write_text(json.dumps(launch.to_json()))
    return rdir


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _run_worker(tmp_path: Path) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    probe = tmp_path / "probe"
    probe.mkdir()
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    rdir = _launch(tmp_path, script)
    proc = subprocess.run([sys.executable, "-m", "runner.worker", str(rdir / "launch.json")], cwd=tmp_path,
                          env=_env(PROBE_DIR=str(probe)), capture_output=True, text=True, timeout=120)
    return probe, rdir, proc


def _read(probe: Path, name: str) -> object:
    path = probe / name
    assert path.is_file(), f"{name} was never written"
    return json.loads(path.read_text())


def test_a_rank_imports_nothing_heavy_of_the_runner(tmp_path: Path) -> None:
    """The user's code starts with none of pluggy, YAML, deepdiff, jsonschema, tabulate, numpy or
    torch imported by the worker wrapper (``import runner`` is lazy)."""
    probe, rdir, proc = _run_worker(tmp_path)
    assert proc.returncode == 0, proc.stderr + (rdir / "logs" / "rank0.log").read_text()
    assert _read(probe, "imported") == []
    assert json.loads((rdir / "done" / "rank0.json").read_text())["status"] == "ok"


def test_the_quick_exit_keeps_what_a_normal_exit_does(tmp_path: Path) -> None:
    """After a clean run the rank freezes the survivors for the shutdown (gc.freeze, the
    time saver), yet cyclic garbage is still finalized, non-daemon threads are joined, atexit
    handlers run — and the teardown does not import torch for a script that never did."""
    probe, rdir, proc = _run_worker(tmp_path)
    assert proc.returncode == 0, proc.stderr + (rdir / "logs" / "rank0.log").read_text()
    at_exit = _read(probe, "at_exit")
    assert isinstance(at_exit, dict)
    assert at_exit["frozen"] > 0, "the shutdown was not shortened (gc.freeze not called)"
    assert at_exit["torch"] is False, "the teardown imported torch"
    assert _read(probe, "cycle_finalized") is True
    assert _read(probe, "thread_done") is True


def test_import_runner_is_lazy_yet_complete() -> None:
    code = ("import sys, runner; lazy = 'pluggy' not in sys.modules and 'runner.run.backend' not in sys.modules; "
            "names = [getattr(runner, n) for n in runner.__all__]; "
            "print(lazy, 'pluggy' in sys.modules, len(names) == len(runner.__all__))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True", "True"], out.stderr
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import runner

        getattr(runner, "Nope")


@pytest.mark.slow
def test_the_local_agent_reports_a_failing_rank_as_torchrun_does(tmp_path: Path) -> None:
    """``python -m backends.local.torchrun`` is torchrun: a rank's exit code 3 makes the agent fail
    (exit 1) with torchrun's own error summary naming the exit code."""
    script = tmp_path / "fail.py"
    script.write_text("import sys\nsys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-m", "backends.local.torchrun", "--standalone", "--nproc-per-node", "1",
                           "--monitor-interval", "0.1", str(script)], cwd=tmp_path, env=_env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "exitcode  : 3" in proc.stderr or "exitcode: 3" in proc.stderr, proc.stderr


def test_the_agents_method_name_is_torchruns_own() -> None:
    """The rendezvous event name from one frame lookup equals torch's ``inspect.stack()`` one,
    at the depth torch asks for and past the end of the stack; the patch is in place."""
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    from backends.local.torchrun import cheap_method_names, method_name

    original = dr.get_method_name

    def record(helper: Any) -> str:   # like _DistributedRendezvousOpExecutor._record
        return helper()

    def join_rendezvous() -> tuple[str, str]:
        return record(original), record(method_name)

    try:
        assert join_rendezvous() == ("join_rendezvous", "join_rendezvous")
        assert method_name(10_000) == original(10_000) == "no_method_name"
        assert cheap_method_names() and dr.get_method_name is method_name
    finally:
        dr.get_method_name = original


def test_records_that_die_with_the_machine_skip_the_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Completion and ownership records are written atomically without waiting for the disk;
    every other atomic write still syncs."""
    from runner.results import write_json_atomic

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    write_json_atomic(tmp_path / "quick.json", {"a": 1}, durable=False)
    assert synced == [] and json.loads((tmp_path / "quick.json").read_text()) == {"a": 1}
    write_json_atomic(tmp_path / "kept.json", {"b": 2})
    assert len(synced) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json", "quick.json"]   # no temporaries left


def test_deciding_a_case_without_goldens_loads_no_numpy() -> None:
    """The comparison stage and the verdict import the golden package, which loads numpy only
    where a golden series is built: a run without goldens does not pay for it at its end."""
    code = ("import sys, runner.compare.stage, runner.compare.verdict, runner.compare.golden; "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False"], out.stderr
