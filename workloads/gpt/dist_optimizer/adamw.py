"""The per-shard arithmetic of one optimizer step over a rank's buckets: grad norm, clipping,
zero count and Megatron's AdamW (decoupled weight decay, bias-corrected moments). The
cross-rank reductions are the caller's; these functions only touch local shards."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from workloads.gpt.dist_optimizer.buckets import Bucket
from workloads.gpt.dist_optimizer.config import OptimizerConfig


def squared_grad_norm(buckets: Sequence[Bucket]) -> torch.Tensor:
    """Sum of squares (float64) of the local grad shards that count in the norm."""
    sq = torch.zeros((), dtype=torch.float64, device=buckets[0].grad_shard.device)
    for b in buckets:
        if b.count_in_norm:
            g = b.grad_shard
            sq += torch.sum(g * g, dtype=torch.float64)
    return sq


def clip_grads_(buckets: Sequence[Bucket], grad_norm: float, clip_grad: float) -> None:
    """Scale every grad shard by ``clip_grad / (norm + 1e-6)`` when that is below 1."""
    if clip_grad > 0 and math.isfinite(grad_norm):
        coeff = clip_grad / (grad_norm + 1.0e-6)
        if coeff < 1.0:
            for b in buckets:
                b.grad_shard.mul_(coeff)


def count_zeros(buckets: Sequence[Bucket]) -> torch.Tensor:
    """Zeros among the real (non-padding) elements of the grad shards that count in the norm."""
    zeros = torch.zeros((), dtype=torch.int64, device=buckets[0].grad_shard.device)
    for b in buckets:
        if b.count_in_norm:
            zeros += (b.valid & (b.grad_shard == 0)).sum()
    return zeros


def adamw_update_(buckets: Sequence[Bucket], cfg: OptimizerConfig, *, step: int, lr: float) -> None:
    """AdamW step number ``step`` (from 1) on every bucket's fp32 main-param shard."""
    beta1, beta2 = cfg.adam_beta1, cfg.adam_beta2
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    step_size = lr / bias_correction1
    decay_factor = 1 - lr * cfg.weight_decay
    for b in buckets:
        p, g = b.main_param, b.grad_shard
        if cfg.weight_decay != 0:
            p.mul_(torch.where(b.decay, decay_factor, 1.0).to(p.dtype))
        b.exp_avg.lerp_(g, 1 - beta1)
        b.exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (b.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(cfg.adam_eps)
        p.addcdiv_(b.exp_avg, denom, value=-step_size)
