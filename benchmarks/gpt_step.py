"""GPT training step and checkpoint benchmark (the ``gpt`` workload, real torchrun ranks).

Measures, for the spec's cpu profile layout (PP4 x VP2 x DP2 = 8 ranks, distributed optimizer):

1. step time and tokens/s with overlap on (overlapped grad reduce-scatter + param all-gather)
   and off, side by side, and their ratio (median iteration-time over the steps after warm-up,
   the maximum over ranks per step, as the workload logs it);
2. torch_dist checkpoint save and load throughput (checkpoint bytes on disk / seconds, sync
   save so the time is the whole write, load of the same checkpoint in a second launch), for
   the cpu profile's checkpoint and for a larger one (hidden ``--ckpt-hidden``), next
   to the disk's sequential write and read speed measured in the same run on the same
   filesystem (a file of ``--disk-mib`` MiB written with fsync, then read back after dropping
   it from the page cache where the OS lets us).

    python benchmarks/gpt_step.py [--iters 12] [--nproc 8] [--workdir DIR] [--json FILE]

Prints a table; ``--json`` writes the numbers. Recorded in benchmarks/RESULTS.md ("## gpt").
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# the ranks import the project too, also when it is not installed
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)

from backends.local.backend import LocalBackend  # noqa: E402
from runner.results import ResultsDir  # noqa: E402
from workloads.gpt.direct import completed_results, run_direct  # noqa: E402

CPU_PROFILE = dict(num_layers=8, hidden_size=64, num_attention_heads=4, seq_length=64, max_position_embeddings=64,
                   vocab_size=512, micro_batch_size=2, global_batch_size=16, lr=0.003, min_lr=0.0003,
                   lr_warmup_fraction=0.1, weight_decay=0.01, clip_grad=1.0, bf16=False,
                   pipeline_model_parallel_size=4, num_layers_per_virtual_pipeline_stage=1,
                   use_distributed_optimizer=True, deterministic_mode=True, seed=1234)


def run_launch(results_dir: Path, args: dict, nproc: int, timeout: float = 900) -> ResultsDir:
    """Run the gpt worker on ``nproc`` ranks through the local backend (torchrun)."""
    outcome = run_direct(LocalBackend(), results_dir, args, nproc=nproc, timeout=timeout, case_id="bench::gpt")
    return completed_results(outcome, results_dir)


def step_stats(res: ResultsDir, skip: int) -> dict[str, float]:
    times = res.metrics()["iteration-time"]
    steady = [v for s, v in sorted(times.items()) if s > skip]
    return {"median_step_s": statistics.median(steady), "min_step_s": min(steady), "steps": len(steady)}


def disk_speed(directory: Path, mib: int) -> dict[str, float]:
    """Sequential write (with fsync) and read of one file in ``directory``, MiB/s."""
    path = directory / "disk-speed.bin"
    block = os.urandom(1 << 20)
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as fh:
        for _ in range(mib):
            fh.write(block)
        os.fsync(fh.fileno())
    write_s = time.perf_counter() - t0
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)   # drop it from the page cache if allowed
    except (AttributeError, OSError):
        pass
    t0 = time.perf_counter()
    while os.read(fd, 1 << 22):
        pass
    read_s = time.perf_counter() - t0
    os.close(fd)
    path.unlink()
    return {"write_mib_s": mib / write_s, "read_mib_s": mib / read_s}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure_checkpoint(work: Path, save_run: str, save_args: dict | None, load_args: dict, opts,
                       disk: dict[str, float]) -> dict[str, float]:
    """Save (a sync torch_dist save at the run's last iteration) and load (a new launch that
    resumes from it and trains nothing more) of one checkpoint; MiB/s against the disk."""
    if save_args is not None:
        run_launch(work / save_run, save_args, opts.nproc)
    iters = load_args["train_iters"]
    ckpt = work / save_run / "checkpoints" / f"iter_{iters:07d}"
    nbytes = dir_bytes(ckpt)
    save_s = max(rec["gpt"]["checkpoint_save_blocking_s"][-1] for rec in ResultsDir(work / save_run).info().values())
    load_res = run_launch(work / f"{save_run}_load", dict(load_args, load_from=save_run), opts.nproc)
    load_s = max(rec["gpt"]["checkpoint_load_s"] for rec in load_res.info().values())
    mib = nbytes / (1 << 20)
    out = {"bytes": nbytes, "files": sum(1 for f in ckpt.rglob("*") if f.is_file()), "save_s": save_s,
           "load_s": load_s, "save_mib_s": mib / save_s, "load_mib_s": mib / load_s}
    out["save_fraction_of_disk_write"] = out["save_mib_s"] / disk["write_mib_s"]
    out["load_fraction_of_disk_read"] = out["load_mib_s"] / disk["read_mib_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=12, help="training iterations per run (default 12)")
    ap.add_argument("--skip", type=int, default=2, help="warm-up iterations left out of the medians")
    ap.add_argument("--nproc", type=int, default=8, help="ranks (pp4 x dp; default 8)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating overlap/no-overlap runs each (default 2)")
    ap.add_argument("--ckpt-hidden", type=int, default=512,
                    help="hidden size of the larger model whose checkpoint is also measured (default 512)")
    ap.add_argument("--disk-mib", type=int, default=256, help="size of the disk-speed probe file")
    ap.add_argument("--workdir", type=Path, help="where runs and checkpoints go (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    opts = ap.parse_args(argv)

    work = opts.workdir or Path(tempfile.mkdtemp(prefix="gpt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    base = dict(CPU_PROFILE, train_iters=opts.iters)
    tokens_per_step = base["global_batch_size"] * base["seq_length"]

    print(f"gpt step benchmark: {opts.nproc} ranks, {opts.iters} iterations x {opts.repeats} alternating "
          f"repeats, workdir {work}", flush=True)
    medians: dict[str, list[float]] = {"overlap": [], "no_overlap": []}
    for rep in range(opts.repeats):
        for label, overlap in (("overlap", True), ("no_overlap", False)):
            args = dict(base, overlap_grad_reduce=overlap, overlap_param_gather=overlap)
            name = f"{label}{rep}"
            if name == "overlap0":   # this run also writes the checkpoint the load measurement reads
                args.update(save_interval=opts.iters, async_save=False)
            stats = step_stats(run_launch(work / name, args, opts.nproc), opts.skip)
            medians[label].append(stats["median_step_s"])
            print(f"  {name}: median step {stats['median_step_s'] * 1e3:.1f} ms", flush=True)
    runs = {}
    for label, vals in medians.items():
        med = statistics.median(vals)
        runs[label] = {"median_step_s": med, "run_medians_s": vals, "tokens_per_s": tokens_per_step / med}

    disk = disk_speed(work, opts.disk_mib)
    checkpoints = {"cpu_profile": measure_checkpoint(work, "overlap0", None, base, opts, disk)}
    large = dict(base, hidden_size=opts.ckpt_hidden, num_attention_heads=8, train_iters=1, save_interval=1,
                 async_save=False, overlap_grad_reduce=True, overlap_param_gather=True)
    checkpoints[f"hidden_{opts.ckpt_hidden}"] = measure_checkpoint(work, "large_save", large, large, opts, disk)
    result = {
        "ranks": opts.nproc, "iterations": opts.iters, "tokens_per_step": tokens_per_step,
        "overlap": runs["overlap"], "no_overlap": runs["no_overlap"],
        "step_time_ratio_overlap_over_no_overlap": runs["overlap"]["median_step_s"] / runs["no_overlap"]["median_step_s"],
        "checkpoints": checkpoints, "disk": disk,
    }

    o, n = runs["overlap"], runs["no_overlap"]
    print()
    print(f"{'':24}{'overlap':>14}{'no overlap':>14}{'ratio':>10}")
    print(f"{'median step (ms)':24}{o['median_step_s'] * 1e3:>14.1f}{n['median_step_s'] * 1e3:>14.1f}"
          f"{o['median_step_s'] / n['median_step_s']:>10.3f}")
    print(f"{'tokens/s':24}{o['tokens_per_s']:>14.0f}{n['tokens_per_s']:>14.0f}"
          f"{o['tokens_per_s'] / n['tokens_per_s']:>10.3f}")
    print()
    print(f"disk: sequential write {disk['write_mib_s']:.1f} MiB/s, read {disk['read_mib_s']:.1f} MiB/s")
    for label, c in checkpoints.items():
        print(f"checkpoint {label}: {c['bytes'] / 1e6:.2f} MB in {c['files']} files")
        print(f"  save {c['save_s']:.3f} s = {c['save_mib_s']:.1f} MiB/s ({c['save_fraction_of_disk_write']:.3f}x disk write)")
        print(f"  load {c['load_s']:.3f} s = {c['load_mib_s']:.1f} MiB/s ({c['load_fraction_of_disk_read']:.3f}x disk read)")
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2))
    if not opts.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
