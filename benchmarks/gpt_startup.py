"""GPT launch start-up: what a gpt rank imports, this checkout vs a baseline revision.

``torch.distributed.checkpoint`` (DCP) imports DTensor, whose code imports
``torch.fx.experimental.symbolic_shapes`` and with it sympy: seconds per rank. The
checkpoint package now imports DCP only inside ``save_checkpoint``/``load_checkpoint``, so a
gpt launch that neither saves nor loads no longer pays it (one that does still must: DCP is
the ``torch_dist`` format). Measured side by side, alternating baseline / this checkout:

1. import time, in a fresh interpreter after ``import torch``, of the modules a gpt rank
   imports before its first iteration (worker, train loop, data, optimizer, and the
   checkpoint marker name the loop reads), and whether sympy got imported;
2. wall time of a whole gpt launch (2 ranks, pp 2, 4 iterations, no checkpoint) through the
   local backend (torchrun), start to results.

    python benchmarks/gpt_startup.py [--base REV] [--repeats 5] [--launches 3]

``--base`` (default: the revision before the change) is exported with ``git archive`` into
a temporary folder whose tree the baseline's processes import (first on PYTHONPATH).
Prints medians and ratios (baseline / this checkout: above 1 means faster now).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed import PYTHON, ROOT, env, load, row  # noqa: E402

sys.path.insert(0, str(ROOT))
from backends.local.backend import LocalBackend  # noqa: E402
from workloads.gpt.direct import completed_results, run_direct  # noqa: E402

#: the last revision whose gpt ranks imported DCP on every launch
DEFAULT_BASE = "81f7a97"

IMPORTS = """
import sys, time
import torch
t0 = time.perf_counter()
import workloads.gpt.worker, workloads.gpt.data, workloads.gpt.dist_optimizer
from workloads.gpt.checkpoint import MARKER_FILE
took = time.perf_counter() - t0
print(took, int("sympy" in sys.modules), int("torch.distributed.checkpoint" in sys.modules))
"""

ARGS = dict(num_layers=4, hidden_size=32, num_attention_heads=4, seq_length=32, max_position_embeddings=32,
            vocab_size=128, micro_batch_size=2, global_batch_size=8, train_iters=4, num_documents=200,
            pipeline_model_parallel_size=2, use_distributed_optimizer=True, deterministic_mode=True)


def export_tree(rev: str, into: Path) -> Path:
    """The files of ``rev`` under ``into`` (``git archive``)."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def import_sample(code: Path) -> tuple[float, bool, bool]:
    out = subprocess.run([PYTHON, "-c", IMPORTS], cwd=code, env=env(code), capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), out[1] == "1", out[2] == "1"


def launch_sample(code: Path, results_dir: Path) -> float:
    t0 = time.perf_counter()
    outcome = run_direct(LocalBackend(), results_dir, ARGS, nproc=2, timeout=900, env={"PYTHONPATH": str(code)},
                         case_id="bench::gpt_startup")
    took = time.perf_counter() - t0
    completed_results(outcome, results_dir)
    return took


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=DEFAULT_BASE, help="baseline revision (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="import samples per side")
    p.add_argument("--launches", type=int, default=3, help="launches per side (0: skip)")
    ns = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-gpt-startup-") as tmp:
        base = export_tree(ns.base, Path(tmp) / "base")
        print(f"baseline {ns.base} vs this checkout; before: {load()}", flush=True)
        imp: dict[str, list[float]] = {"base": [], "now": []}
        sympy: dict[str, set[bool]] = {"base": set(), "now": set()}
        for i in range(ns.repeats):
            for side, code in (("base", base), ("now", ROOT)):
                took, has_sympy, _has_dcp = import_sample(code)
                imp[side].append(took)
                sympy[side].add(has_sympy)
            print(f"  import {i + 1}: baseline {imp['base'][-1]:.2f} s, now {imp['now'][-1]:.2f} s", flush=True)
        wall: dict[str, list[float]] = {"base": [], "now": []}
        for i in range(ns.launches):
            for side, code in (("base", base), ("now", ROOT)):
                wall[side].append(launch_sample(code, Path(tmp) / f"{side}{i}"))
            print(f"  launch {i + 1}: baseline {wall['base'][-1]:.2f} s, now {wall['now'][-1]:.2f} s", flush=True)
        print(f"after: {load()}")
        print(row("gpt rank imports after torch", imp["base"], imp["now"], "baseline", "now"))
        print(f"sympy imported: baseline {sorted(sympy['base'])}, now {sorted(sympy['now'])}")
        if ns.launches:
            print(row("gpt launch without checkpoints, wall", wall["base"], wall["now"], "baseline", "now"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
