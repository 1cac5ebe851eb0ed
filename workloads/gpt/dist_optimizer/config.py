"""The distributed optimizer's arguments (Megatron's names and defaults), what one step
reports, and the default of the strict param-gather debug mode (see the package docstring)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

#: environment switch of the strict param-gather debug mode
STRICT_GATHER_ENV = "RUNNER_STRICT_PARAM_GATHER"


def strict_gather_default() -> bool:
    """Strict param gather unless ``RUNNER_STRICT_PARAM_GATHER`` says otherwise: on without
    CUDA (where a missed wait is otherwise invisible), off on GPUs."""
    value = os.environ.get(STRICT_GATHER_ENV)
    if value is not None:
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return not torch.cuda.is_available()


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer arguments with Megatron's names and defaults."""

    lr: float
    weight_decay: float
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    bf16: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    bucket_size: int = 40000
    use_distributed_optimizer: bool = True
    #: debug mode: gathers land in a scratch buffer, copied in on wait (None: ``strict_gather_default()``)
    strict_param_gather: bool | None = None

    def __post_init__(self) -> None:
        if self.bucket_size < 1:
            raise ValueError(f"bucket_size must be >= 1 element, got {self.bucket_size}")
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0):
            raise ValueError(f"adam betas must be in [0, 1), got {self.adam_beta1}, {self.adam_beta2}")
        if self.adam_eps <= 0:
            raise ValueError(f"adam_eps must be > 0, got {self.adam_eps}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class StepStats:
    """What one ``step`` did: the global grad norm before clipping, zeros in the clipped
    grads (whole model, Megatron's ``num-zeros``), and whether the update was skipped
    (non-finite grad norm)."""

    grad_norm: float
    num_zeros: int
    skipped: bool
