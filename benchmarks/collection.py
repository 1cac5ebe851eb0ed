"""Benchmark: collecting a 10,000-case matrix.

Writes one spec file whose matrix expands to ``--cases`` a2a_overlap cases and times, side
by side and alternating, ``runner --help`` (the CLI's bare start), ``runner list`` and
``runner run --dry-run`` of it. Prints medians and each against the bare start (targets on an
idle 2-core machine: list < 1 s, dry run < 2 s).

    python benchmarks/collection.py [--cases 10000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed import CPU, load, median, runner_cmd, timed  # noqa: E402


def spec(n: int) -> dict:
    seeds = math.ceil(n / 12)
    return {
        "defaults": {"kind": "a2a_overlap", "timeout": 300, "resources": {"nodes": 1, "nproc_per_node": 4},
                     "tags": ["unit", "a2a_overlap"], "args": {"microbatches": 4, "num_experts": 8, "topk": 2},
                     "profiles": {"cpu": {"args": {"hidden": 64, "heads": 4, "seq_len": 32}}}},
        "cases": [{"name": "layer_{variant}_{hidden}_{dtype}_{s}",
                   "matrix": {"variant": ["dense", "moe", "moe_shared_expert"], "hidden": [64, 128],
                              "dtype": ["float32", "bfloat16"], "s": list(range(seeds))},
                   "args": {"level": "layer", "variant": "{variant}", "hidden": "{hidden}", "dtype": "{dtype}",
                            "seed": "{s}"}}],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--baseline", type=Path, help="another checkout (e.g. a worktree of main): its `runner list` "
                                                 "is timed alternately with this one's")
    ns = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-collect-") as tmp:
        path = Path(tmp) / "big.yaml"
        data = spec(ns.cases)
        path.write_text(json.dumps(data))
        n = 12 * len(data["cases"][0]["matrix"]["s"])
        bare, lst, dry = [], [], []
        print(f"before: {load()}", flush=True)
        cpu: dict[str, list[float]] = {"help": [], "list": [], "dry": [], "base": []}
        base: list[float] = []
        for _ in range(ns.repeats):
            if ns.baseline:
                base.append(timed(runner_cmd("list", str(path), "--platform", "cpu"), code=ns.baseline.resolve(),
                                  cwd=ns.baseline.resolve()))
                cpu["base"].append(CPU[-1])
            bare.append(timed(runner_cmd("--help")))
            cpu["help"].append(CPU[-1])
            lst.append(timed(runner_cmd("list", str(path), "--platform", "cpu")))
            cpu["list"].append(CPU[-1])
            dry.append(timed(runner_cmd("run", "--dry-run", str(path), "--platform", "cpu")))
            cpu["dry"].append(CPU[-1])
        print(f"after: {load()}")
    b = median(bare)
    print(f"{n} cases: runner --help {b:.3f} s; runner list {median(lst):.3f} s ({median(lst) / b:.2f}x --help); "
          f"runner run --dry-run {median(dry):.3f} s ({median(dry) / b:.2f}x --help)  (medians of {ns.repeats}; "
          f"list {', '.join(f'{x:.2f}' for x in lst)}; dry run {', '.join(f'{x:.2f}' for x in dry)})")
    if base:
        print(f"runner list, this checkout vs {ns.baseline}: {median(lst):.3f} s vs {median(base):.3f} s, ratio "
              f"{median(lst) / median(base):.3f}; CPU {median(cpu['list']):.3f} s vs {median(cpu['base']):.3f} s, "
              f"ratio {median(cpu['list']) / median(cpu['base']):.3f}")
    print(f"CPU seconds (user + system), medians: --help {median(cpu['help']):.3f}, list {median(cpu['list']):.3f}, "
          f"dry run {median(cpu['dry']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
