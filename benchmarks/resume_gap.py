"""Benchmark: the idle gap between run 1 and run 2 of a ckpt-resume case.

Runs ``specs/examples/resume_train.yaml`` (the ``script`` kind, 2 ranks, run 1 trains 20
iterations, run 2 resumes at 10) through ``runner run`` and reads the times off the results:

* ``run 1 ends -> run 2 dispatched``: the last completion record of run 1 (``finished``) to
  run 2's ``launch.json`` (written just before its torchrun starts). This is the runner's
  share: the ranks' and the agent's exit, the poll that sees it, collecting run 1, writing and
  starting run 2. It should be a fraction of a second.
  Split at the moment the runner saw run 1's agent gone (its ownership record under
  ``.runner/local/`` is marked ended then): before it, run 1's ranks and agent exiting;
  after it, the runner collecting run 1 and starting run 2.
* ``run 2 dispatched -> its ranks start``: torchrun's start, the ranks' ``import torch`` and
  rendezvous, the same cost as any cold launch (``benchmarks/startup.py``).

    python benchmarks/resume_gap.py [--repeats 3] [--baseline DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed import ROOT, load, median, runner_cmd, timed  # noqa: E402
from startup import byte_compile  # noqa: E402

SPEC = ROOT / "specs" / "examples" / "resume_train.yaml"


def gaps(root: Path, case_dir: Path) -> tuple[float, float, float]:
    """(run 1 ends -> run 2 dispatched, of which the runner's part, run 2 dispatched -> ranks start)"""
    def records(launch: str) -> list[dict[str, float]]:
        return [json.loads(f.read_text()) for f in sorted((case_dir / launch / "done").glob("rank*.json"))]

    run1_end = max(r["finished"] for r in records("run1"))
    run2_dispatch = (case_dir / "run2" / "launch.json").stat().st_mtime
    run2_start = min(r["started"] for r in records("run2"))
    seen_gone = next(f.stat().st_mtime for f in (root / ".runner" / "local").glob("*.json")
                     if json.loads(f.read_text()).get("results_dir") == str(case_dir / "run1"))
    return run2_dispatch - run1_end, run2_dispatch - seen_gone, run2_start - run2_dispatch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="another checkout whose runner runs in the same rotation")
    ns = p.parse_args(argv)
    checkouts = {"runner": ROOT}
    if ns.baseline:
        checkouts["baseline"] = ns.baseline.resolve()
    for code in checkouts.values():
        byte_compile(code)
    got: dict[str, list[tuple[float, float, float]]] = {name: [] for name in checkouts}
    print(f"before: {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        for i in range(ns.repeats):
            for name, code in checkouts.items():
                out = Path(tmp) / f"{name}{i}"
                timed(runner_cmd("run", f"{SPEC}::train_resume_ckpt", "--results-dir", str(out), "--platform", "cpu",
                                 "--no-history"), cwd=ROOT, code=code)
                case_dir = next(d for d in out.iterdir() if d.is_dir() and (d / "run2").is_dir())
                got[name].append(gaps(out, case_dir))
                dispatch, runner_part, start = got[name][-1]
                print(f"  {name} run {i + 1}: run 1 ends -> run 2 dispatched {dispatch:.3f} s (the runner's part "
                      f"{runner_part:.3f} s); dispatched -> ranks start {start:.2f} s", flush=True)
    print(f"after: {load()}")
    for name, values in got.items():
        print(f"{name}: run 1 ends -> run 2 dispatched, median {median([v[0] for v in values]):.3f} s "
              f"({', '.join(f'{v[0]:.3f}' for v in values)}), the runner's part {median([v[1] for v in values]):.3f} s "
              f"({', '.join(f'{v[1]:.3f}' for v in values)}); dispatched -> ranks start, median "
              f"{median([v[2] for v in values]):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
