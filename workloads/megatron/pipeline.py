"""megatron-core's interleaved 1F1B pipeline schedule (PP2 x VP2) with DDP communication overlap.

Reference and candidate train the same GPT (built from the same seed) for a few iterations
with megatron-core's ``get_forward_backward_func()`` (interleaved schedule), its
``DistributedDataParallel`` and its ``DistributedOptimizer``; the candidate turns on
``overlap_grad_reduce`` + ``overlap_param_gather`` (with ``align_param_gather``, the grad /
param sync functions wired into the schedule the way megatron's training loop wires them), the
reference runs without overlap. Captures: every microbatch's loss on the last stage, and every
parameter after the last optimizer step (after the final param all-gather).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from workloads.megatron import plants
from workloads.megatron.session import init_parallel, layer_spec, megatron, seed_all, transformer_config

VOCAB = 64


def setup(ctx: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    with megatron(ctx):
        vp = params.get("vp", 2)
        init_parallel(ctx, pp=int(params.get("pp", 2)), vpp=int(vp) if vp else None)
    return {"params": dict(params)}


def _batches(params: Mapping[str, Any], dp_rank: int, iteration: int, count: int) -> list[dict[str, Any]]:
    import torch

    seq = int(params.get("seq_len", 8))
    gen = torch.Generator().manual_seed(int(params.get("seed", 1234)) * 1000 + dp_rank * 100 + iteration)
    out = []
    for _ in range(count):
        ids = torch.randint(VOCAB, (1, seq), generator=gen)
        out.append({"input_ids": ids, "labels": torch.randint(VOCAB, (1, seq), generator=gen),
                    "position_ids": torch.arange(seq).unsqueeze(0),
                    "attention_mask": torch.ones((1, 1, seq, seq), dtype=torch.bool)})
    return out


def _forward_step(data_iterator: Any, model: Any) -> tuple[Any, Any]:
    batch = next(data_iterator)
    output = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])

    def loss_func(output_tensor: Any) -> tuple[Any, dict[str, Any]]:
        loss = output_tensor.float().mean()
        return loss, {"lm loss": loss.detach().clone()}

    return output, loss_func


@dataclass(frozen=True)
class Training:
    model: list[Any]            # DDP-wrapped GPT chunks, one per virtual stage
    optimizer: Any              # megatron-core's (chained) DistributedOptimizer
    config: Any
    overlap: bool


def build(params: Mapping[str, Any], overlap: bool, seed: int) -> Training:
    """GPT chunks for this rank's (virtual) pipeline stages, DDP-wrapped, and their optimizer."""
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    pp = parallel_state.get_pipeline_model_parallel_world_size()
    vp = parallel_state.get_virtual_pipeline_model_parallel_world_size()
    seed_all(seed)
    extra: dict[str, Any] = {"pipeline_model_parallel_size": pp}
    if vp:
        extra["virtual_pipeline_model_parallel_size"] = vp
    config = transformer_config(params, num_layers=pp * (vp or 1) * int(params.get("layers_per_chunk", 1)), ep=1,
                                **extra)
    ddp_config = DistributedDataParallelConfig(
        overlap_grad_reduce=overlap, overlap_param_gather=overlap, align_param_gather=overlap,
        use_distributed_optimizer=True, bucket_size=int(params.get("bucket_size", 2000)))
    model = []
    for stage in range(vp or 1):
        vp_stage = stage if vp else None
        chunk = GPTModel(config=config, transformer_layer_spec=layer_spec(config), vocab_size=VOCAB,
                         max_sequence_length=int(params.get("seq_len", 8)), vp_stage=vp_stage,
                         pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                         post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage))
        model.append(DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                             disable_bucketing=stage > 0))
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=float(params.get("lr", 0.01)), use_distributed_optimizer=True,
                        bf16=config.bf16, params_dtype=config.params_dtype, clip_grad=1.0), model)
    if overlap:   # wired the way megatron's training loop wires them
        config.no_sync_func = [m.no_sync for m in model]
        config.grad_sync_func = [m.start_grad_sync for m in model]
        config.param_sync_func = [m.start_param_sync for m in model]
    config.finalize_model_grads_func = finalize_model_grads
    return Training(model, optimizer, config, overlap)


def run_iterations(t: Training, params: Mapping[str, Any], first: int, count: int) -> list[Any]:
    """Train iterations ``first .. first+count-1``; the last stage's per-microbatch losses."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    seq, mbs = int(params.get("seq_len", 8)), int(params.get("microbatches", 4))
    forward_backward = get_forward_backward_func()
    dp_rank = parallel_state.get_data_parallel_rank()
    losses: list[Any] = []
    for it in range(first, first + count):
        for m in t.model:
            m.zero_grad_buffer()
        t.optimizer.zero_grad()
        batches = _batches(params, dp_rank, it, mbs)
        iterators: Any = [iter(batches) for _ in t.model] if len(t.model) > 1 else iter(batches)
        out = forward_backward(forward_step_func=_forward_step, data_iterator=iterators,
                               model=t.model if len(t.model) > 1 else t.model[0], num_microbatches=mbs,
                               seq_length=seq, micro_batch_size=1, forward_only=False)
        losses.extend(d["lm loss"] for d in out)
        t.optimizer.step()
    return losses


def finish_param_sync(t: Training) -> None:
    if t.overlap:
        for m in t.model:
            m.disable_forward_pre_hook()   # the final (synchronous) param all-gather
            m.enable_forward_pre_hook()


def parameters(t: Training) -> dict[str, Any]:
    return {f"chunk{i}.{name}": p.detach().clone() for i, m in enumerate(t.model)
            for name, p in m.module.named_parameters()}


def train(ctx: Any, params: Mapping[str, Any], overlap: bool) -> dict[str, Any]:
    t = build(params, overlap, int(params.get("seed", 1234)))
    with plants.planted(params.get("plant")):
        losses = run_iterations(t, params, 0, int(params.get("iterations", 2)))
        finish_param_sync(t)
    return {"losses": losses, "params": parameters(t)}


def reference(ctx: Any, state: dict[str, Any]) -> dict[str, Any]:
    with megatron(ctx):
        return train(ctx, state["params"], overlap=False)


def candidate(ctx: Any, state: dict[str, Any]) -> dict[str, Any]:
    with megatron(ctx):
        return train(ctx, state["params"], overlap=True)
