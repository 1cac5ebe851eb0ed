"""Benchmark: does the overlapped 1F1B schedule hide the MoE all-to-all?

Spawns ``--world-size`` ranks (gloo on CPU, NCCL with one GPU per rank on ``--device cuda``)
and measures, side by side in one run, for the same model, inputs and routing:

* reference     — sequential forward + backward per microbatch, synchronous all-to-alls;
* overlapped    — the 1F1B schedule with asynchronous dispatch/combine;
* compute-only  — the reference computation with every all-to-all replaced by a local
                  tensor of the same shape (so every compute op has the real shapes);
* comm-only     — the same all-to-alls (recorded split sizes) with no compute.

Each repeat takes the slowest rank's time; the medians over repeats are printed with the
overlap ratio (overlapped / reference) and the efficiency against the ideal
max(compute, comm) (ideal / overlapped; 1.0 = perfect overlap).

    PYTHONPATH=. python benchmarks/a2a_overlap.py [--repeats 7] [--hidden 256] [--seq-len 512]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world-size", type=int, default=4)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--variant", choices=["moe", "moe_shared_expert"], default="moe")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--ffn-hidden", type=int, default=None)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--num-experts", type=int, default=8)
    p.add_argument("--topk", type=int, default=2)
    p.add_argument("--microbatches", type=int, default=4)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads per rank (0: torch's default); 1 avoids oversubscribing the cores")
    p.add_argument("--json", help="also write the results as JSON to this file")
    return p.parse_args(argv)


def _bench_rank(rank: int, opts: argparse.Namespace, init_file: str, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from workloads.common.determinism import deterministic
    from workloads.moe.dispatcher import Communicator, exchange_counts
    from workloads.moe.kind import resolve_args
    from workloads.moe.model import combine_post, mlp, pre_dispatch
    from workloads.moe.schedule import ScheduleContext
    from workloads.moe.worker import build_model, config_from_args, make_inputs, overlapped_run, reference_run, zero_grads

    if opts.threads:
        torch.set_num_threads(opts.threads)
    cuda = opts.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=opts.world_size)
    raw = {"level": "layer", "variant": opts.variant, "hidden": opts.hidden, "heads": opts.heads,
           "seq_len": opts.seq_len, "num_experts": opts.num_experts, "topk": opts.topk,
           "microbatches": opts.microbatches, "dtype": opts.dtype}
    if opts.ffn_hidden:
        raw["ffn_hidden"] = opts.ffn_hidden
    args = resolve_args(raw)
    cfg = config_from_args(args, opts.world_size)

    class FakeAllToAll(torch.autograd.Function):
        """Compute-only stand-in: a local tensor of the shape the all-to-all would return."""

        @staticmethod
        def forward(ctx, inp, out_rows):
            ctx.in_shape = inp.shape
            return inp.new_zeros((out_rows,) + tuple(inp.shape[1:]))

        @staticmethod
        def backward(ctx, grad):
            return grad.new_zeros(ctx.in_shape), None

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    with deterministic(cfg.seed):
        model = build_model(cfg, args, rank, device)
        layer = model.layers[0]
        inputs = make_inputs(cfg, args, rank, device)
        comm = Communicator(device)
        routings = []

        def record_routing() -> None:
            for x in inputs["x"]:
                with torch.no_grad():
                    _, routing, counts = pre_dispatch(layer, x)
                routings.append(exchange_counts(routing, counts))

        record_routing()

        def compute_only() -> None:
            for x, routing in zip(inputs["x"], routings):
                pre, _, _ = pre_dispatch(layer, x)
                recv = FakeAllToAll.apply(pre["rows"], routing.rows_received)
                mid_in = {"recv_rows": recv, **({"shared_in": pre["shared_in"]} if "shared_in" in pre else {})}
                mid = mlp(layer, mid_in, routing)
                back = FakeAllToAll.apply(mid["expert_rows"], routing.rows_sent)
                post = {"back_rows": back, "row_probs": pre["row_probs"], "residual": pre["residual"]}
                if "shared_out" in mid:
                    post["shared_out"] = mid["shared_out"]
                out = combine_post(layer, post, routing)
                out.backward(torch.ones_like(out))

        def comm_only() -> None:
            h = cfg.hidden
            for routing in routings:
                counts = torch.zeros(cfg.num_experts, dtype=torch.int64, device=device)
                comm.exchange_counts(routing, counts)
                rows = torch.zeros(routing.rows_sent, h, dtype=cfg.torch_dtype, device=device)
                recv = comm.all_to_all(rows, routing.output_splits, routing.input_splits).wait()      # dispatch
                back = comm.all_to_all(recv, routing.input_splits, routing.output_splits).wait()      # combine
                g = comm.all_to_all(back, routing.output_splits, routing.input_splits).wait()         # combine bwd
                comm.all_to_all(g, routing.input_splits, routing.output_splits).wait()                # dispatch bwd

        runs: dict[str, Callable[[], Any]] = {
            "reference": lambda: reference_run(model, inputs),
            "overlapped": lambda: overlapped_run(model, inputs, ScheduleContext(comm)),
            "compute_only": compute_only,
            "comm_only": comm_only,
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for rep in range(opts.repeats + 1):             # repeat 0 is a warm-up
            names = list(runs)
            names = names[rep % len(names):] + names[:rep % len(names)]   # rotate to spread drift
            for name in names:
                zero_grads(model)
                dist.barrier()
                sync()
                start = time.perf_counter()
                runs[name]()
                sync()
                elapsed = time.perf_counter() - start
                if rep:
                    times[name].append(elapsed)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(times))
    dist.destroy_process_group()


def summarize(per_rank: list[dict[str, list[float]]]) -> dict[str, float]:
    """Per repeat the slowest rank; then the median over repeats."""
    out: dict[str, float] = {}
    for name in per_rank[0]:
        slowest = [max(r[name][i] for r in per_rank) for i in range(len(per_rank[0][name]))]
        out[name] = statistics.median(slowest)
    ideal = max(out["compute_only"], out["comm_only"])
    out["ideal_max_compute_comm"] = ideal
    out["overlap_ratio"] = out["overlapped"] / out["reference"]
    out["efficiency_vs_ideal"] = ideal / out["overlapped"]
    hidden = out["compute_only"] + out["comm_only"] - out["overlapped"]
    out["comm_hidden_fraction"] = hidden / min(out["compute_only"], out["comm_only"])
    return out


def main(argv: list[str] | None = None) -> int:
    import torch.multiprocessing as mp

    opts = _parse(argv)
    with tempfile.TemporaryDirectory(prefix="a2a-bench-") as tmp:
        init_file = os.path.join(tmp, "init")
        mp.start_processes(_bench_rank, args=(opts, init_file, tmp), nprocs=opts.world_size, join=True,
                           start_method="spawn")
        per_rank = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(opts.world_size)]
    res = summarize(per_rank)
    print(f"a2a_overlap benchmark: {opts.world_size} ranks on {opts.device} ({os.cpu_count()} CPUs, host "
          f"{socket.gethostname()}), variant {opts.variant}, hidden {opts.hidden}, seq {opts.seq_len}, "
          f"experts {opts.num_experts} top-{opts.topk}, {opts.microbatches} microbatches, {opts.dtype}, "
          f"median of {opts.repeats} (slowest rank per repeat)")
    for name in ("reference", "overlapped", "compute_only", "comm_only", "ideal_max_compute_comm"):
        print(f"  {name:24s} {res[name] * 1e3:10.2f} ms")
    print(f"  {'overlap ratio':24s} {res['overlap_ratio']:10.3f}   (overlapped / reference; < 1 is faster)")
    print(f"  {'efficiency vs ideal':24s} {res['efficiency_vs_ideal']:10.3f}   (max(compute, comm) / overlapped)")
    print(f"  {'comm hidden':24s} {res['comm_hidden_fraction']:10.3f}   "
          f"((compute + comm - overlapped) / min(compute, comm))")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"options": vars(opts), "results": res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
