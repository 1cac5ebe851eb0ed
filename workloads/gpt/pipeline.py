"""Pipeline-parallel schedules: interleaved 1F1B over virtual stages, plain 1F1B, no pipeline.

The schedule is a per-rank list of actions (forward or backward of one model chunk on one
microbatch), computed exactly as Megatron-LM's ``forward_backward_pipelining_with_interleaving``
/ ``..._without_interleaving`` order them:

- interleaved (vp > 1): virtual microbatch ``k`` runs chunk ``(k % (pp*vp)) // pp`` forward
  (chunk ``vp - 1 - ...`` backward) on microbatch ``(k // (pp*vp)) * pp + k % pp``; warmup is
  ``(pp - rank - 1) * 2 + (vp - 1) * pp`` forwards (all of them when microbatches == pp),
  then one-forward-one-backward, then the cooldown backwards;
- 1F1B (vp == 1): ``pp - rank - 1`` warmup forwards, steady 1F1B, cooldown;
- no pipeline: forward and backward of each microbatch in turn (gradient accumulation).

Why a hand-written schedule rather than ``torch.distributed.pipelining``: the distributed
optimizer needs to know, per model chunk, when the backward of its last microbatch runs (that
is when its grad buckets may be reduce-scattered during backward), the tied-embedding copies
on the first and last stage need Megatron's treatment, and the schedule must run unchanged on
gloo/CPU and NCCL/GPU.

Communication: activations go forward from virtual stage ``v`` to ``v + 1`` (rank ``r`` ->
``r + 1``, and from the last rank to rank 0's next chunk), gradients backward. Sends are
asynchronous (``isend``, waited at the end of the step) and receives block right before the
data is needed; every message carries a tag naming (virtual stage, microbatch, direction), so
matching never depends on arrival order. With non-blocking sends, a rank can only wait on a
receive whose send is issued by an earlier action of another rank, so any schedule that
respects data dependencies cannot deadlock (``simulate`` checks this for a layout). The
point-to-point messages always travel through a gloo group (on GPU a host copy: correct and
deadlock-free, not the fastest path; NCCL batched p2p is a possible optimisation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

FORWARD = "F"
BACKWARD = "B"


@dataclass(frozen=True)
class Action:
    kind: str          # "F" or "B"
    chunk: int         # model chunk index on this rank
    microbatch: int

    def __str__(self) -> str:
        return f"{self.kind}{self.chunk}.{self.microbatch}"


def _interleaved_chunk(k: int, pp: int, vp: int, forward: bool) -> int:
    c = (k % (pp * vp)) // pp
    return c if forward else vp - 1 - c


def _interleaved_microbatch(k: int, pp: int, vp: int) -> int:
    return (k // (pp * vp)) * pp + k % pp


def schedule_actions(pp: int, vp: int, rank: int, num_microbatches: int) -> list[Action]:
    """This pipeline rank's ordered forward/backward actions for one training step."""
    m = num_microbatches
    if vp == 1:
        warmup = min(pp - rank - 1, m)
        acts = [Action(FORWARD, 0, i) for i in range(warmup)]
        for i in range(m - warmup):
            acts.append(Action(FORWARD, 0, warmup + i))
            acts.append(Action(BACKWARD, 0, i))
        acts.extend(Action(BACKWARD, 0, i) for i in range(m - warmup, m))
        return acts
    if m % pp:
        raise ValueError(f"interleaved schedule: {m} microbatches is not a multiple of pp={pp}")
    total = m * vp
    if m == pp:
        warmup = total
    else:
        warmup = min((pp - rank - 1) * 2 + (vp - 1) * pp, total)

    def fwd(k: int) -> Action:
        return Action(FORWARD, _interleaved_chunk(k, pp, vp, True), _interleaved_microbatch(k, pp, vp))

    def bwd(k: int) -> Action:
        return Action(BACKWARD, _interleaved_chunk(k, pp, vp, False), _interleaved_microbatch(k, pp, vp))

    acts = [fwd(k) for k in range(warmup)]
    for i in range(total - warmup):
        acts.append(fwd(warmup + i))
        acts.append(bwd(i))
    acts.extend(bwd(k) for k in range(total - warmup, total))
    return acts


