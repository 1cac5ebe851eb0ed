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
order, only at a different time; ``tests/test_gpt_dist_optimizer.py`` checks that bitwise.

Strict param gather (a debug mode, on by default without CUDA): on gloo an asynchronous
all-gather has usually finished by the time anybody looks, so a forward that forgets to wait
for its bucket reads the right values by luck and the bug stays invisible. In strict mode the
gather lands in a scratch buffer and is copied into the param buffer only when it is waited
for, so a missed wait reads the previous step's parameters every time (and the run's loss
curve leaves the golden). The numbers of a correct run are unchanged (the same values are
copied). ``RUNNER_STRICT_PARAM_GATHER=0|1`` overrides the default.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

ProcessGroup = Any  # torch.distributed.ProcessGroup (kept loose for older torch stubs)

#: environment switch of the strict param-gather debug mode (see the module docstring)
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


def _group_size(group: ProcessGroup | None) -> int:
    if group is None or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def _group_rank(group: ProcessGroup | None) -> int:
    if group is None or not dist.is_initialized():
        return 0
    return dist.get_rank(group)


class _Bucket:
    """One contiguous slice of params: fp32 grad buffer, model-dtype param buffer, the local
    shard's fp32 main params and Adam moments, and its in-flight collectives."""

    #: debug-only buffers the CPU memory metrics leave out (a real run does not hold them)
    untracked_attributes = ("gather_scratch",)

    def __init__(
        self,
        index: int,
        chunk: int,
        params: list[nn.Parameter],
        *,
        dp_size: int,
        dp_rank: int,
        distributed: bool,
        shared: bool,
        count_in_norm: bool,
    ) -> None:
        self.index = index
        self.chunk = chunk
        self.params = params
        self.shared = shared
        self.count_in_norm = count_in_norm
        device, dtype = params[0].device, params[0].dtype
        self.offsets: dict[int, tuple[int, int]] = {}
        off = 0
        for p in params:
            self.offsets[id(p)] = (off, p.numel())
            off += p.numel()
        self.numel = off
        self.padded = math.ceil(off / dp_size) * dp_size
        self.grad_buffer = torch.zeros(self.padded, dtype=torch.float32, device=device)
        self.param_buffer = torch.zeros(self.padded, dtype=dtype, device=device)
        for p in params:
            start, n = self.offsets[id(p)]
            view = self.param_buffer[start : start + n]
            view.copy_(p.detach().reshape(-1))
            p.data = view.view_as(p)
            p.main_grad = self.grad_buffer[start : start + n].view_as(p)  # type: ignore[attr-defined]
        if distributed and dp_size > 1:
            shard = self.padded // dp_size
            self.shard_start, self.shard_end = dp_rank * shard, (dp_rank + 1) * shard
            # reduce-scatter output (kept apart from the input buffer: no aliasing on any backend)
            self.grad_shard = torch.zeros(shard, dtype=torch.float32, device=device)
        else:
            self.shard_start, self.shard_end = 0, self.padded
            self.grad_shard = self.grad_buffer
        shard_len = self.shard_end - self.shard_start
        self.main_param = self.param_buffer[self.shard_start : self.shard_end].to(torch.float32).clone()
        self.exp_avg = torch.zeros(shard_len, dtype=torch.float32, device=device)
        self.exp_avg_sq = torch.zeros(shard_len, dtype=torch.float32, device=device)
        # Per-element masks over the shard: real (non-padding) elements, and those that get
        # weight decay (Megatron: no decay for 1-D params, i.e. biases and norm weights).
        self.valid = torch.zeros(shard_len, dtype=torch.bool, device=device)
        self.decay = torch.zeros(shard_len, dtype=torch.bool, device=device)
        for p in params:
            start, n = self.offsets[id(p)]
            lo, hi = max(start, self.shard_start), min(start + n, self.shard_end)
            if lo < hi:
                self.valid[lo - self.shard_start : hi - self.shard_start] = True
                if p.dim() > 1:
                    self.decay[lo - self.shard_start : hi - self.shard_start] = True
        self.ready: set[int] = set()
        self.grad_work: Any = None
        self.gather_work: Any = None
        self.gather_input: torch.Tensor | None = None
        #: strict param gather: where the all-gather lands until it is waited for
        self.gather_scratch: torch.Tensor | None = None


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
        model_chunks: list[nn.Module],
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
        self.dp_size = _group_size(dp_group)
        self.dp_rank = _group_rank(dp_group)
        self.mp_size = _group_size(mp_group)
        self.pp_rank = _group_rank(mp_group) if pp_rank is None else pp_rank
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
        if self._embedding_group is not None and dist.is_initialized() and _group_size(self._embedding_group) > 1:
            # the copy on the first stage (lowest rank of the group) counts in norm/zeros
            shared_counts = dist.get_rank() == min(dist.get_process_group_ranks(self._embedding_group))

        expected = torch.bfloat16 if config.bf16 else torch.float32
        self.buckets: list[_Bucket] = []
        self._where: dict[int, _Bucket] = {}
        self._names: dict[int, str] = {}
        seen: set[int] = set()
        found_shared = False
        for c, chunk in enumerate(self.model_chunks):
            named = [(n, p) for n, p in chunk.named_parameters() if p.requires_grad and id(p) not in seen]
            for n, p in named:
                seen.add(id(p))
                self._names[id(p)] = f"chunk{c}.{n}"
                if p.dtype != expected:
                    raise ValueError(
                        f"param chunk{c}.{n} is {p.dtype}, but bf16={config.bf16} needs {expected} model params"
                    )
            regular = []
            for n, p in reversed(named):
                if self._shared_param is not None and p is self._shared_param:
                    found_shared = True
                    self._add_bucket(c, [p], shared=True, count_in_norm=shared_counts)
                else:
                    regular.append(p)
            current: list[nn.Parameter] = []
            size = 0
            for p in regular:
                current.append(p)
                size += p.numel()
                if size >= config.bucket_size:
                    self._add_bucket(c, current, shared=False, count_in_norm=True)
                    current, size = [], 0
            if current:
                self._add_bucket(c, current, shared=False, count_in_norm=True)
        if self._shared_param is not None and not found_shared:
            raise ValueError("shared_embedding parameter is not a trainable parameter of model_chunks")

        self._last_microbatch = [False] * len(self.model_chunks)
        self._grads_synced = False
        self._hooks: list[Any] = []
        self._gather_wait_hooks: list[Any] = []
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

    # ------------------------------------------------------------------ construction helpers
    def _add_bucket(self, chunk: int, params: list[nn.Parameter], *, shared: bool, count_in_norm: bool) -> None:
        b = _Bucket(
            len(self.buckets), chunk, params, dp_size=self.dp_size, dp_rank=self.dp_rank,
            distributed=self.distributed, shared=shared, count_in_norm=count_in_norm,
        )
        self.buckets.append(b)
        for p in params:
            self._where[id(p)] = b

    def _make_grad_hook(self, param: nn.Parameter, bucket: _Bucket) -> Callable[[torch.Tensor], None]:
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

    def _make_gather_wait_hook(self, indices: list[int]) -> Callable[..., None]:
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

    def _launch_grad_reduce(self, b: _Bucket) -> None:
        if self.trace is not None:
            self.trace.append(("launch", b.index))
        if self.dp_size > 1:
            b.grad_buffer.mul_(1.0 / self.dp_size)
        if self.dp_size == 1:
            b.grad_work = _DoneWork()
        elif self.distributed:
            b.grad_work = dist.reduce_scatter_tensor(b.grad_shard, b.grad_buffer, group=self.dp_group, async_op=True)
        else:
            b.grad_work = dist.all_reduce(b.grad_buffer, group=self.dp_group, async_op=True)

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
                if _group_size(self._embedding_group) > 1:
                    dist.all_reduce(b.grad_buffer, group=self._embedding_group)
                self._launch_grad_reduce(b)
        for b in self.buckets:
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
        cfg = self.config
        device = self.buckets[0].grad_shard.device
        sq = torch.zeros((), dtype=torch.float64, device=device)
        for b in self.buckets:
            if b.count_in_norm:
                g = b.grad_shard
                sq += torch.sum(g * g, dtype=torch.float64)
        grad_norm = float(self._all_reduce_model(sq).sqrt())
        if cfg.clip_grad > 0 and math.isfinite(grad_norm):
            coeff = cfg.clip_grad / (grad_norm + 1.0e-6)
            if coeff < 1.0:
                for b in self.buckets:
                    b.grad_shard.mul_(coeff)
        zeros = torch.zeros((), dtype=torch.int64, device=device)
        for b in self.buckets:
            if b.count_in_norm:
                zeros += (b.valid & (b.grad_shard == 0)).sum()
        num_zeros = int(self._all_reduce_model(zeros))
        if not math.isfinite(grad_norm):
            return StepStats(grad_norm=grad_norm, num_zeros=num_zeros, skipped=True)

        self.step_count += 1
        beta1, beta2 = cfg.adam_beta1, cfg.adam_beta2
        bias_correction1 = 1 - beta1**self.step_count
        bias_correction2_sqrt = (1 - beta2**self.step_count) ** 0.5
        step_size = lr / bias_correction1
        decay_factor = 1 - lr * cfg.weight_decay
        for b in self.buckets:
            p, g = b.main_param, b.grad_shard
            if cfg.weight_decay != 0:
                p.mul_(torch.where(b.decay, decay_factor, 1.0).to(p.dtype))
            b.exp_avg.lerp_(g, 1 - beta1)
            b.exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (b.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(cfg.adam_eps)
            p.addcdiv_(b.exp_avg, denom, value=-step_size)
        self._gather_params(async_op=cfg.overlap_param_gather)
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
            b.gather_work = dist.all_gather_into_tensor(
                target, b.gather_input, group=self.dp_group, async_op=True
            )
            if not async_op:
                self._wait_gather(b)

    def _wait_gather(self, b: _Bucket) -> None:
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


class _DoneWork:
    """Stand-in for a finished collective (data-parallel size 1)."""

    def wait(self) -> bool:
        return True
