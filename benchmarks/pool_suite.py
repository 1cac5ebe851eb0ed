"""Benchmark: the unit suite in warm pools vs fresh ranks per case, and vs a baseline checkout.

Runs ``runner run specs/unit/`` and ``runner run specs/unit/ --no-reuse`` side by side,
alternating, ``--repeats`` times each, checks both give the same verdicts, and prints the
median wall times and pooled / unpooled (target: pooled < 45 s on an idle 2-core machine).

With ``--baseline DIR`` (a checkout of an earlier version, e.g. before comparisons moved off
the dispatch path), the pooled run of that checkout alternates with this one's and the
figure is this / baseline; ``--no-fresh`` leaves out the unpooled runs.

    python benchmarks/pool_suite.py [--repeats 1] [--paths specs/unit/] [--baseline DIR] [--no-fresh]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed import CPU, ROOT, load, median, row, runner_cmd, timed  # noqa: E402


def verdicts(report: Path) -> dict[str, str]:
    return {c["id"]: c["verdict"] for c in json.loads(report.read_text())["cases"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--paths", nargs="+", default=["specs/unit/"])
    p.add_argument("--baseline", type=Path, help="a checkout whose pooled run alternates with this one's")
    p.add_argument("--no-fresh", dest="fresh", action="store_false", help="leave out the unpooled runs")
    ns = p.parse_args(argv)
    modes = [("pooled", [], ROOT)]
    if ns.baseline is not None:
        modes.append(("baseline", [], ns.baseline.resolve()))
    if ns.fresh:
        modes.append(("fresh", ["--no-reuse"], ROOT))
    walls: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    cpus: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        d = Path(tmp)
        print(f"before: {load()}", flush=True)
        for i in range(ns.repeats):
            for name, extra, code in modes:
                report = d / f"{name}{i}.json"
                walls[name].append(timed(runner_cmd("run", *ns.paths, "--results-dir", str(d / f"{name}{i}"),
                                                    "--json", str(report), "--platform", "cpu", *extra),
                                         ok=(0, 1), code=code))
                cpus[name].append(CPU[-1])
                print(f"  {name} run {i + 1}: {walls[name][-1]:.1f} s wall, {cpus[name][-1]:.1f} CPU s", flush=True)
            first = verdicts(d / f"pooled{i}.json")
            if any(verdicts(d / f"{name}{i}.json") != first for name, _, _ in modes):
                raise SystemExit("verdicts differ between the runs")
        print(f"after: {load()}")
    paths = " ".join(ns.paths)
    for other, label in (("baseline", "baseline (pooled)"), ("fresh", "unpooled")):
        if other in walls:
            print(row(f"runner run {paths}", walls["pooled"], walls[other], "pooled", label))
            print(f"  CPU s: pooled {median(cpus['pooled']):.1f}, {label} {median(cpus[other]):.1f}")
    print("verdicts identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
