"""Shared helpers of the speed benchmarks: timing commands, medians, the machine's load."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def env(root: Path = ROOT) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))


def load() -> str:
    """The 1/5/15-minute load averages and the core count, for the record."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


#: CPU seconds (user + system) of every command ``timed`` ran, in order
CPU: list[float] = []


def timed(cmd: Sequence[str], *, cwd: Path = ROOT, ok: Sequence[int] = (0,), timeout: float = 1800,
          code: Path = ROOT) -> float:
    """Wall seconds of one command; its exit code must be in ``ok``. Its CPU seconds (with
    its children's) are appended to ``CPU``: on a loaded machine they move less than wall time.
    ``code``: the checkout whose ``runner`` runs (put first on PYTHONPATH), e.g. a baseline."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=cwd, env=env(code), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}")
    return took


def runner_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "runner", *args]


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def report(path: str | None) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if path else {}


def row(name: str, a: Sequence[float], b: Sequence[float], a_name: str, b_name: str) -> str:
    ma, mb = median(a), median(b)
    return (f"{name}: {a_name} {ma:.3f} s, {b_name} {mb:.3f} s, ratio {ma / mb:.3f} "
            f"(medians of {len(a)}; {a_name} {', '.join(f'{x:.2f}' for x in a)}; "
            f"{b_name} {', '.join(f'{x:.2f}' for x in b)})")
