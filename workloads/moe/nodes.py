"""Schedule building blocks: node calls, the schedule's context (trace, in-flight
all-to-alls), and the compute node (detached forward, autograd backward with an optional
dgrad / wgrad split)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from workloads.moe.dispatcher import Communicator, Pending
from workloads.moe.order import label as order_label

COMM = frozenset({"dispatch", "combine"})


@dataclass(frozen=True)
class NodeCall:
    role: str            # "f" (forward unit) or "b" (backward unit)
    node: str            # pre_dispatch, dispatch, mlp, combine, pre_process, post_process
    phase: str           # forward | backward
    microbatch: int
    chunk: int = 0
    layer: int | None = None

    @property
    def name(self) -> str:
        """e.g. 'b.combine.backward' — the names of the documented order."""
        return f"{self.role}.{self.node}.{self.phase}"

    @property
    def label(self) -> str:
        """The trace item, e.g. 'f.dispatch.forward mb1 c0 l0' (see workloads.moe.order)."""
        return order_label(self.name, self.microbatch, self.chunk, self.layer)


@dataclass
class InFlight:
    """One all-to-all: the node that launched it and the compute nodes run before its wait."""

    a2a: str
    compute: list[str] = field(default_factory=list)
    waited: bool = False


@dataclass
class ScheduleContext:
    comm: Communicator
    fault: str | None = None
    trace: list[NodeCall] = field(default_factory=list)
    #: fault support: the last dispatch-backward gradient seen per layer (see faults.py)
    last_grads: dict[Any, torch.Tensor] = field(default_factory=dict)
    #: every all-to-all launched, with the compute that ran while it was in flight
    in_flight: list[InFlight] = field(default_factory=list)

    def note(self, call: NodeCall) -> None:
        self.trace.append(call)
        if call.node not in COMM:
            for rec in self.in_flight:
                if not rec.waited:
                    rec.compute.append(call.label)

    def track(self, pending: Pending, launched_by: NodeCall) -> Pending:
        rec = InFlight(launched_by.label)
        self.in_flight.append(rec)

        def waited() -> None:
            rec.waited = True
            # the node waiting now was noted before its wait, but ran nothing before it
            if rec.compute and self.trace and rec.compute[-1] == self.trace[-1].label:
                rec.compute.pop()

        pending.add_on_wait(waited)
        return pending


class ComputeNode:
    """A compute node: ``forward`` runs ``fn`` on detached leaves and keeps its outputs;
    ``backward`` runs autograd from them and returns the inputs' gradients."""

    def __init__(self, fn: Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]) -> None:
        self.fn = fn
        self._inputs: dict[str, torch.Tensor] = {}
        self._outputs: dict[str, torch.Tensor] = {}
        self._dw: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])

    def forward(self, inputs: Mapping[str, torch.Tensor], *, no_grad: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        leaves = {}
        for k, v in inputs.items():
            leaf = v.detach()
            if leaf.is_floating_point() and k not in no_grad:
                leaf.requires_grad_(True)
            leaves[k] = leaf
        with torch.enable_grad():
            outputs = dict(self.fn(leaves))
        self._inputs, self._outputs = leaves, outputs
        return {k: v.detach() for k, v in outputs.items()}

    def backward(self, grads: Mapping[str, torch.Tensor | None], *,
                 weights: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor | None]:
        """Gradients of the node's inputs. With ``weights`` only those (dgrad): the weights'
        gradients follow in ``backward_dw`` (wgrad), from the same graph."""
        outs, gs = [], []
        for k, g in grads.items():
            out = self._outputs[k]
            if g is not None and out.requires_grad:
                outs.append(out)
                gs.append(g)
        if weights is None:
            if outs:
                torch.autograd.backward(outs, gs)
            in_grads = {k: leaf.grad for k, leaf in self._inputs.items() if leaf.requires_grad}
            self._inputs, self._outputs = {}, {}   # release the node's state
            return in_grads
        wanted = [(k, leaf) for k, leaf in self._inputs.items() if leaf.requires_grad]
        got = (torch.autograd.grad(outs, [leaf for _, leaf in wanted], gs, retain_graph=True, allow_unused=True)
               if outs and wanted else [None] * len(wanted))
        self._dw = (outs, gs, list(weights))
        self._inputs = {}
        return {k: g for (k, _), g in zip(wanted, got)}

    def backward_dw(self) -> None:
        """The weight gradients held back by ``backward(..., weights=...)``; releases the graph."""
        outs, gs, weights = self._dw
        used = [w for w in weights if w.requires_grad]
        if outs and used:
            torch.autograd.backward(outs, gs, inputs=used)
        self._dw = ([], [], [])
        self._outputs = {}
