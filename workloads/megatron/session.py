"""What every megatron-core adapter does around its work: the CPU layer, parallel state, notes."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

from runner.equivalence import Skip
from workloads.megatron.compat import CompatReport, UnsupportedMegatronVersion, cpu_compat


@contextlib.contextmanager
def megatron(ctx: Any) -> Iterator[CompatReport]:
    """Run the block under the CPU compatibility layer (a no-op on a GPU) and put the
    megatron-core version and what was patched into the verdict detail."""
    try:
        with cpu_compat() as report:
            ctx.record("equivalence_notes", report.notes())
            ctx.record("megatron_compat_patches", list(report.patches))
            yield report
    except UnsupportedMegatronVersion as exc:
        raise Skip(str(exc)) from None


def reset_process_state() -> None:
    """Forget the process-wide state megatron-core keeps beyond a model, so that a case in a warm
    pool starts as on fresh ranks: the MoE aux-loss tracker (its tensors are sized by the first
    model's layer count: a later model with more layers indexes past them) and the aux-loss
    backward scale (a class attribute, set once and then copied into: a later scale of another
    shape fails)."""
    from megatron.core.transformer.moe import moe_utils

    moe_utils.get_moe_layer_wise_logging_tracker().clear()
    moe_utils.MoEAuxLossAutoScaler.main_loss_backward_scale = None


def init_parallel(ctx: Any, *, tp: int = 1, pp: int = 1, vpp: int | None = None, ep: int = 1) -> None:
    """(Re)initialise megatron-core's model-parallel groups on the default (gloo) group, from a
    clean process-wide state (:func:`reset_process_state`)."""
    from megatron.core import parallel_state

    ctx.init_distributed()
    reset_process_state()
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp, expert_model_parallel_size=ep)


def seed_all(seed: int) -> None:
    import torch
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def torch_dtype(name: str) -> Any:
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"params.dtype: expected one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]


def transformer_config(params: Mapping[str, Any], *, num_layers: int, ep: int, **extra: Any) -> Any:
    """A tiny TransformerConfig; MoE when ``params.variant`` is ``moe`` or ``moe_shared``."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    dtype = torch_dtype(params.get("dtype", "fp32"))
    variant = params.get("variant", "moe")
    hidden = int(params.get("hidden", 16))
    kw: dict[str, Any] = dict(
        num_layers=num_layers, hidden_size=hidden, num_attention_heads=int(params.get("heads", 2)),
        ffn_hidden_size=int(params.get("ffn_hidden", 32)), hidden_dropout=0.0, attention_dropout=0.0,
        add_bias_linear=False, use_cpu_initialization=True, deterministic_mode=True,
        bf16=dtype.is_floating_point and dtype.itemsize == 2, params_dtype=dtype, pipeline_dtype=dtype,
        gradient_accumulation_fusion=False, bias_activation_fusion=False, masked_softmax_fusion=False,
        persist_layer_norm=False, bias_dropout_fusion=False, apply_rope_fusion=False,
    )
    if variant in ("moe", "moe_shared"):
        kw.update(num_moe_experts=int(params.get("experts", 2 * ep)), moe_router_topk=int(params.get("topk", 2)),
                  moe_token_dispatcher_type="alltoall", expert_model_parallel_size=ep, moe_grouped_gemm=False,
                  moe_aux_loss_coeff=float(params.get("aux_loss_coeff", 0.01)),
                  moe_router_load_balancing_type=str(params.get("load_balancing", "aux_loss")))
        if variant == "moe_shared":
            kw.update(moe_shared_expert_intermediate_size=int(params.get("shared_ffn_hidden", 32)))
    elif variant != "dense":
        raise ValueError(f"params.variant: expected dense, moe or moe_shared, got {variant!r}")
    kw.update(extra)
    return TransformerConfig(**kw)


def layer_spec(config: Any) -> Any:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(num_experts=config.num_moe_experts, moe_grouped_gemm=False)
