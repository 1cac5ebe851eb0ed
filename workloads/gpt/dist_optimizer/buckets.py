"""Megatron's grad/param buffers: model params laid out into buckets, each a contiguous fp32
grad buffer and model-dtype param buffer (padded to a multiple of the data-parallel size),
with this data-parallel rank's shard of fp32 main params and Adam moments."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
import torch.distributed as dist
from torch import nn

ProcessGroup = Any  # torch.distributed.ProcessGroup (kept loose for older torch stubs)


class Waitable(Protocol):
    """An in-flight collective (``torch.distributed.Work``) or a finished stand-in."""

    def wait(self) -> Any: ...


class DoneWork:
    """Stand-in for a finished collective (data-parallel size 1)."""

    def wait(self) -> bool:
        return True


def started(work: Waitable | None) -> Waitable:
    """The handle of a collective started with ``async_op=True`` (torch types it Optional)."""
    if work is None:
        raise RuntimeError("an asynchronous collective returned no work handle")
    return work


def group_size(group: ProcessGroup | None) -> int:
    if group is None or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def group_rank(group: ProcessGroup | None) -> int:
    if group is None or not dist.is_initialized():
        return 0
    return dist.get_rank(group)


class Bucket:
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
        self.grad_work: Waitable | None = None
        self.gather_work: Waitable | None = None
        self.gather_input: torch.Tensor | None = None
        #: strict param gather: where the all-gather lands until it is waited for
        self.gather_scratch: torch.Tensor | None = None


@dataclass(frozen=True)
class BucketLayout:
    """Every bucket in launch order, the bucket of each param and each param's name (both
    keyed by ``id(param)``)."""

    buckets: list[Bucket]
    where: dict[int, Bucket]
    names: dict[int, str]


def layout_buckets(
    model_chunks: Sequence[nn.Module],
    *,
    bucket_size: int,
    bf16: bool,
    shared_param: nn.Parameter | None,
    shared_counts: bool,
    dp_size: int,
    dp_rank: int,
    distributed: bool,
) -> BucketLayout:
    """Lay every chunk's trainable params out, in reverse order (the order backward produces
    their grads), into buckets of about ``bucket_size`` elements; the tied embedding
    ``shared_param`` gets a bucket of its own (counted in norm/zeros if ``shared_counts``)."""
    expected = torch.bfloat16 if bf16 else torch.float32
    layout = BucketLayout(buckets=[], where={}, names={})

    def add(chunk: int, params: list[nn.Parameter], *, shared: bool, count_in_norm: bool) -> None:
        b = Bucket(len(layout.buckets), chunk, params, dp_size=dp_size, dp_rank=dp_rank,
                   distributed=distributed, shared=shared, count_in_norm=count_in_norm)
        layout.buckets.append(b)
        for p in params:
            layout.where[id(p)] = b

    seen: set[int] = set()
    found_shared = False
    for c, chunk in enumerate(model_chunks):
        named = [(n, p) for n, p in chunk.named_parameters() if p.requires_grad and id(p) not in seen]
        for n, p in named:
            seen.add(id(p))
            layout.names[id(p)] = f"chunk{c}.{n}"
            if p.dtype != expected:
                raise ValueError(f"param chunk{c}.{n} is {p.dtype}, but bf16={bf16} needs {expected} model params")
        regular = []
        for n, p in reversed(named):
            if shared_param is not None and p is shared_param:
                found_shared = True
                add(c, [p], shared=True, count_in_norm=shared_counts)
            else:
                regular.append(p)
        current: list[nn.Parameter] = []
        size = 0
        for p in regular:
            current.append(p)
            size += p.numel()
            if size >= bucket_size:
                add(c, current, shared=False, count_in_norm=True)
                current, size = [], 0
        if current:
            add(c, current, shared=False, count_in_norm=True)
    if shared_param is not None and not found_shared:
        raise ValueError("shared_embedding parameter is not a trainable parameter of model_chunks")
    return layout
