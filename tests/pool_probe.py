"""A poolable case kind for the warm-pool tests (load with ``-p pool_probe``, tests/ on the path).

``args.action`` says what every rank does after ``ctx.init_distributed()``:

* ``check``  — record what a fresh rank must see (RNG values, deterministic mode, default
  dtype, grad mode, the environment and cwd, no extra process groups) and do one all-reduce;
  ``compare`` fails naming any fact that differs from a fresh process's.
* ``dirty``  — like ``check``, then leave every one of those facts changed (and a new group).
* ``destroy`` — destroy the default process group (legal, but a pool cannot go on after it).
* ``crash``  — rank 1 raises ``RuntimeError("planted crash")``; the others wait in a barrier.
* ``die``    — rank 1 ends with ``os._exit(7)`` (no completion record).
* ``hang``   — rank 1 sleeps forever; the others wait in a barrier.
Each rank records its pid, so a test can tell which cases shared ranks.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

from runner.hookspecs import hookimpl
from runner.plan.kind import CaseKind, CompareContext, LaunchPlan
from runner.records import Case, CheckResult, LaunchOutcome

LEAK_VAR = "POOL_PROBE_LEAK"
#: the seed a ``dirty`` case leaves behind (a fresh rank's generators are seeded at random)
PLANTED_SEED = 999


def facts() -> dict[str, Any]:
    import random

    import torch
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    planted = torch.Generator().manual_seed(PLANTED_SEED)
    return {
        "torch_rng_fresh": not bool(torch.equal(torch.rand(4), torch.rand(4, generator=planted))),
        "py_rng_fresh": random.random() != random.Random(PLANTED_SEED).random(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "default_dtype": str(torch.get_default_dtype()),
        "grad_enabled": torch.is_grad_enabled(),
        "leak_var": os.environ.get(LEAK_VAR),
        "case_env": os.environ.get("RUNNER_CASE_ID"),
        "cwd": os.getcwd(),
        "groups": len(c10d._world.pg_map),
        "world": dist.get_world_size(),
    }


def entry(ctx) -> None:
    import torch
    import torch.distributed as dist

    ctx.init_distributed()
    action = ctx.args["action"]
    ctx.record("pid", os.getpid())
    ctx.record("facts", facts())
    t = torch.ones(1)
    dist.all_reduce(t)
    ctx.record("sum", float(t.item()))
    if action == "dirty":
        import random

        torch.manual_seed(PLANTED_SEED)
        random.seed(PLANTED_SEED)
        torch.use_deterministic_algorithms(True)
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(False)
        os.environ[LEAK_VAR] = "leaked"
        os.chdir("/")
        dist.new_group(list(range(dist.get_world_size())))
    elif action == "destroy":
        dist.destroy_process_group()
    elif action in ("crash", "die", "hang"):
        if ctx.rank == 1:
            if action == "crash":
                raise RuntimeError("planted crash")
            if action == "die":
                os._exit(7)
            while True:
                time.sleep(1)
        dist.barrier()


class PoolProbeKind(CaseKind):
    id = "pool_probe"
    description = "test kind: records what a rank sees, or crashes/dies/hangs on purpose"
    args_schema = {"type": "object", "additionalProperties": False, "required": ["action"],
                   "properties": {"action": {"enum": ["check", "dirty", "destroy", "crash", "die", "hang"]}}}
    poolable = True

    def plan(self, case: Case) -> Sequence[LaunchPlan]:
        return [LaunchPlan("main", "pool_probe:entry", dict(case.args))]

    def compare(self, case: Case, outcomes: Sequence[LaunchOutcome], ctx: CompareContext) -> Sequence[CheckResult]:
        from runner.results import ResultsDir

        launch = outcomes[0].launch
        info = ResultsDir(launch.results_dir).info()
        checks = []
        for rank in range(launch.world_size):
            got = info.get(rank, {}).get("facts", {})
            want = {"torch_rng_fresh": True, "py_rng_fresh": True, "deterministic": False, "default_dtype": "torch.float32",
                    "grad_enabled": True, "leak_var": None, "case_env": case.id, "cwd": os.getcwd(),
                    "groups": 1, "world": launch.world_size}
            wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
            checks.append(CheckResult(f"fresh:rank{rank}", not wrong,
                                      "" if not wrong else f"rank {rank}: not fresh: " +
                                      ", ".join(f"{k}={g!r} (fresh: {w!r})" for k, (g, w) in wrong.items())))
        return checks

    def info(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Mapping[str, Any]:
        from runner.results import ResultsDir

        if not outcomes:
            return {}
        info = ResultsDir(outcomes[0].launch.results_dir).info()
        return {"pids": sorted(rec.get("pid") for rec in info.values() if "pid" in rec)}


@hookimpl
def runner_register_kinds(registry) -> None:
    registry.add(PoolProbeKind)