def simulate(pp: int, vp: int, num_microbatches: int) -> list[list[Action]]:
    """Execute every rank's schedule against each other with non-blocking sends and blocking
    receives; return the global order of completed actions per round. Raises RuntimeError on
    a deadlock or a dependency violation (e.g. a backward before its forward)."""
    n_virtual = pp * vp
    queues = [schedule_actions(pp, vp, r, num_microbatches) for r in range(pp)]
    pos = [0] * pp
    done: set[tuple[str, int, int]] = set()   # (kind, virtual stage, microbatch)
    rounds: list[list[Action]] = []
    while any(pos[r] < len(queues[r]) for r in range(pp)):
        progressed: list[Action] = []
        for r in range(pp):
            if pos[r] >= len(queues[r]):
                continue
            a = queues[r][pos[r]]
            v = a.chunk * pp + r
            if a.kind == FORWARD:
                ready = v == 0 or (FORWARD, v - 1, a.microbatch) in done
            else:
                ready = (FORWARD, v, a.microbatch) in done and (
                    v == n_virtual - 1 or (BACKWARD, v + 1, a.microbatch) in done)
            if ready:
                progressed.append(a)
                done.add((a.kind, v, a.microbatch))
                pos[r] += 1
        if not progressed:
            stuck = {r: str(queues[r][pos[r]]) for r in range(pp) if pos[r] < len(queues[r])}
            raise RuntimeError(f"pipeline schedule deadlocks (pp={pp}, vp={vp}, m={num_microbatches}): "
                               f"ranks wait on {stuck}")
        rounds.append(progressed)
    return rounds


def backward_from(out: torch.Tensor, grad: torch.Tensor) -> None:
    """Backward of ``out`` given its gradient ``grad``, what
    ``torch.autograd.backward(out, grad_tensors=grad)`` does, without that call's shape check:
    it imports ``torch.fx.experimental.symbolic_shapes`` and so sympy, seconds per rank (far
    more on a loaded machine) in every stage but the last. The backward of ``sum(out * grad)``
    hands ``out`` the gradient ``1.0 * grad``, bitwise ``grad``, so every gradient is the same."""
    if out.shape != grad.shape or out.dtype != grad.dtype:
        raise ValueError(f"gradient {list(grad.shape)} {grad.dtype} does not match output {list(out.shape)} {out.dtype}")
    torch.autograd.backward(torch.sum(out * grad))


@dataclass(frozen=True)
class PipelineLayout:
    """Where this rank sits: its pipeline rank, and the global ranks of its pipeline group."""

    pp_rank: int
    stage_ranks: tuple[int, ...]           # global rank of pipeline rank 0..pp-1 (same dp replica)
    vp: int

    @property
    def pp(self) -> int:
        return len(self.stage_ranks)

    def virtual_stage(self, chunk: int) -> int:
        return chunk * self.pp + self.pp_rank

    def rank_of_virtual_stage(self, v: int) -> int:
        return self.stage_ranks[v % self.pp]


