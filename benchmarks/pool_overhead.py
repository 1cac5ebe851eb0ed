"""Benchmark: the runner's overhead per case inside a warm worker pool.

Runs ``--cases`` tiny a2a_overlap cases (4 ranks, dense layer, hidden 8: the work takes
milliseconds) in one ``runner run`` (one pool), and ``--fresh`` of the same cases with
``--no-reuse`` in the same session of measurements. For every pooled case after the first
(which pays the pool's start), overhead = the case's duration as the runner saw it (dispatch
to verdict) minus the slowest rank's own entry duration (from its completion record). Prints
the median overhead (target < 0.3 s) and the pooled / fresh case duration ratio.

    python benchmarks/pool_overhead.py [--cases 12] [--fresh 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed import load, median, runner_cmd, timed  # noqa: E402


def spec(n: int) -> dict:
    return {"defaults": {"kind": "a2a_overlap", "timeout": 600, "resources": {"nodes": 1, "nproc_per_node": 4},
                         "args": {"level": "layer", "variant": "dense", "hidden": 8, "heads": 2, "seq_len": 4,
                                  "microbatches": 1, "num_experts": 4, "topk": 1}},
            "cases": [{"name": "tiny_{i}", "matrix": {"i": list(range(n))}, "args": {"seed": "{i}"}}]}


def durations(report: Path) -> list[tuple[float, float]]:
    """(case duration, slowest rank's entry duration) per case, in run order."""
    out = []
    for case in json.loads(report.read_text())["cases"]:
        assert case["verdict"] == "PASSED", case
        rdir = Path(case["launches"][0]["results_dir"])
        work = max(json.loads(f.read_text())["duration"] for f in (rdir / "done").glob("rank*.json"))
        out.append((case["duration"], work))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--fresh", type=int, default=2)
    ns = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        d = Path(tmp)
        (d / "pooled.yaml").write_text(json.dumps(spec(ns.cases)))
        (d / "fresh.yaml").write_text(json.dumps(spec(ns.fresh)))
        print(f"before: {load()}", flush=True)
        wall_pooled = timed(runner_cmd("run", str(d / "pooled.yaml"), "--jobs", "1", "--results-dir", str(d / "p"),
                                       "--json", str(d / "p.json"), "--platform", "cpu"))
        wall_fresh = timed(runner_cmd("run", str(d / "fresh.yaml"), "--jobs", "1", "--no-reuse", "--results-dir",
                                      str(d / "f"), "--json", str(d / "f.json"), "--platform", "cpu"))
        print(f"after: {load()}")
        pooled = durations(d / "p.json")
        fresh = durations(d / "f.json")
    warm = pooled[1:]
    overhead = [c - w for c, w in warm]
    print(f"pool start + first case: {pooled[0][0]:.2f} s; whole pooled run {wall_pooled:.1f} s for {ns.cases} cases, "
          f"fresh run {wall_fresh:.1f} s for {ns.fresh}")
    print(f"per-case overhead in a warm pool: median {median(overhead):.3f} s "
          f"(min {min(overhead):.3f}, max {max(overhead):.3f}, {len(overhead)} cases; rank work median "
          f"{median([w for _, w in warm]):.3f} s)")
    print(f"case duration, warm pool vs fresh ranks: {median([c for c, _ in warm]):.3f} s vs "
          f"{median([c for c, _ in fresh]):.3f} s, ratio {median([c for c, _ in warm]) / median([c for c, _ in fresh]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
