"""Benchmark: the unit suite in warm pools vs fresh ranks per case.

Runs ``runner run specs/unit/`` and ``runner run specs/unit/ --no-reuse`` side by side,
alternating, ``--repeats`` times each, checks both give the same verdicts, and prints the
median wall times and pooled / unpooled (target: pooled < 45 s on an idle 2-core machine).

    python benchmarks/pool_suite.py [--repeats 1] [--paths specs/unit/]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed import load, row, runner_cmd, timed  # noqa: E402


def verdicts(report: Path) -> dict[str, str]:
    return {c["id"]: c["verdict"] for c in json.loads(report.read_text())["cases"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--paths", nargs="+", default=["specs/unit/"])
    ns = p.parse_args(argv)
    pooled, fresh = [], []
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        d = Path(tmp)
        print(f"before: {load()}", flush=True)
        for i in range(ns.repeats):
            for name, extra, out in (("pooled", [], pooled), ("fresh", ["--no-reuse"], fresh)):
                report = d / f"{name}{i}.json"
                out.append(timed(runner_cmd("run", *ns.paths, "--results-dir", str(d / f"{name}{i}"), "--json",
                                            str(report), "--platform", "cpu", *extra), ok=(0, 1)))
                print(f"  {name} run {i + 1}: {out[-1]:.1f} s", flush=True)
            if verdicts(d / f"pooled{i}.json") != verdicts(d / f"fresh{i}.json"):
                raise SystemExit("verdicts differ between pooled and unpooled runs")
        print(f"after: {load()}")
    print(row(f"runner run {' '.join(ns.paths)}", pooled, fresh, "pooled", "unpooled") + "; verdicts identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
