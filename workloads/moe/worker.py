"""The ``a2a_overlap`` workload as ``equivalence`` functions: ``setup`` / ``reference`` /
``candidate`` (the kind plans an equivalence launch that calls them).

``setup`` builds the model and the per-rank inputs; ``reference`` runs the sequential
reference (per microbatch: forward, backward with a gradient of ones; gradients accumulate);
``candidate`` runs the overlapped 1F1B schedule on the same inputs, after the equivalence
kind restored the weights, dropped the gradients and reset the RNG. Each run ends with an
SGD step, as a training step would (so a missing restore is caught). Captures: ``outputs``,
``grads`` (every parameter) and ``trace`` (reference: the documented node order; candidate:
the node calls it made). Wall times and the in-flight record go to the rank's info.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from runner.equivalence import grads
from runner.worker.context import WorkerContext
from workloads.moe.dispatcher import Communicator
from workloads.moe.order import documented_order
from workloads.moe.kind import resolve_args
from workloads.moe.model import ChunkedModel, LayerModel, MoEConfig, chunk_reference_forward, layer_reference_forward
from workloads.moe.schedule import ScheduleContext, run_chunk_schedule, run_layer_schedule

SGD_LR = 0.1


@dataclass(frozen=True)
class RunResult:
    outputs: dict[str, torch.Tensor]   # "output.mb0", "hidden.chunk0.mb0", ...
    seconds: float


def config_from_args(args: Mapping[str, Any], world_size: int) -> MoEConfig:
    return MoEConfig(variant=args["variant"], hidden=args["hidden"], heads=args["heads"], seq_len=args["seq_len"],
                     num_experts=args["num_experts"], topk=args["topk"], ffn_hidden=args["ffn_hidden"],
                     vocab_size=args["vocab_size"], dtype=args["dtype"], ep_size=world_size, seed=args["seed"])


def build_model(cfg: MoEConfig, args: Mapping[str, Any], rank: int, device: torch.device) -> LayerModel | ChunkedModel:
    model: LayerModel | ChunkedModel
    if args["level"] == "layer":
        model = LayerModel(cfg, rank)
    else:
        model = ChunkedModel(cfg, rank, list(args["layers"]))
    return model.to(device=device, dtype=cfg.torch_dtype)


def make_inputs(cfg: MoEConfig, args: Mapping[str, Any], rank: int, device: torch.device) -> dict[str, list[torch.Tensor]]:
    """Per-rank, per-microbatch inputs (different on every rank, so routing is uneven)."""
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank)
    m = args["microbatches"]
    if args["level"] == "layer":
        xs = [torch.randn(cfg.seq_len, cfg.hidden, generator=gen).to(device=device, dtype=cfg.torch_dtype) for _ in range(m)]
        return {"x": xs}
    tokens = [torch.randint(cfg.vocab_size, (cfg.seq_len,), generator=gen).to(device) for _ in range(m)]
    labels = [torch.randint(cfg.vocab_size, (cfg.seq_len,), generator=gen).to(device) for _ in range(m)]
    return {"tokens": tokens, "labels": labels}


def reference_run(model: LayerModel | ChunkedModel, inputs: Mapping[str, list[torch.Tensor]],
                  group: dist.ProcessGroup | None = None) -> dict[str, torch.Tensor]:
    """Sequential: per microbatch, one autograd graph forward, backward with ones."""
    outputs: dict[str, torch.Tensor] = {}
    if isinstance(model, LayerModel):           # level: layer (inputs: "x")
        layer = model.layer
        for m, x in enumerate(inputs["x"]):
            out = layer_reference_forward(layer, x, group)
            out.backward(torch.ones_like(out))
            outputs[f"output.mb{m}"] = out.detach()
        return outputs
    chunks = model.model_chunks()
    for m, (tok, lab) in enumerate(zip(inputs["tokens"], inputs["labels"])):
        h = tok
        for c, chunk in enumerate(chunks):
            last = c == len(chunks) - 1
            h = chunk_reference_forward(chunk, h, lab if last else None, group)
            if not last:
                outputs[f"hidden.chunk{c}.mb{m}"] = h.detach()
        h.backward(torch.ones_like(h))
        outputs[f"output.mb{m}"] = h.detach()
    return outputs


def overlapped_run(model: LayerModel | ChunkedModel, inputs: Mapping[str, list[torch.Tensor]],
                   sctx: ScheduleContext) -> dict[str, torch.Tensor]:
    """The overlapped 1F1B schedule over the same microbatches."""
    if isinstance(model, LayerModel):           # level: layer (inputs: "x")
        outs = run_layer_schedule(model.layer, inputs["x"], sctx)
        return {f"output.mb{m}": o for m, o in enumerate(outs)}
    chunks = model.model_chunks()
    per_chunk = run_chunk_schedule(chunks, inputs["tokens"], inputs["labels"], sctx)
    outputs: dict[str, torch.Tensor] = {}
    for c, outs in enumerate(per_chunk):
        for m, o in enumerate(outs):
            key = f"output.mb{m}" if c == len(chunks) - 1 else f"hidden.chunk{c}.mb{m}"
            outputs[key] = o
    return outputs


def grads_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"grad.{name}": p.grad for name, p in model.named_parameters() if p.grad is not None}


def sgd_step(model: nn.Module, lr: float = SGD_LR) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)


def zero_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def timed(fn: Callable[[], dict[str, torch.Tensor]], device: torch.device) -> RunResult:
    """Wall time of one run, all ranks starting together (barrier) and the device drained."""
    dist.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    outputs = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return RunResult(outputs, time.perf_counter() - start)


# -- the equivalence adapters: setup / reference / candidate --------------------------------------
@dataclass
class A2AState:
    """What setup builds once per rank; the equivalence kind restores ``model`` between runs."""

    model: LayerModel | ChunkedModel
    inputs: dict[str, list[torch.Tensor]]
    args: dict[str, Any]
    device: torch.device


def setup(ctx: WorkerContext, params: Mapping[str, Any]) -> A2AState:
    args = resolve_args(params)
    device = ctx.device
    cfg = config_from_args(args, dist.get_world_size())
    if cfg.dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"bfloat16 is not supported on {torch.cuda.get_device_name(device)}")
    rank = dist.get_rank()
    model = build_model(cfg, args, rank, device)
    inputs = make_inputs(cfg, args, rank, device)
    # untimed warm-up (thread pools, connections); leaves no trace in weights or grads
    reference_run(model, inputs)
    zero_grads(model)
    return A2AState(model, inputs, args, device)


def reference(ctx: WorkerContext, state: A2AState) -> dict[str, Any]:
    """The sequential run; its trace is the documented node order the candidate must follow.
    Ends with an SGD step, as a training step would (so a missing restore is caught)."""
    args = state.args
    ref = timed(lambda: reference_run(state.model, state.inputs), state.device)
    captures = {"outputs": ref.outputs, "grads": grads(state),
                "trace": documented_order(args["level"], args["microbatches"], args.get("layers"))}
    sgd_step(state.model)
    ctx.record("time_reference_s", ref.seconds)
    return captures


def candidate(ctx: WorkerContext, state: A2AState) -> dict[str, Any]:
    """The overlapped 1F1B schedule; records which all-to-alls had compute in flight."""
    args = state.args
    sctx = ScheduleContext(Communicator(state.device, poison=bool(args.get("poison_receive_buffers"))),
                           fault=args.get("inject_fault"))
    ovl = timed(lambda: overlapped_run(state.model, state.inputs, sctx), state.device)
    captures = {"outputs": ovl.outputs, "grads": grads(state), "trace": [c.label for c in sctx.trace]}
    sgd_step(state.model)
    ctx.record("time_overlapped_s", ovl.seconds)
    ctx.record("a2a_in_flight", [{"a2a": r.a2a, "compute": r.compute} for r in sctx.in_flight])
    print(f"rank {ctx.rank}: overlapped {ovl.seconds:.4f}s ({len(sctx.trace)} node calls)", flush=True)
    return captures
