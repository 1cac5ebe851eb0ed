"""Megatron-style distributed optimizer: bucketed fp32 grad buffers, reduce-scatter, sharded
AdamW, all-gather — with optional overlap of the grad reduce (during backward) and of the
param gather (during the next forward).

Why it is built this way (Megatron's ``ParamAndGradBuffer`` + ``DistributedOptimizer``):

* Every model chunk's trainable params are laid out, in reverse order (the order backward
  produces their grads), into buckets of about ``bucket_size`` elements. Each bucket owns a
  contiguous fp32 grad buffer and a contiguous param buffer in the model dtype, both padded
  to a multiple of the data-parallel size; every param's ``.data`` becomes a view into the
  param buffer and ``param.main_grad`` a view into the grad buffer.
* A post-accumulate-grad hook adds ``param.grad`` into ``main_grad`` and frees ``param.grad``
  (fp32 accumulation across micro-batches, also in bf16 runs).
* Data-parallel rank ``r`` owns shard ``r`` of every bucket: it keeps fp32 main params and
  Adam moments for that shard only. ``finish_grad_sync`` (or, with
  ``overlap_grad_reduce``, the hook that sees a bucket's last grad) reduce-scatters the
  bucket (grads pre-scaled by ``1/dp``: Megatron's average); ``step`` updates the shard and
  all-gathers the updated shards back into the param buffer (asynchronously with
  ``overlap_param_gather``; a forward pre-hook on the modules that own a bucket's params
  waits for its gather just before they are used).
* With ``use_distributed_optimizer=False`` the same buffers are all-reduced instead and every
  rank runs the full AdamW (plain DDP).
* The tied word embedding that lives on the first and last pipeline stage
  (``shared_embedding``) sits in a bucket of its own; its full grad is all-reduced over the
  embedding group before its data-parallel reduce — never from a hook, because the two
  stages finish backward at different times.

Overlap never changes the numbers: the same collectives run on the same buffers in the same
order, only at a different time; ``tests/workloads/test_gpt_dist_optimizer.py`` checks that bitwise.

Strict param gather (a debug mode, on by default without CUDA): on gloo an asynchronous
all-gather has usually finished by the time anybody looks, so a forward that forgets to wait
for its bucket reads the right values by luck and the bug stays invisible. In strict mode the
gather lands in a scratch buffer and is copied into the param buffer only when it is waited
for, so a missed wait reads the previous step's parameters every time (and the run's loss
curve leaves the golden). The numbers of a correct run are unchanged (the same values are
copied). ``RUNNER_STRICT_PARAM_GATHER=0|1`` overrides the default.
"""
from __future__ import annotations

from workloads.gpt.dist_optimizer.config import (
    STRICT_GATHER_ENV,
    OptimizerConfig,
    StepStats,
    strict_gather_default,
)
from workloads.gpt.dist_optimizer.optimizer import DistributedOptimizer

__all__ = ["STRICT_GATHER_ENV", "DistributedOptimizer", "OptimizerConfig", "StepStats", "strict_gather_default"]
