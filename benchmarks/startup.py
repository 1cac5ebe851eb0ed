"""Benchmark: a trivial 2-rank case through the runner vs the same script under bare torchrun.

The script initialises gloo, does one all-reduce and exits. Measured side by side, alternating
(bare, runner, bare, runner, ...), cold each time (a fresh torchrun per run, no warm pool: the
``script`` kind is not poolable): ``runner run`` (CLI start, collection, launch, polling, result
collection, report) against ``torchrun --standalone --nproc-per-node 2 script.py``. Prints the
medians and runner / bare (target: <= 1.05).

    python benchmarks/startup.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed import CPU, PYTHON, load, median, row, runner_cmd, timed  # noqa: E402

SCRIPT = textwrap.dedent("""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == dist.get_world_size()
    dist.destroy_process_group()
""")

SPEC = textwrap.dedent("""
    cases:
      - name: trivial
        kind: script
        resources: {nodes: 1, nproc_per_node: 2}
        args: {script: trivial.py, metrics: none}
""")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    ns = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        d = Path(tmp)
        (d / "trivial.py").write_text(SCRIPT)
        (d / "trivial.yaml").write_text(SPEC)
        bare, runner, bare_cpu, runner_cpu = [], [], [], []
        print(f"before: {load()}", flush=True)
        for i in range(ns.repeats):
            bare.append(timed([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               str(d / "trivial.py")], cwd=d))
            bare_cpu.append(CPU[-1])
            runner.append(timed(runner_cmd("run", str(d / "trivial.yaml"), "--results-dir", str(d / f"r{i}"),
                                           "--platform", "cpu")))
            runner_cpu.append(CPU[-1])
            print(f"  run {i + 1}: bare {bare[-1]:.2f} s, runner {runner[-1]:.2f} s", flush=True)
        print(f"after: {load()}")
        print(row("trivial 2-rank case, cold", runner, bare, "runner", "bare torchrun"))
        print(f"CPU seconds (all processes, user + system), medians: runner {median(runner_cpu):.2f}, bare "
              f"{median(bare_cpu):.2f}, ratio {median(runner_cpu) / median(bare_cpu):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
