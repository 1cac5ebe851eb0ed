"""The load-proof timing check, end to end: the functional suite under a saturated machine, and
a planted 2x slowdown that must fail the timing check.

    python benchmarks/timing_load.py load [--procs 4 --threads 2]   # specs/functional/ under load
    python benchmarks/timing_load.py slowdown                       # slow_step_2x vs the golden

``load`` starts ``--procs`` competing processes, each multiplying torch matrices on
``--threads`` intra-op threads, runs ``runner run specs/functional/`` while they run, stops
exactly those processes (by their own PIDs) and prints the verdicts, the timing checks'
ratios and the load average. ``slowdown`` runs the regular GPT case with ``inject_fault:
slow_step_2x`` (a copy of its spec in a scratch folder, compared with the committed golden)
and prints the timing check: it must fail while every numeric check still passes.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
REGULAR = "gpt3_mcore_te_tp1_pp4_vp1_dist_optimizer_overlap_grad_reduce_param_gather"
#: a competing process: 2-thread torch matmuls in a loop, for at most argv[2] seconds
BURN = ("import sys, time, torch; torch.set_num_threads(int(sys.argv[1])); a = torch.randn(512, 512)\n"
        "end = time.monotonic() + float(sys.argv[2])\nwhile time.monotonic() < end: a = torch.tanh(a @ a)")


def run_runner(args: list[str], json_out: Path) -> dict:
    cmd = [sys.executable, "-m", "runner.cli", "run", *args, "--json", str(json_out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    print(proc.stdout[-3000:])
    if proc.returncode not in (0, 1):
        print(proc.stderr[-2000:])
    return json.loads(json_out.read_text()) if json_out.is_file() else {}


def summarize(report: dict) -> None:
    for case in report.get("cases", []):
        timing = [c for c in case.get("checks", []) if c["name"].endswith("iteration-time:timing")]
        failed = [c["name"] for c in case.get("checks", []) if not c["passed"]]
        for t in timing:
            d = t.get("data", {})
            print(f"{case['name']}: {case['verdict']}; timing ratio {d.get('ratio')} "
                  f"(cpu median {d.get('cpu_actual_median_s')} s vs golden {d.get('cpu_expected_median_s')} s; "
                  f"wall median {d.get('raw_actual_median_s')} s vs golden {d.get('raw_expected_median_s')} s); "
                  f"failed checks: {failed or 'none'}")


class LoadSampler:
    """The 1-minute load average every 10 s, in a thread, until stop()."""

    def __init__(self) -> None:
        import threading

        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(10):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.samples


def cmd_load(ns: argparse.Namespace) -> None:
    burners = [subprocess.Popen([sys.executable, "-c", BURN, str(ns.threads), str(ns.max_seconds)])
               for _ in range(ns.procs)]
    try:
        time.sleep(5)
        before = os.getloadavg()
        sampler = LoadSampler()
        with tempfile.TemporaryDirectory() as tmp:
            report = run_runner(["specs/functional/", "--results-dir", f"{tmp}/results"], Path(tmp) / "r.json")
        after = os.getloadavg()
        during = sampler.stop()
    finally:
        for p in burners:
            p.send_signal(signal.SIGKILL)
            p.wait()
    summarize(report)
    print(f"load average before {before[0]:.1f}, after {after[0]:.1f} (1-min), during {min(during):.1f}-"
          f"{max(during):.1f}; {ns.procs} burners x {ns.threads} threads")


def cmd_slowdown(ns: argparse.Namespace) -> None:
    spec = yaml.safe_load((REPO / "specs/functional/gpt3.yaml").read_text())
    case = next(c for c in spec["cases"] if c["name"] == REGULAR)
    case = {**case, "name": REGULAR + "_slow", "golden": {"dir": str(REPO / "golden"), "name": REGULAR},
            "args": {**case.get("args", {}), "inject_fault": "slow_step_2x"}}
    spec["cases"] = [case]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slow.yaml"
        path.write_text(yaml.safe_dump(spec))
        report = run_runner([str(path), "--results-dir", f"{tmp}/results"], Path(tmp) / "r.json")
    summarize(report)
    print(f"load average {os.getloadavg()[0]:.1f} (1-min) at the end")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    load = sub.add_parser("load")
    load.add_argument("--procs", type=int, default=4)
    load.add_argument("--threads", type=int, default=2)
    load.add_argument("--max-seconds", type=float, default=1200, help="each burner stops by itself after this")
    sub.add_parser("slowdown")
    ns = ap.parse_args()
    {"load": cmd_load, "slowdown": cmd_slowdown}[ns.cmd](ns)


if __name__ == "__main__":
    main()
