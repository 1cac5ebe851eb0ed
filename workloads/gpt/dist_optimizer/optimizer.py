"""``DistributedOptimizer``: the grad hooks, bucket reduces, step and param gathers over the
buckets of ``buckets.py`` (the design is described in the package docstring)."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

from workloads.gpt.dist_optimizer.adamw import adamw_update_, clip_grads_, count_zeros, squared_grad_norm
from workloads.gpt.dist_optimizer.buckets import (
    Bucket,
    DoneWork,
    ProcessGroup,
    group_rank,
    group_size,
    layout_buckets,
    started,
)
from workloads.gpt.dist_optimizer.config import OptimizerConfig, StepStats, strict_gather_default


class DistributedOptimizer:
    """Sharded (or replicated) AdamW over ``model_chunks`` with Megatron's grad/param buffers.

    ``model_chunks``: this rank's (virtual) pipeline stage modules in forward order.
    ``dp_group``: the data-parallel group; ``mp_group``: the model-parallel group (pipeline
    stages of this data-parallel replica) over which the grad norm is also reduced (``None``:
    no model parallelism). ``shared_embedding``: the tied word-embedding parameter and the
    group of first/last pipeline stages holding a copy of it. ``pp_rank`` names the stage in
    state-dict keys (default: this rank's index in ``mp_group``).

    Per iteration: ``zero_grad()``; forward/backward of every micro-batch, calling
    ``set_is_last_microbatch(True)`` before the last one's backward (per chunk with
    ``chunk=`` under an interleaved schedule); ``finish_grad_sync()``; ``step(lr)``.
    """

    def __init__(
        self,
        model_chunks: Sequence[nn.Module],
        config: OptimizerConfig,
        *,
        dp_group: ProcessGroup | None,
        mp_group: ProcessGroup | None,
        shared_embedding: tuple[nn.Parameter, ProcessGroup] | None = None,
        pp_rank: int | None = None,
    ) -> None:
        if not model_chunks:
            raise ValueError("DistributedOptimizer needs at least one model chunk")
        self.config = config
        self.model_chunks = list(model_chunks)
        self.dp_group = dp_group
        self.mp_group = mp_group
        self.dp_size = group_size(dp_group)
        self.dp_rank = group_rank(dp_group)
        self.mp_size = group_size(mp_group)
        self.pp_rank = group_rank(mp_group) if pp_rank is None else pp_rank
        self.distributed = config.use_distributed_optimizer
        self.strict_param_gather = (strict_gather_default() if config.strict_param_gather is None
                                    else bool(config.strict_param_gather))
        self.step_count = 0
        #: optional event log (set to a list to record ("grad", name) / ("launch", bucket) /
        #: ("gather_wait", bucket) in the order they happen; used by tests and benchmarks)
        self.trace: list[tuple[str, Any]] | None = None

        self._shared_param = shared_embedding[0] if shared_embedding is not None else None
        self._embedding_group = shared_embedding[1] if shared_embedding is not None else None
        shared_counts = True
        if self._embedding_group is not None and dist.is_initialized() and group_size(self._embedding_group) > 1:
            # the copy on the first stage (lowest rank of the group) counts in norm/zeros
            shared_counts = dist.get_rank() == min(dist.get_process_group_ranks(self._embedding_group))

        layout = layout_buckets(
            self.model_chunks, bucket_size=config.bucket_size, bf16=config.bf16, shared_param=self._shared_param,
            shared_counts=shared_counts, dp_size=self.dp_size, dp_rank=self.dp_rank, distributed=self.distributed,
        )
        self.buckets: list[Bucket] = layout.buckets
        self._where = layout.where
        self._names = layout.names

        self._last_microbatch = [False] * len(self.model_chunks)
        self._grads_synced = False
        self._hooks: list[RemovableHandle] = []
        self._gather_wait_hooks: list[RemovableHandle] = []
        for b in self.buckets:
            for p in b.params:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._make_grad_hook(p, b)))
        if config.overlap_param_gather and self.distributed and self.dp_size > 1:
            for chunk in self.model_chunks:
                for module in chunk.modules():
                    owned = {self._where[id(p)].index for p in module.parameters(recurse=False) if id(p) in self._where}
                    if owned:
                        self._gather_wait_hooks.append(
                            module.register_forward_pre_hook(self._make_gather_wait_hook(sorted(owned))))
            self._hooks.extend(self._gather_wait_hooks)

    # ------------------------------------------------------------------ hooks
    def _make_grad_hook(self, param: nn.Parameter, bucket: Bucket) -> Callable[[torch.Tensor], None]:
        pid = id(param)

        def hook(p: torch.Tensor) -> None:
            if p.grad is None:
                return
            if bucket.grad_work is not None or pid in bucket.ready:
                raise RuntimeError(
                    f"gradient for {self._names[pid]} arrived after its final micro-batch gradient "
                    "(call zero_grad() at the start of every iteration, and set_is_last_microbatch(True) "
                    "only before the last backward of the param's chunk)"
                )
            p.main_grad.add_(p.grad)  # type: ignore[attr-defined]
            p.grad = None
            if self.trace is not None:
                self.trace.append(("grad", self._names[pid]))
            if self._last_microbatch[bucket.chunk]:
                bucket.ready.add(pid)
                if (
                    self.config.overlap_grad_reduce
                    and not bucket.shared
                    and len(bucket.ready) == len(bucket.params)
                ):
                    self._launch_grad_reduce(bucket)

        return hook

    def _make_gather_wait_hook(self, indices: list[int]) -> Callable[[nn.Module, Any], None]:
        def pre_hook(module: nn.Module, args: Any) -> None:
            for i in indices:
                self._wait_gather(self.buckets[i])

        return pre_hook

    # ------------------------------------------------------------------ gradient side
    def zero_grad(self) -> None:
        """Zero every grad buffer and reset the per-iteration reduce state."""
        for b in self.buckets:
            if b.grad_work is not None:
                b.grad_work.wait()
                b.grad_work = None
            b.grad_buffer.zero_()
            if b.grad_shard is not b.grad_buffer:
                b.grad_shard.zero_()
            b.ready.clear()
            for p in b.params:
                p.grad = None
        self._last_microbatch = [False] * len(self.model_chunks)
        self._grads_synced = False

    def set_is_last_microbatch(self, flag: bool, chunk: int | None = None) -> None:
        """Mark the coming backward as the last micro-batch's (for ``chunk``, or all chunks):
        only then may buckets be launched (and, with overlap, they are, from the hooks)."""
        if chunk is None:
            self._last_microbatch = [bool(flag)] * len(self.model_chunks)
        else:
            self._last_microbatch[chunk] = bool(flag)

    def _launch_grad_reduce(self, b: Bucket) -> None:
        if self.trace is not None:
            self.trace.append(("launch", b.index))
        if self.dp_size > 1:
            b.grad_buffer.mul_(1.0 / self.dp_size)
        if self.dp_size == 1:
            b.grad_work = DoneWork()
        elif self.distributed:
            b.grad_work = started(
                dist.reduce_scatter_tensor(b.grad_shard, b.grad_buffer, group=self.dp_group, async_op=True))
        else:
            b.grad_work = started(dist.all_reduce(b.grad_buffer, group=self.dp_group, async_op=True))

    def finish_grad_sync(self) -> None:
        """Launch every bucket not launched yet, the tied-embedding bucket last (after its
        all-reduce over the embedding group), and wait for all of them."""
        if self._grads_synced:
            return
        for b in self.buckets:
            if b.grad_work is None and not b.shared:
                self._launch_grad_reduce(b)
        for b in self.buckets:
            if b.shared:
                if group_size(self._embedding_group) > 1:
                    dist.all_reduce(b.grad_buffer, group=self._embedding_group)
                self._launch_grad_reduce(b)
        for b in self.buckets:
            assert b.grad_work is not None, "every bucket was launched above"
            b.grad_work.wait()
            b.grad_work = None
        self._grads_synced = True

    # ------------------------------------------------------------------ update
    def _all_reduce_model(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed and self.dp_size > 1:
            dist.all_reduce(t, group=self.dp_group)
        if self.mp_size > 1:
            dist.all_reduce(t, group=self.mp_group)
        return t

    @torch.no_grad()
    def step(self, lr: float) -> StepStats:
        """Clip, count zeros, AdamW-update the local shard with ``lr``, gather params back."""
        self.finish_param_sync()
        self.finish_grad_sync()
        grad_norm = float(self._all_reduce_model(squared_grad_norm(self.buckets)).sqrt())
        clip_grads_(self.buckets, grad_norm, self.config.clip_grad)
        num_zeros = int(self._all_reduce_model(count_zeros(self.buckets)))
        if not math.isfinite(grad_norm):
            return StepStats(grad_norm=grad_norm, num_zeros=num_zeros, skipped=True)
        self.step_count += 1
        adamw_update_(self.buckets, self.config, step=self.step_count, lr=lr)
        self._gather_params(async_op=self.config.overlap_param_gather)
        return StepStats(grad_norm=grad_norm, num_zeros=num_zeros, skipped=False)

    # ------------------------------------------------------------------ param side
    def _gather_params(self, *, async_op: bool) -> None:
        for b in self.buckets:
            if not self.distributed or self.dp_size == 1:
                b.param_buffer[b.shard_start : b.shard_end].copy_(b.main_param)
                continue
            # main_param itself is not written again before this gather is waited for
            # (step() and load_sharded_state_dict() call finish_param_sync() first)
            b.gather_input = b.main_param.to(b.param_buffer.dtype)
            target = b.param_buffer
            if self.strict_param_gather:
                if b.gather_scratch is None:
                    b.gather_scratch = torch.empty_like(b.param_buffer)
                target = b.gather_scratch
            b.gather_work = started(
                dist.all_gather_into_tensor(target, b.gather_input, group=self.dp_group, async_op=True))
            if not async_op:
                self._wait_gather(b)

    def _wait_gather(self, b: Bucket) -> None:
        if b.gather_work is not None:
            if self.trace is not None:
                self.trace.append(("gather_wait", b.index))
            b.gather_work.wait()
            if self.strict_param_gather and b.gather_scratch is not None:
                b.param_buffer.copy_(b.gather_scratch)   # the only way gathered values reach the params
            b.gather_work = None
            b.gather_input = None

    def finish_param_sync(self) -> None:
        """Wait for every outstanding param all-gather (before saving or evaluating)."""
        for b in self.buckets:
            self._wait_gather(b)

    # ------------------------------------------------------------------ state
    def _key(self, bucket: int | None, name: str) -> str:
        base = f"optimizer.pp{self.pp_rank}.dp{self.dp_rank}"
        return f"{base}.{name}" if bucket is None else f"{base}.bucket{bucket}.{name}"

    def sharded_state_dict(self) -> dict[str, Any]:
        """This rank's fp32 main-param and Adam shards (the live tensors) and the step count,
        under keys unique per (pp stage, dp rank) — what each rank writes to a checkpoint."""
        self.finish_param_sync()
        sd: dict[str, Any] = {self._key(None, "step"): int(self.step_count)}
        for b in self.buckets:
            sd[self._key(b.index, "param")] = b.main_param
            sd[self._key(b.index, "exp_avg")] = b.exp_avg
            sd[self._key(b.index, "exp_avg_sq")] = b.exp_avg_sq
        return sd

    @torch.no_grad()
    def load_sharded_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore main params, moments and step from ``sd`` and re-gather the model params
        from the loaded main params, so model and optimizer agree."""
        self.finish_param_sync()
        missing = [k for k in self.sharded_state_dict() if k not in sd]
        if missing:
            raise KeyError(f"optimizer state is missing {len(missing)} keys, e.g. {missing[0]}")
        for b in self.buckets:
            for name in ("param", "exp_avg", "exp_avg_sq"):
                src = sd[self._key(b.index, name)]
                dst = getattr(b, "main_param" if name == "param" else name)
                if tuple(src.shape) != tuple(dst.shape):
                    raise ValueError(
                        f"{self._key(b.index, name)}: shape {tuple(src.shape)} does not match {tuple(dst.shape)}"
                    )
                if src is not dst:
                    dst.copy_(src)
        self.step_count = int(sd[self._key(None, "step")])
        self._gather_params(async_op=False)

    def remove_hooks(self) -> None:
        """Detach every hook this optimizer registered on the model."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._gather_wait_hooks.clear()

    def drop_gather_wait_hooks(self) -> int:
        """Detach the forward pre-hooks that wait for a bucket's param all-gather (the planted
        fault ``skip_param_gather_wait``); returns how many were removed."""
        for h in self._gather_wait_hooks:
            h.remove()
            self._hooks.remove(h)
        n = len(self._gather_wait_hooks)
        self._gather_wait_hooks.clear()
        return n