class ActivationTracker:
    """CPU substitute for CUDA's peak-memory statistic: bytes of the activations autograd
    holds for backward, per in-flight microbatch, via saved-tensor hooks (parameters and
    tensors already counted are excluded by storage address)."""

    def __init__(self, exclude_storages: Iterable[int] = ()) -> None:
        self.exclude = set(exclude_storages)
        self.in_flight = 0
        self.peak = 0
        self._current: set[int] | None = None
        self._bytes: dict[tuple[int, int], int] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if self._current is not None:
            st = t.untyped_storage()
            key = st.data_ptr()
            if key not in self.exclude and key not in self._current:
                self._current.add(key)
                self._nbytes += st.nbytes()
        return t

    def forward(self, key: tuple[int, int], fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        self._current, self._nbytes = set(), 0
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            out = fn()
        self._bytes[key] = self._nbytes
        self._current = None
        self.in_flight += self._nbytes
        self.peak = max(self.peak, self.in_flight)
        return out

    def released(self, key: tuple[int, int]) -> None:
        self.in_flight -= self._bytes.pop(key, 0)


class PipelineSchedule:
    """Runs one training step's forwards and backwards over this rank's model chunks.

    ``before_backward(chunk, is_last_microbatch)`` is called before each backward so the
    optimizer can let a chunk's grad buckets launch during the backward of its last microbatch.
    """

    def __init__(self, chunks: Sequence[nn.Module], layout: PipelineLayout, *, num_microbatches: int,
                 activation_shape: Sequence[int], dtype: torch.dtype, device: torch.device,
                 p2p_group: "dist.ProcessGroup | None" = None,
                 before_backward: Callable[[int, bool], None] | None = None,
                 tracker: ActivationTracker | None = None) -> None:
        if len(chunks) != layout.vp:
            raise ValueError(f"{len(chunks)} chunks for vp={layout.vp}")
        self.chunks = list(chunks)
        self.layout = layout
        self.m = num_microbatches
        self.shape = tuple(activation_shape)
        self.dtype = dtype
        self.device = device
        self.p2p_group = p2p_group
        self.before_backward = before_backward
        self.tracker = tracker
        self.actions = schedule_actions(layout.pp, layout.vp, layout.pp_rank, num_microbatches)
        self.n_virtual = layout.pp * layout.vp

    # -- point to point ---------------------------------------------------------------------
    def _tag(self, sender_stage: int, microbatch: int, backward: bool) -> int:
        boundary = sender_stage if not backward else sender_stage - 1
        return (boundary * self.m + microbatch) * 2 + int(backward)

    def _send(self, t: torch.Tensor, to_stage: int, tag: int, pending: list[tuple[dist.Work, torch.Tensor]]) -> None:
        dst = self.layout.rank_of_virtual_stage(to_stage)
        buf = t.detach().to("cpu").contiguous() if t.device.type != "cpu" else t.detach().contiguous()
        work = dist.isend(buf, dst=dst, group=self.p2p_group, tag=tag)
        if work is None:   # isend returns None only on a rank outside the group
            raise RuntimeError(f"this rank is not in the pipeline's p2p group (sending to rank {dst})")
        pending.append((work, buf))

    def _recv(self, from_stage: int, tag: int) -> torch.Tensor:
        src = self.layout.rank_of_virtual_stage(from_stage)
        buf = torch.empty(self.shape, dtype=self.dtype, device="cpu")
        work = dist.irecv(buf, src=src, group=self.p2p_group, tag=tag)
        if work is None:   # irecv returns None only on a rank outside the group
            raise RuntimeError(f"this rank is not in the pipeline's p2p group (receiving from rank {src})")
        work.wait()
        return buf.to(self.device) if self.device.type != "cpu" else buf

    # -- one step ------------------------------------------------------------------------------
    def run(self, microbatches: Sequence[Mapping[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Forward+backward of every microbatch; returns the per-microbatch losses (unscaled,
        detached) on the rank holding the last virtual stage, [] elsewhere."""
        if len(microbatches) != self.m:
            raise ValueError(f"expected {self.m} microbatches, got {len(microbatches)}")
        pending: list[tuple[dist.Work, torch.Tensor]] = []
        stored: dict[tuple[int, int], tuple[torch.Tensor | None, torch.Tensor]] = {}
        losses: dict[int, torch.Tensor] = {}
        done_backward: dict[int, int] = {c: 0 for c in range(len(self.chunks))}
        for a in self.actions:
            v = self.layout.virtual_stage(a.chunk)
            chunk = self.chunks[a.chunk]
            mb = microbatches[a.microbatch]
            if a.kind == FORWARD:
                if v == 0:
                    inp = None
                    x = mb["tokens"].to(self.device)
                else:
                    inp = self._recv(v - 1, self._tag(v - 1, a.microbatch, False)).requires_grad_(True)
                    x = inp
                last = v == self.n_virtual - 1
                labels = mb["labels"].to(self.device) if last else None
                mask = mb["loss_mask"].to(self.device) if last else None

                def fwd(chunk: nn.Module = chunk, x: torch.Tensor = x, labels: torch.Tensor | None = labels,
                        mask: torch.Tensor | None = mask) -> torch.Tensor:
                    out: torch.Tensor = chunk(x, labels, mask)
                    return out

                out = self.tracker.forward((a.chunk, a.microbatch), fwd) if self.tracker else fwd()
                if last:
                    losses[a.microbatch] = out.detach().float()
                    out = out / self.m   # Megatron: the loss of a microbatch is scaled by 1/num_microbatches
                else:
                    self._send(out, v + 1, self._tag(v, a.microbatch, False), pending)
                stored[(a.chunk, a.microbatch)] = (inp, out)
            else:
                inp, out = stored.pop((a.chunk, a.microbatch))
                done_backward[a.chunk] += 1
                if self.before_backward is not None:
                    self.before_backward(a.chunk, done_backward[a.chunk] == self.m)
                if v == self.n_virtual - 1:
                    torch.autograd.backward(out)
                else:
                    grad = self._recv(v + 1, self._tag(v + 1, a.microbatch, True))
                    backward_from(out, grad)
                if inp is not None:
                    if inp.grad is None:
                        raise RuntimeError(f"virtual stage {v}: backward of microbatch {a.microbatch} left no "
                                           "gradient on its received activation")
                    self._send(inp.grad, v - 1, self._tag(v, a.microbatch, True), pending)
                if self.tracker:
                    self.tracker.released((a.chunk, a.microbatch))
                del inp, out
        for work, _buf in pending:
            work.wait()
        return [losses[i] for i in sorted(losses)]
