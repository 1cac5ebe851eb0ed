"""Expert-parallel token dispatcher: routing metadata, the counts exchange and all-to-all.

Expert ``e`` lives on rank ``e // local_experts``. A rank permutes its (token, k) rows so
that they are sorted by expert (hence by destination rank), exchanges the per-expert row
counts with every rank first (a small all-to-all), and then sends the rows with
``all_to_all_single`` using uneven split sizes. The combine is the same all-to-all with the
split sizes swapped. A rank may send or receive zero rows.

Two ways to move rows:

* ``AllToAll`` — a synchronous autograd function (backward = the reverse all-to-all), used by
  the sequential reference run;
* ``Communicator.all_to_all`` — an asynchronous launch returning a ``Pending`` result: gloo
  ``async_op=True`` on CPU, a dedicated communication CUDA stream plus an event on GPU. Used
  by the schedule's communication nodes so that they overlap the compute next to them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Routing:
    """Where this rank's (token, k) rows go, and what it receives, for one microbatch."""

    num_tokens: int
    topk: int
    #: permutation of the flattened (token, k) rows that sorts them by expert (stable)
    order: torch.Tensor
    #: inverse permutation of ``order``: puts expert-sorted rows back in (token, k) order
    inverse_order: torch.Tensor
    #: rows this rank sends to each rank (len = world size)
    input_splits: tuple[int, ...]
    #: rows this rank receives from each rank (len = world size), filled by exchange_counts
    output_splits: tuple[int, ...] = ()
    #: [world, local_experts]: rows received from each source rank for each local expert
    recv_counts: torch.Tensor | None = None

    @property
    def rows_sent(self) -> int:
        return sum(self.input_splits)

    @property
    def rows_received(self) -> int:
        return sum(self.output_splits)


def make_routing(topk_idx: torch.Tensor, num_experts: int, world_size: int) -> tuple[Routing, torch.Tensor]:
    """Routing metadata from the router's [tokens, k] expert indices; also the per-expert counts."""
    num_tokens, topk = topk_idx.shape
    flat = topk_idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    counts = torch.bincount(flat, minlength=num_experts)
    local = num_experts // world_size
    input_splits = tuple(int(c) for c in counts.view(world_size, local).sum(1).tolist())
    return Routing(num_tokens, topk, order, inverse, input_splits), counts


def exchange_counts(routing: Routing, counts: torch.Tensor, group: dist.ProcessGroup | None = None) -> Routing:
    """Send every rank the number of rows it will get for each of its experts (synchronous:
    the token all-to-all needs these split sizes on the host)."""
    world = dist.get_world_size(group)
    recv = torch.empty_like(counts)
    dist.all_to_all_single(recv, counts, group=group)
    recv = recv.view(world, -1)
    output_splits = tuple(int(c) for c in recv.sum(1).tolist())
    return Routing(routing.num_tokens, routing.topk, routing.order, routing.inverse_order,
                   routing.input_splits, output_splits, recv.cpu())


def local_expert_order(recv_counts: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """Received rows come as [source rank][local expert]; the permutation that groups them by
    local expert (stable, so rows keep their source order) and each local expert's row count."""
    world, local = recv_counts.shape
    expert_of_row = torch.repeat_interleave(torch.arange(local).repeat(world), recv_counts.reshape(-1))
    perm = torch.argsort(expert_of_row, stable=True).to(device)
    return perm, [int(c) for c in recv_counts.sum(0).tolist()]


def _a2a(out: torch.Tensor, inp: torch.Tensor, out_splits: Sequence[int], in_splits: Sequence[int],
         group: dist.ProcessGroup | None = None) -> None:
    dist.all_to_all_single(out, inp.contiguous(), list(out_splits), list(in_splits), group=group)


def _a2a_async(out: torch.Tensor, inp: torch.Tensor, out_splits: Sequence[int], in_splits: Sequence[int],
               group: dist.ProcessGroup | None) -> dist.Work:
    work = dist.all_to_all_single(out, inp.contiguous(), list(out_splits), list(in_splits), group=group,
                                  async_op=True)
    assert work is not None   # async_op=True returns the work handle
    return work


class AllToAll(torch.autograd.Function):
    """Synchronous, differentiable all-to-all of rows: backward sends gradients back."""

    @staticmethod
    def forward(ctx: Any, inp: torch.Tensor, out_splits: Sequence[int], in_splits: Sequence[int],
                group: dist.ProcessGroup | None = None) -> torch.Tensor:
        ctx.splits, ctx.group = (tuple(out_splits), tuple(in_splits)), group
        out = inp.new_empty((sum(out_splits),) + tuple(inp.shape[1:]))
        _a2a(out, inp, out_splits, in_splits, group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits),) + tuple(grad.shape[1:]))
        _a2a(back, grad, in_splits, out_splits, ctx.group)
        return back, None, None, None


