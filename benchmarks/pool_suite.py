"""Benchmark: the unit suite in warm pools vs fresh ranks per case, and vs a baseline checkout.

Runs ``runner run specs/unit/`` and ``runner run specs/unit/ --no-reuse`` side by side,
alternating, ``--repeats`` times each, checks both give the same verdicts, and prints the
median wall times and pooled / unpooled (target: pooled < 45 s on an idle 2-core machine).

With ``--baseline DIR`` (a checkout of an earlier version, e.g. before comparisons moved off
the dispatch path), the pooled run of that checkout alternates with this one's and the
figure is this / baseline; ``--no-fresh`` leaves out the unpooled runs. ``--compare-delay S``
loads a plugin whose ``runner_case_checks`` waits S seconds per case (a stand-in for a slow
comparison, e.g. large captures or goldens on a network share): a scheduler that dispatches
while it compares hides that time behind the next case's run, one that waits adds it per case.

    python benchmarks/pool_suite.py [--repeats 1] [--paths specs/unit/] [--baseline DIR] [--no-fresh]
                                    [--compare-delay S] [--backend-opt KEY=VALUE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed import CPU, ROOT, load, median, row, runner_cmd, timed  # noqa: E402


def verdicts(report: Path) -> dict[str, str]:
    return {c["id"]: c["verdict"] for c in json.loads(report.read_text())["cases"]}


def after_first_case(report: Path) -> float:
    """The session's duration less its first case's (which includes the pool's start, the
    figure that moves most under load): the time the later cases took, gaps included."""
    doc = json.loads(report.read_text())
    return float(doc["duration"]) - float(doc["cases"][0]["duration"])


def _slow_check_plugin(folder: Path, seconds: float) -> list[str]:
    """Write the slow-check plugin module into ``folder`` (put on PYTHONPATH); its -p option."""
    (folder / "bench_slow_check.py").write_text(
        "import time\nfrom runner.hookspecs import hookimpl\n\n\n@hookimpl\n"
        f"def runner_case_checks(case, outcomes):\n    time.sleep({seconds!r})\n    return []\n")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return ["-p", "bench_slow_check"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--paths", nargs="+", default=["specs/unit/"])
    p.add_argument("--baseline", type=Path, help="a checkout whose pooled run alternates with this one's")
    p.add_argument("--no-fresh", dest="fresh", action="store_false", help="leave out the unpooled runs")
    p.add_argument("--backend-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to every run (e.g. cpus=5: a CPU slot to spare for the comparison)")
    p.add_argument("--compare-delay", type=float, default=0.0, metavar="S",
                   help="a plugin check that waits S seconds per case")
    ns = p.parse_args(argv)
    common = [arg for opt in ns.backend_opt for arg in ("--backend-opt", opt)]
    modes = [("pooled", [], ROOT)]
    if ns.baseline is not None:
        modes.append(("baseline", [], ns.baseline.resolve()))
    if ns.fresh:
        modes.append(("fresh", ["--no-reuse"], ROOT))
    walls: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    cpus: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    later: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        d = Path(tmp)
        plugin = _slow_check_plugin(d, ns.compare_delay) if ns.compare_delay > 0 else []
        print(f"before: {load()}", flush=True)
        for i in range(ns.repeats):
            for name, extra, code in modes:
                report = d / f"{name}{i}.json"
                walls[name].append(timed(runner_cmd("run", *ns.paths, "--results-dir", str(d / f"{name}{i}"),
                                                    "--json", str(report), "--platform", "cpu", *plugin, *common, *extra),
                                         ok=(0, 1), code=code))
                cpus[name].append(CPU[-1])
                later[name].append(after_first_case(report))
                print(f"  {name} run {i + 1}: {walls[name][-1]:.1f} s wall, {cpus[name][-1]:.1f} CPU s, "
                      f"{later[name][-1]:.1f} s after the first case", flush=True)
            first = verdicts(d / f"pooled{i}.json")
            if any(verdicts(d / f"{name}{i}.json") != first for name, _, _ in modes):
                raise SystemExit("verdicts differ between the runs")
        print(f"after: {load()}")
    paths = " ".join(ns.paths)
    for other, label in (("baseline", "baseline (pooled)"), ("fresh", "unpooled")):
        if other in walls:
            print(row(f"runner run {paths}", walls["pooled"], walls[other], "pooled", label))
            print(row("  after the first case", later["pooled"], later[other], "pooled", label))
            print(f"  CPU s: pooled {median(cpus['pooled']):.1f}, {label} {median(cpus[other]):.1f}")
    print("verdicts identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
