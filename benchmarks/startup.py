"""Benchmark: a trivial 2-rank case through the runner vs the same script under bare torchrun.

The script initialises gloo, does one all-reduce and exits. Measured side by side, alternating
(bare, runner[, baseline], bare, runner, ...), cold each time (a fresh torchrun per run, no warm
pool: the ``script`` kind is not poolable): ``runner run`` (CLI start, collection, launch,
polling, result collection, report) against ``torchrun --standalone --nproc-per-node 2
script.py``. Prints the medians of wall and CPU seconds (user + system of every process of the
run) and runner / bare (target: <= 1.05). ``--baseline DIR`` adds an earlier checkout's runner
to the rotation (e.g. ``git worktree add /tmp/base main``), so before and after are measured
under the same load. ``--same-agent`` adds the bare script under the local backend's own agent
(``python -m backends.local.torchrun --standalone ...``): runner / that is the runner's own
overhead, with the agent's and the ranks' savings taken out of the comparison.

The runner's own modules are byte-compiled first (``compileall``), as an installed package's
are: with ``PYTHONDONTWRITEBYTECODE`` set and no ``__pycache__``, every process would compile
them again on every start, a cost a real installation does not have.

    python benchmarks/startup.py [--repeats 7] [--baseline DIR] [--same-agent]
"""
from __future__ import annotations

import argparse
import compileall
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed import CPU, PYTHON, ROOT, load, median, row, runner_cmd, timed  # noqa: E402

SCRIPT = textwrap.dedent("""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == dist.get_world_size()
    dist.destroy_process_group()
""")

SPEC = textwrap.dedent("""
    cases:
      - name: trivial
        kind: script
        resources: {nodes: 1, nproc_per_node: 2}
        args: {script: trivial.py, metrics: none}
""")


def byte_compile(checkout: Path) -> None:
    for package in ("runner", "backends", "workloads"):
        if (checkout / package).is_dir():
            compileall.compile_dir(str(checkout / package), quiet=1, workers=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--baseline", type=Path, help="another checkout whose runner runs in the same rotation")
    p.add_argument("--same-agent", action="store_true",
                   help="also the bare script under the local backend's agent (python -m backends.local.torchrun)")
    ns = p.parse_args(argv)
    base_code = ns.baseline.resolve() if ns.baseline else None
    for checkout in filter(None, (ROOT, base_code)):
        byte_compile(checkout)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        d = Path(tmp)
        (d / "trivial.py").write_text(SCRIPT)
        (d / "trivial.yaml").write_text(SPEC)
        names = ("bare", "runner", "baseline", "agent")
        walls: dict[str, list[float]] = {k: [] for k in names}
        cpus: dict[str, list[float]] = {k: [] for k in names}

        def run_runner(name: str, code: Path, i: int) -> None:
            walls[name].append(timed(runner_cmd("run", str(d / "trivial.yaml"), "--results-dir",
                                                str(d / f"{name}{i}"), "--platform", "cpu"),
                                     cwd=d, code=code))
            cpus[name].append(CPU[-1])

        print(f"before: {load()}", flush=True)
        for i in range(ns.repeats):
            for name, module in (("bare", "torch.distributed.run"), ("agent", "backends.local.torchrun")):
                if name == "agent" and not ns.same_agent:
                    continue
                walls[name].append(timed([PYTHON, "-m", module, "--standalone", "--nproc-per-node", "2",
                                          str(d / "trivial.py")], cwd=d))
                cpus[name].append(CPU[-1])
            run_runner("runner", ROOT, i)
            if base_code is not None:
                run_runner("baseline", base_code, i)
            line = ", ".join(f"{k} {walls[k][-1]:.2f} s ({cpus[k][-1]:.2f} CPU s)" for k in walls if walls[k])
            print(f"  run {i + 1}: {line}", flush=True)
        print(f"after: {load()}")
        print(row("trivial 2-rank case, cold, wall", walls["runner"], walls["bare"], "runner", "bare torchrun"))
        print(row("trivial 2-rank case, cold, CPU s", cpus["runner"], cpus["bare"], "runner", "bare torchrun"))
        if base_code is not None:
            print(row(f"baseline {base_code}, wall", walls["baseline"], walls["bare"], "baseline", "bare torchrun"))
            print(row(f"baseline {base_code}, CPU s", cpus["baseline"], cpus["bare"], "baseline", "bare torchrun"))
            print(row("this checkout vs baseline, wall", walls["runner"], walls["baseline"], "runner", "baseline"))
        if ns.same_agent:
            print(row("runner vs bare under the local agent, wall", walls["runner"], walls["agent"], "runner",
                      "bare (local agent)"))
            print(row("runner vs bare under the local agent, CPU s", cpus["runner"], cpus["agent"], "runner",
                      "bare (local agent)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