def all_to_all(inp: torch.Tensor, out_splits: Sequence[int], in_splits: Sequence[int],
               group: dist.ProcessGroup | None = None) -> torch.Tensor:
    out: torch.Tensor = AllToAll.apply(inp, tuple(out_splits), tuple(in_splits), group)
    return out


class Pending:
    """A tensor that may still be in flight: ``wait()`` returns it once it is usable here.

    ``then`` (optional) computes what ``wait()`` returns, once, after the communication
    completed (e.g. the combine node's post-processing), in the waiting thread/stream; a
    ``Pending`` without a value has one (a node whose work all happens at the wait).
    """

    def __init__(self, value: torch.Tensor | None, *, work: dist.Work | None = None,
                 event: torch.cuda.Event | None = None, keep: tuple[torch.Tensor, ...] = (),
                 then: Callable[[], torch.Tensor] | None = None,
                 on_wait: Callable[[], None] | None = None, land: Callable[[], None] | None = None) -> None:
        if value is None and then is None:
            raise ValueError("a Pending needs a value or a computation to run at the wait")
        self._value, self._work, self._event, self._keep = value, work, event, keep
        self._then, self._land = then, land
        self._on_wait: list[Callable[[], None]] = [on_wait] if on_wait is not None else []
        self._done = work is None and event is None and then is None
        self._result = value

    @classmethod
    def ready(cls, value: torch.Tensor) -> "Pending":
        return cls(value)

    @property
    def done(self) -> bool:
        return self._done

    def add_on_wait(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` when the value is first waited for (e.g. to close an in-flight record)."""
        self._on_wait.append(fn)

    def peek(self) -> torch.Tensor | None:
        """The buffer as it is now, without waiting (what a missing wait would read)."""
        return self._value

    def wait(self) -> torch.Tensor:
        if not self._done:
            for fn in self._on_wait:
                fn()
            if self._work is not None:
                self._work.wait()
            if self._event is not None:
                stream = torch.cuda.current_stream()
                stream.wait_event(self._event)
                if self._value is not None:
                    self._value.record_stream(stream)
            if self._land is not None:
                self._land()   # poison mode: the received rows land in the visible buffer only now
            self._result = self._then() if self._then is not None else self._value
            self._done, self._keep, self._work, self._event = True, (), None, None
        assert self._result is not None   # __init__: a value, or a computation that returns one
        return self._result


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with values no correct computation produces: NaN for floats, the max for ints."""
    if t.is_floating_point() or t.is_complex():
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).max if t.dtype != torch.bool else True)


class Communicator:
    """Launches all-to-alls asynchronously: gloo async work on CPU, a comm stream on GPU.

    ``poison=True`` is a debug mode for missed waits: the rows are received into a private
    buffer, the buffer the caller sees is filled with NaN (ints: their max) and the received
    rows land in it only inside ``Pending.wait()`` — completion is delayed to the wait. Code
    that reads a receive buffer without waiting reads poison every time, however fast the
    all-to-all was, instead of by chance.
    """

    def __init__(self, device: torch.device, group: dist.ProcessGroup | None = None, *, poison: bool = False) -> None:
        self.device, self.group, self.poison = device, group, poison
        self.stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None

    def _visible(self, scratch: torch.Tensor) -> tuple[torch.Tensor, Callable[[], None] | None]:
        if not self.poison:
            return scratch, None
        visible = poison_(torch.empty_like(scratch))

        def land() -> None:
            visible.copy_(scratch)

        return visible, land

    def all_to_all(self, inp: torch.Tensor, out_splits: Sequence[int], in_splits: Sequence[int],
                   finish: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Pending:
        """Launch the all-to-all; ``finish(received rows)`` is what the result's ``wait()``
        returns (default: the received rows)."""
        inp = inp.contiguous()
        shape = (sum(out_splits),) + tuple(inp.shape[1:])
        if self.stream is None:
            scratch = inp.new_empty(shape)
            work = _a2a_async(scratch, inp, out_splits, in_splits, self.group)
            out, land = self._visible(scratch)
            return Pending(out, work=work, keep=(inp, scratch), then=_bind(finish, out), land=land)
        compute = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(compute)  # the input was produced on the compute stream
        with torch.cuda.stream(self.stream):
            scratch = inp.new_empty(shape)
            work = _a2a_async(scratch, inp, out_splits, in_splits, self.group)
            work.wait()  # the comm stream waits for the collective; the host does not
            event = torch.cuda.Event()
            event.record(self.stream)
        inp.record_stream(self.stream)
        out, land = self._visible(scratch)   # on the compute stream: copied there after the event
        if land is not None:
            scratch.record_stream(compute)
        return Pending(out, event=event, keep=(inp, scratch), then=_bind(finish, out), land=land)

    def exchange_counts(self, routing: Routing, counts: torch.Tensor) -> Routing:
        if self.stream is None:
            return exchange_counts(routing, counts, self.group)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            result = exchange_counts(routing, counts, self.group)  # .tolist() syncs the comm stream only
        return result


def _bind(finish: Callable[[torch.Tensor], torch.Tensor] | None, rows: torch.Tensor) -> Callable[[], torch.Tensor] | None:
    return None if finish is None else functools.partial(finish, rows)


class TokenDispatcher:
    """Synchronous dispatch/combine of hidden states by top-k routing (used by the reference
    run and the dispatcher tests): ``dispatch`` returns the rows this rank's experts get,
    grouped as [source rank][local expert]; ``combine`` sends expert outputs back and
    restores (token, k) order."""

    def __init__(self, num_experts: int, group: dist.ProcessGroup | None = None) -> None:
        self.num_experts, self.group = num_experts, group
        self.world = dist.get_world_size(group)
        if num_experts % self.world:
            raise ValueError(f"num_experts {num_experts} is not divisible by the world size {self.world}")
        self.local_experts = num_experts // self.world

    def route(self, topk_idx: torch.Tensor) -> Routing:
        routing, counts = make_routing(topk_idx, self.num_experts, self.world)
        return exchange_counts(routing, counts, self.group)

    @staticmethod
    def permute(tokens: torch.Tensor, routing: Routing) -> torch.Tensor:
        """[tokens, H] -> expert-sorted rows [tokens*k, H] (expand then gather; the backward
        of the expand sums the k copies in one deterministic reduction)."""
        n, h = tokens.shape
        rows = tokens.unsqueeze(1).expand(n, routing.topk, h).reshape(n * routing.topk, h)
        return rows.index_select(0, routing.order)

    @staticmethod
    def unpermute(rows: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Expert-sorted rows [tokens*k, H] -> [tokens, k, H] in token order."""
        return rows.index_select(0, routing.inverse_order).view(routing.num_tokens, routing.topk, -1)

    def dispatch(self, rows: torch.Tensor, routing: Routing) -> torch.Tensor:
        return all_to_all(rows, routing.output_splits, routing.input_splits, self.group)

    def combine(self, rows: torch.Tensor, routing: Routing) -> torch.Tensor:
        return all_to_all(rows, routing.input_splits, routing.output_splits, self.group)
