"""Learning-rate schedule with Megatron-LM's OptimizerParamScheduler semantics.

Steps are counted in samples, as Megatron does for iteration-based training: the scheduler
is created at step 0 and advanced by ``global_batch_size`` after every iteration, so
iteration ``i`` (1-based) trains with ``get_lr()`` at ``num_steps = (i - 1) * gbs``.

- warmup: ``lr_warmup_steps = lr_warmup_fraction * lr_decay_steps`` (or
  ``lr_warmup_iters * gbs``); while ``num_steps <= warmup`` the lr rises linearly from
  ``init_lr`` (0) to ``max_lr`` — the first iteration therefore trains with lr 0, as in Megatron;
- then decay to ``min_lr`` over ``lr_decay_steps = lr_decay_iters * gbs``: cosine
  ``min + (max - min) * 0.5 * (cos(pi * ratio) + 1)``, linear, or constant;
- past the decay steps: ``min_lr``.

``state_dict``/``load_state_dict`` carry ``num_steps`` and the hyper-parameters, and loading
checks the hyper-parameters match (Megatron's ``use_checkpoint_opt_param_scheduler`` takes the
checkpoint's values; here a mismatch is an error, because a resume test must not silently
train a different schedule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from workloads.gpt.config import GPTConfig


@dataclass(frozen=True)
class ScheduleParams:
    max_lr: float
    min_lr: float
    init_lr: float
    warmup_steps: int
    decay_steps: int
    decay_style: str

    @classmethod
    def from_config(cls, cfg: GPTConfig) -> "ScheduleParams":
        decay_steps = cfg.decay_iters * cfg.global_batch_size
        if cfg.lr_warmup_fraction is not None:
            warmup = int(cfg.lr_warmup_fraction * decay_steps)
        else:
            warmup = cfg.lr_warmup_iters * cfg.global_batch_size
        return cls(cfg.lr, cfg.min_lr, 0.0, warmup, decay_steps, cfg.lr_decay_style)


class OptimizerParamScheduler:
    def __init__(self, params: ScheduleParams) -> None:
        if params.decay_steps <= 0:
            raise ValueError("lr decay steps must be positive")
        if params.warmup_steps >= params.decay_steps and params.decay_style != "constant":
            raise ValueError(f"warmup steps {params.warmup_steps} must be < decay steps {params.decay_steps}")
        self.params = params
        self.num_steps = 0

    def get_lr(self) -> float:
        p = self.params
        if p.warmup_steps > 0 and self.num_steps <= p.warmup_steps:
            return p.init_lr + (p.max_lr - p.init_lr) * float(self.num_steps) / float(p.warmup_steps)
        if p.decay_style == "constant":
            return p.max_lr
        if self.num_steps > p.decay_steps:
            return p.min_lr
        ratio = float(self.num_steps - p.warmup_steps) / float(p.decay_steps - p.warmup_steps)
        assert 0.0 <= ratio <= 1.0
        delta = p.max_lr - p.min_lr
        if p.decay_style == "linear":
            coeff = 1.0 - ratio
        else:  # cosine
            coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return p.min_lr + coeff * delta

    def step(self, increment: int) -> float:
        self.num_steps += increment
        return self.get_lr()

    def state_dict(self) -> dict[str, Any]:
        p = self.params
        return {"num_steps": self.num_steps, "max_lr": p.max_lr, "min_lr": p.min_lr,
                "lr_warmup_steps": p.warmup_steps, "lr_decay_steps": p.decay_steps,
                "lr_decay_style": p.decay_style}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        mine = self.state_dict()
        for key in ("max_lr", "min_lr", "lr_warmup_steps", "lr_decay_steps", "lr_decay_style"):
            if key in sd and sd[key] != mine[key]:
                raise ValueError(f"lr scheduler: checkpoint has {key}={sd[key]!r}, this run has {mine[key]!r}")
        self.num_steps = int(sd["num_steps"])
