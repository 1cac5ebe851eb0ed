"""Helpers for the MoE tests: run the a2a_overlap kind's equivalence launch through the real worker
protocol (a Launch record in launch.json, ``python -m runner.worker`` under torchrun with
gloo), and start small gloo process groups for in-process schedule tests."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from runner.records import Case, Launch, LaunchOutcome, Outcome, Resources

REPO = Path(__file__).resolve().parent.parent


def make_launch(results_dir: Path, args: Mapping[str, Any], world_size: int, *, timeout: float = 120.0) -> Launch:
    """The launch the a2a_overlap kind plans for ``args`` (an equivalence launch)."""
    from workloads.moe.kind import A2AOverlapKind

    (plan,) = A2AOverlapKind().plan(make_case(args, world_size))
    return Launch(case_id=f"test::{results_dir.name}", name="main", kind="a2a_overlap",
                  entry=plan.entry, args=dict(plan.args), nodes=1, nproc_per_node=world_size,
                  gpus_per_node=0, env={}, timeout=timeout, results_dir=str(results_dir),
                  job_name=results_dir.name.lower()[:63], platform="cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(results_dir: Path, args: Mapping[str, Any], world_size: int = 4, timeout: float = 600.0) -> LaunchOutcome:
    """Write launch.json and run every rank with torchrun; an Outcome from the exit code."""
    results_dir = results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    launch = make_launch(results_dir, args, world_size, timeout=timeout)
    (results_dir / "launch.json").write_text(json.dumps(launch.to_json()))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world_size),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
           *launch.worker_argv]
    # own process group, so a timeout takes torchrun's ranks down with it
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    outcome = Outcome.COMPLETED if proc.returncode == 0 else Outcome.ERROR
    return LaunchOutcome(launch, outcome, detail=err[-2000:], exit_code=proc.returncode)


def make_case(args: Mapping[str, Any], world_size: int = 4, platform: str = "cpu") -> Case:
    return Case(id="specs/unit/test.yaml::t", name="t", kind="a2a_overlap", args=dict(args),
                resources=Resources(nodes=1, nproc_per_node=world_size), spec_file="specs/unit/test.yaml",
                platform=platform)


def _spawn_entry(rank: int, fn, world_size: int, store_dir: str, out_dir: str, payload: Any) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_dir}/store", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, payload)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.destroy_process_group()
    from dist_helpers import leave_cleanly

    leave_cleanly()


def spawn(fn, world_size: int, tmp_path: Path, payload: Any = None) -> list[Any]:
    """Run ``fn(rank, world_size, payload)`` in ``world_size`` processes joined by a gloo
    group; returns each rank's JSON-able result, in rank order. ``fn`` must be importable
    (a module-level function of a test module)."""
    import torch.multiprocessing as mp

    store, out = tmp_path / "store_dir", tmp_path / "out"
    store.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_spawn_entry, args=(fn, world_size, str(store), str(out), payload), nprocs=world_size,
                       join=True, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]
