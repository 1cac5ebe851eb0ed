"""Benchmark: a suite of poolable cases on Slurm, warm pool (one allocation) vs ``--no-reuse``.

Starts the project's test cluster (``tests/slurm_cluster.py``: munge, slurmctld and two
slurmd nodes on this host; root, Debian's Slurm packages), then runs ``--cases`` tiny
a2a_overlap cases (4 ranks on one node, dense layer, hidden 8: the work takes milliseconds)
``--repeat`` times each way, alternating pooled and unpooled runs so both see the same load.
Unpooled, the cluster runs the cases' allocations side by side (2 nodes x 2 CPUs here);
pooled, one allocation runs them one after another. Prints each run's wall time, the medians
and the ratio pooled / unpooled (< 1: the pool is faster).

    flock /tmp/slurm-tests.lock python benchmarks/slurm_pools.py [--cases 8] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _speed import CPU, load, median, runner_cmd, timed  # noqa: E402
from slurm_cluster import SlurmCluster  # noqa: E402


def spec(n: int) -> dict:
    return {"defaults": {"kind": "a2a_overlap", "timeout": 600, "resources": {"nodes": 1, "nproc_per_node": 4},
                         "args": {"level": "layer", "variant": "dense", "hidden": 8, "heads": 2, "seq_len": 4,
                                  "microbatches": 1, "num_experts": 4, "topk": 1}},
            "cases": [{"name": "tiny_{i}", "matrix": {"i": list(range(n))}, "args": {"seed": "{i}"}}]}


def passed(report: Path, n: int) -> None:
    cases = json.loads(report.read_text())["cases"]
    assert len(cases) == n and all(c["verdict"] == "PASSED" for c in cases), [c["verdict"] for c in cases]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    ns = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-slurm-pools-", dir="/tmp") as tmp:
        d = Path(tmp)
        (d / "suite.yaml").write_text(json.dumps(spec(ns.cases)))
        walls: dict[str, list[float]] = {"pooled": [], "unpooled": []}
        cpu: dict[str, list[float]] = {"pooled": [], "unpooled": []}
        with SlurmCluster(d / "slurm") as cluster:
            import os

            os.environ.update(cluster.client_env())
            print(f"before: {load()}", flush=True)
            for i in range(ns.repeat):
                for mode, extra in (("pooled", ()), ("unpooled", ("--no-reuse",))):
                    out = d / f"{mode}{i}"
                    wall = timed(runner_cmd("run", str(d / "suite.yaml"), "--backend", "slurm", "--platform", "cpu",
                                            "--results-dir", str(out), "--json", f"{out}.json", *extra))
                    passed(Path(f"{out}.json"), ns.cases)
                    walls[mode].append(wall)
                    cpu[mode].append(CPU[-1])
                    print(f"run {i + 1} {mode:8s}: {wall:7.2f} s wall, {CPU[-1]:6.2f} CPU s", flush=True)
            print(f"after: {load()}")
    mp, mu = median(walls["pooled"]), median(walls["unpooled"])
    print(f"{ns.cases} cases, median of {ns.repeat}: pooled {mp:.2f} s, unpooled {mu:.2f} s, "
          f"ratio pooled / unpooled {mp / mu:.3f}")
    print(f"runner process CPU s (the ranks run under slurmd), median: pooled {median(cpu['pooled']):.2f}, unpooled {median(cpu['unpooled']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
