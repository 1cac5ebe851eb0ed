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

from typing import Any, Mapping

from workloads.megatron import plants
from workloads.megatron.session import init_parallel, layer_spec, megatron, seed_all, transformer_config

VOCAB = 64


def setup(ctx: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    with megatron(ctx):
        pp, vp = int(params.get("pp", 2)), int(params.get("vp", 2))
        init_parallel(ctx, pp=pp, vpp=vp)
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


def train(ctx: Any, params: Mapping[str, Any], overlap: bool) -> dict[str, Any]:
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    pp, vp = int(params.get("pp", 2)), int(params.get("vp", 2))
    seq, mbs, iters = int(params.get("seq_len", 8)), int(params.get("microbatches", 4)), int(params.get("iterations", 2))
    seed_all(int(params.get("seed", 1234)))
    config = transformer_config(params, num_layers=pp * vp * int(params.get("layers_per_chunk", 1)), ep=1,
                                pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vp)
    ddp_config = DistributedDataParallelConfig(
        overlap_grad_reduce=overlap, overlap_param_gather=overlap, align_param_gather=overlap,
        use_distributed_optimizer=True, bucket_size=int(params.get("bucket_size", 2000)))
    model = []
    for stage in range(vp):
        chunk = GPTModel(config=config, transformer_layer_spec=layer_spec(config), vocab_size=VOCAB,
                         max_sequence_length=seq, vp_stage=stage,
                         pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
                         post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage))
        model.append(DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                             disable_bucketing=stage > 0))
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=float(params.get("lr", 0.01)), use_distributed_optimizer=True,
                        bf16=config.bf16, params_dtype=config.params_dtype, clip_grad=1.0), model)
    if overlap:
        config.no_sync_func = [m.no_sync for m in model]
        config.grad_sync_func = [m.start_grad_sync for m in model]
        config.param_sync_func = [m.start_param_sync for m in model]
    config.finalize_model_grads_func = finalize_model_grads
    forward_backward = get_forward_backward_func()
    dp_rank = parallel_state.get_data_parallel_rank()
    losses: list[Any] = []
    with plants.planted(params.get("plant")):
        for it in range(iters):
            for m in model:
                m.zero_grad_buffer()
            optimizer.zero_grad()
            batches = _batches(params, dp_rank, it, mbs)
            out = forward_backward(forward_step_func=_forward_step, data_iterator=[iter(batches) for _ in model],
                                   model=model, num_microbatches=mbs, seq_length=seq, micro_batch_size=1,
                                   forward_only=False)
            losses.extend(d["lm loss"] for d in out)
            optimizer.step()
        if overlap:
            for m in model:
                m.disable_forward_pre_hook()   # the final (synchronous) param all-gather
    updated = {f"chunk{i}.{name}": p.detach().clone() for i, m in enumerate(model)
               for name, p in m.module.named_parameters()}
    return {"losses": losses, "params": updated}


def reference(ctx: Any, state: dict[str, Any]) -> dict[str, Any]:
    with megatron(ctx):
        return train(ctx, state["params"], overlap=False)


def candidate(ctx: Any, state: dict[str, Any]) -> dict[str, Any]:
    with megatron(ctx):
        return train(ctx, state["params"], overlap=True)
