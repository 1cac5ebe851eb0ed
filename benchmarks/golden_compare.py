"""Golden comparison speed: 100k steps x 4 metrics, the vectorised checks vs the previous
per-step deepdiff implementation, measured side by side in one process.

    python benchmarks/golden_compare.py [--steps 100000] [--repeat 3]

The previous implementation is the ``runner/compare/golden.py`` of commit 73a2cbe, read from
git history (``git show``) into a scratch module; without git history only the new time is
printed. Both compare the same synthetic golden (lm loss, num-zeros, mem-allocated-bytes,
iteration-time) with a run that differs from it in a few steps; the time covers the checks
only (the golden is already loaded; the run is a step -> value mapping per metric).
Prints the median of ``--repeat`` runs for each and the ratio.
"""
from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OLD_COMMIT = "73a2cbe"
METRICS = ("lm loss", "num-zeros", "mem-allocated-bytes", "iteration-time")


def synthetic(steps: int) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    rng = random.Random(1234)
    golden = {
        "lm loss": {s: 10.0 * 0.99999 ** s + rng.random() * 1e-3 for s in range(1, steps + 1)},
        "num-zeros": {s: float(rng.randrange(0, 500)) for s in range(1, steps + 1)},
        "mem-allocated-bytes": {s: 1.5e9 + rng.randrange(0, 1000) for s in range(1, steps + 1)},
        "iteration-time": {s: 0.2 + rng.random() * 0.01 for s in range(1, steps + 1)},
    }
    actual = {k: dict(v) for k, v in golden.items()}
    for s in rng.sample(range(1, steps + 1), 10):
        actual["lm loss"][s] += 1e-3
    return golden, actual


def load_old():
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_COMMIT}:runner/compare/golden.py"],
                             check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "golden_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("golden_old", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["golden_old"] = mod
    spec.loader.exec_module(mod)
    return mod


def time_new(golden, actual) -> tuple[float, int]:
    from runner.compare.golden import GoldenFile, GoldenSeries, check_metrics

    g = GoldenFile(Path("g.json"), {k: GoldenSeries.from_mapping(v) for k, v in golden.items()}, {"precision": "full"})
    t0 = time.perf_counter()
    res = check_metrics(g, actual)
    return time.perf_counter() - t0, sum(not c.passed for c in res)


def time_old(mod, golden, actual) -> tuple[float, int]:
    g = mod.GoldenFile(Path("g.json"), {k: mod.GoldenSeries(1, len(v), 1, v) for k, v in golden.items()},
                       {"precision": "full"})
    t0 = time.perf_counter()
    res = mod.check_metrics(g, actual)
    return time.perf_counter() - t0, sum(not c.passed for c in res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ns = ap.parse_args()
    golden, actual = synthetic(ns.steps)
    old = load_old()
    new_t, old_t = [], []
    for _ in range(ns.repeat):           # interleaved, so load changes hit both alike
        t, failed_new = time_new(golden, actual)
        new_t.append(t)
        if old is not None:
            t, failed_old = time_old(old, golden, actual)
            old_t.append(t)
    print(f"{ns.steps} steps x {len(METRICS)} metrics, median of {ns.repeat}")
    print(f"new (numpy):            {statistics.median(new_t):8.3f} s   failing checks: {failed_new}")
    if old_t:
        print(f"old (deepdiff per step): {statistics.median(old_t):8.3f} s   failing checks: {failed_old}")
        print(f"ratio old / new:         {statistics.median(old_t) / statistics.median(new_t):8.1f}x")
    else:
        print("old implementation unavailable (no git history): no ratio")


if __name__ == "__main__":
    main()
