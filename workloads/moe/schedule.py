"""Schedule nodes, the layer and chunk plans, and the overlapped 1F1B step.

A node runs its own forward and backward: its inputs are detached into leaves, the outputs
it returns are detached too (so autograd never crosses a node boundary), and its backward
runs autograd from the stored outputs with the given output gradients, then releases the
stored state. Communication nodes (dispatch, combine) launch all-to-alls asynchronously
(``Communicator``) and return ``Pending`` results; the node that consumes a result waits
for it — that wait is the only ordering inside a step.

The step order for forward of microbatch i and backward of microbatch i-1 is Megatron's
(written out in ``workloads.moe.order``, which the verdict checks the trace against)::

    b.combine.backward   f.pre_dispatch.forward   b.mlp.backward (input grads)
    f.dispatch.forward   b.mlp.backward_dw (weight grads)   b.dispatch.backward
    f.mlp.forward        f.combine.forward        b.pre_dispatch.backward

The mlp node's backward is split (dgrad / wgrad): ``b.mlp.backward`` computes only the
gradients its inputs need, so ``b.dispatch.backward`` can send them; the expert weight
gradients follow in ``b.mlp.backward_dw`` while the forward dispatch all-to-all is in flight.
The combine node's post-processing (unpermute, probability weighting, residual) belongs to
the combine node and runs when its output is first waited for.

Every node call is appended to ``ScheduleContext.trace`` as a ``NodeCall``; every
all-to-all launched records the compute nodes that ran while it was in flight
(``ScheduleContext.in_flight``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from workloads.moe import faults
from workloads.moe.dispatcher import Pending, Routing
from workloads.moe.model import DenseMLP, ModelChunk, TransformerLayer, combine_post, mlp, pre_dispatch
from workloads.moe.nodes import ComputeNode, InFlight, NodeCall, ScheduleContext

__all__ = ["ChunkSchedulePlan", "ComputeNode", "InFlight", "LayerSchedulePlan", "NodeCall", "ScheduleContext",
           "chunk_1f1b", "layer_1f1b", "run_chunk_schedule", "run_layer_schedule"]


class LayerSchedulePlan:
    """One layer for one microbatch as four nodes: pre_dispatch, dispatch, mlp, combine."""

    def __init__(self, layer: TransformerLayer, sctx: ScheduleContext, microbatch: int, *,
                 chunk: int = 0, index: int | None = None, input_requires_grad: bool = True) -> None:
        self.layer, self.sctx, self.mb, self.chunk, self.index = layer, sctx, microbatch, chunk, index
        self.moe = layer.cfg.is_moe
        self.input_requires_grad = input_requires_grad
        self.routing: Routing | None = None
        self._counts: torch.Tensor | None = None
        self._pre_node = ComputeNode(self._pre_fn)
        self._mlp_node = ComputeNode(self._mlp_fn)
        self._post_node = ComputeNode(self._post_fn)
        self._pre: dict[str, torch.Tensor] = {}
        self._mid: dict[str, torch.Tensor] = {}
        self._recv: Pending | None = None
        self._g_post: dict[str, torch.Tensor | None] = {}
        self._g_mid: dict[str, torch.Tensor | None] = {}
        self._g_expert_rows: Pending | None = None
        self._g_rows: Pending | None = None

    # -- node functions (what runs under autograd) ------------------------------------------------
    def _pre_fn(self, d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out, self.routing, self._counts = pre_dispatch(self.layer, d["x"])
        return out

    def _mlp_fn(self, d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return mlp(self.layer, d, self.routing)

    def _post_fn(self, d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"out": combine_post(self.layer, d, self.routing)}

    def _log(self, role: str, node: str, phase: str) -> NodeCall:
        call = NodeCall(role, node, phase, self.mb, self.chunk, self.index)
        self.sctx.note(call)
        return call

    def _mlp_weights(self) -> list[nn.Parameter]:
        """The parameters the mlp node uses (not the router: that is pre_dispatch's)."""
        m = self.layer.mlp
        if isinstance(m, DenseMLP):
            return list(m.parameters())
        out = list(m.experts.parameters())
        if m.shared_expert is not None:
            out += list(m.shared_expert.parameters())
        return out

    # -- forward nodes ----------------------------------------------------------------------------
    def pre_dispatch_forward(self, x: Pending) -> None:
        self._log("f", "pre_dispatch", "forward")
        no_grad = () if self.input_requires_grad else ("x",)
        self._pre = self._pre_node.forward({"x": x.wait()}, no_grad=no_grad)

    def dispatch_forward(self) -> None:
        call = self._log("f", "dispatch", "forward")
        if not self.moe:
            self._recv = Pending.ready(self._pre["tokens"])
            return
        comm = self.sctx.comm
        assert self.routing is not None and self._counts is not None
        self.routing = comm.exchange_counts(self.routing, self._counts)
        self._recv = self.sctx.track(
            comm.all_to_all(self._pre["rows"], self.routing.output_splits, self.routing.input_splits), call)

    def mlp_forward(self) -> None:
        self._log("f", "mlp", "forward")
        assert self._recv is not None
        received: torch.Tensor | None
        if self.sctx.fault == faults.SKIP_WAIT and self.moe:
            received = self._recv.peek()   # the planted bug: reads the buffer without waiting
            assert received is not None    # an all-to-all's receive buffer
        else:
            received = self._recv.wait()
        inputs = {"tokens": received} if not self.moe else {"recv_rows": received}
        if "shared_in" in self._pre:
            inputs["shared_in"] = self._pre["shared_in"]
        self._mid = self._mlp_node.forward(inputs)
        self._recv = None

    def combine_forward(self) -> Pending:
        call = self._log("f", "combine", "forward")
        post_in = {"residual": self._pre["residual"]}
        if not self.moe:
            post_in["mlp_out"] = self._mid["mlp_out"]
            return Pending(None, then=lambda: self._post_node.forward(post_in)["out"])
        post_in["row_probs"] = self._pre["row_probs"]
        if "shared_out" in self._mid:
            post_in["shared_out"] = self._mid["shared_out"]
        assert self.routing is not None

        def finish(back_rows: torch.Tensor) -> torch.Tensor:
            return self._post_node.forward({**post_in, "back_rows": back_rows})["out"]

        return self.sctx.track(self.sctx.comm.all_to_all(self._mid["expert_rows"], self.routing.input_splits,
                                                         self.routing.output_splits, finish=finish), call)

    # -- backward nodes ---------------------------------------------------------------------------
    def combine_backward(self, grad_out: Pending) -> None:
        call = self._log("b", "combine", "backward")
        self._g_post = self._post_node.backward({"out": grad_out.wait()})
        if not self.moe:
            return
        assert self.routing is not None
        self._g_expert_rows = self.sctx.track(self.sctx.comm.all_to_all(
            _grad(self._g_post, "back_rows"), self.routing.output_splits, self.routing.input_splits), call)

    def mlp_backward(self) -> None:
        self._log("b", "mlp", "backward")
        grads: dict[str, torch.Tensor | None]
        if not self.moe:
            grads = {"mlp_out": self._g_post["mlp_out"]}
        else:
            assert self._g_expert_rows is not None   # combine_backward launched it
            grads = {"expert_rows": self._g_expert_rows.wait()}
            if "shared_out" in self._g_post:
                grads["shared_out"] = self._g_post["shared_out"]
        self._g_mid = self._mlp_node.backward(grads, weights=self._mlp_weights())
        self._g_expert_rows = None

    def mlp_backward_dw(self) -> None:
        self._log("b", "mlp", "backward_dw")
        self._mlp_node.backward_dw()

    def dispatch_backward(self) -> None:
        call = self._log("b", "dispatch", "backward")
        if not self.moe:
            self._g_rows = Pending.ready(_grad(self._g_mid, "tokens"))
            return
        assert self.routing is not None
        self._g_rows = self.sctx.track(self.sctx.comm.all_to_all(_grad(self._g_mid, "recv_rows"),
                                                                 self.routing.input_splits,
                                                                 self.routing.output_splits), call)

    def pre_dispatch_backward(self) -> Pending | None:
        """The gradient of the layer's input; None when the input needs none (the first layer of
        the layer-level schedule)."""
        self._log("b", "pre_dispatch", "backward")
        assert self._g_rows is not None
        g_rows = self._g_rows.wait()
        if self.sctx.fault == faults.WRONG_MICROBATCH_GRAD:
            g_rows = faults.wrong_microbatch_grad(self.sctx.last_grads, (self.chunk, self.index), g_rows)
        grads: dict[str, torch.Tensor | None] = {"residual": self._g_post["residual"]}
        if not self.moe:
            grads["tokens"] = g_rows
        else:
            grads["rows"] = g_rows
            grads["row_probs"] = self._g_post["row_probs"]
            if "shared_in" in self._g_mid:
                grads["shared_in"] = self._g_mid["shared_in"]
        g_in = self._pre_node.backward(grads).get("x")
        self._g_post, self._g_mid, self._g_rows, self._pre = {}, {}, None, {}
        return None if g_in is None else Pending.ready(g_in)


def _grad(grads: Mapping[str, torch.Tensor | None], key: str) -> torch.Tensor:
    """A gradient the next node sends on: every output the node produced feeds the loss."""
    g = grads[key]
    assert g is not None, f"no gradient for {key}"
    return g


def layer_1f1b(f: LayerSchedulePlan | None, b: LayerSchedulePlan | None,
               f_input: Pending | None, b_grad: Pending | None) -> tuple[Pending | None, Pending | None]:
    """One overlapped step of a layer pair: forward of ``f`` with backward of ``b`` in the
    documented order. Returns (f's output, b's input gradient); either side may be absent."""
    f_out, b_gin = f_input, b_grad
    plan = f or b
    fault = plan.sctx.fault if plan is not None else None
    if b is not None:
        assert b_grad is not None, "a backward unit needs its output gradient"
        b.combine_backward(b_grad)
    if f is not None:
        assert f_input is not None, "a forward unit needs its input"
        f.pre_dispatch_forward(f_input)
    if b is not None:
        b.mlp_backward()
    if f is not None:
        f.dispatch_forward()
    if b is not None:
        if fault == faults.SWAP_NODE_CALLS:   # the planted bug: two node calls swapped
            b.dispatch_backward()
            b.mlp_backward_dw()
        else:
            b.mlp_backward_dw()
            b.dispatch_backward()
    if f is not None:
        f.mlp_forward()
        f_out = f.combine_forward()
    if b is not None:
        b_gin = b.pre_dispatch_backward()
    return f_out, b_gin


def run_layer_schedule(layer: TransformerLayer, inputs: Sequence[torch.Tensor], sctx: ScheduleContext) -> list[torch.Tensor]:
    """Layer level 1F1B over M microbatches: forward 0 alone; forward i with backward i-1;
    backward M-1 alone. Output gradients are ones. Returns the M outputs."""
    plans = [LayerSchedulePlan(layer, sctx, m, index=0, input_requires_grad=False) for m in range(len(inputs))]
    outs: list[Pending] = []
    for i in range(len(inputs) + 1):
        f = plans[i] if i < len(plans) else None
        b = plans[i - 1] if i >= 1 else None
        b_grad = None
        if b is not None:
            prev_out = outs[i - 1].wait()
            b_grad = Pending.ready(torch.ones_like(prev_out))
        f_out, _ = layer_1f1b(f, b, Pending.ready(inputs[i]) if f is not None else None, b_grad)
        if f is not None:
            assert f_out is not None
            outs.append(f_out)
    return [o.wait() for o in outs]


class ChunkSchedulePlan:
    """One model chunk for one microbatch: pre_process (embedding, first chunk only), the
    layers' plans, post_process (output layer + per-token loss, last chunk only)."""

    def __init__(self, chunk: ModelChunk, sctx: ScheduleContext, microbatch: int, chunk_index: int) -> None:
        self.chunk, self.sctx, self.mb, self.c = chunk, sctx, microbatch, chunk_index
        self.layers = [LayerSchedulePlan(layer, sctx, microbatch, chunk=chunk_index, index=i)
                       for i, layer in enumerate(chunk.transformer_layers())]
        self._embed = ComputeNode(lambda d: {"h": chunk.pre_process(d["tokens"])})
        self._loss = ComputeNode(lambda d: {"loss": chunk.post_process(d["h"], d["labels"])})
        self.output: Pending | None = None        # hidden states, or the per-token losses (last chunk)
        self.input_grad: Pending | None = None    # gradient of this chunk's input hidden states

    @property
    def first(self) -> bool:
        return self.chunk.embedding is not None

    @property
    def last(self) -> bool:
        return self.chunk.output is not None

    def _log(self, role: str, node: str, phase: str) -> None:
        self.sctx.note(NodeCall(role, node, phase, self.mb, self.c, None))

    def pre_process_forward(self, x: Pending) -> Pending:
        if not self.first:
            return x
        self._log("f", "pre_process", "forward")
        return Pending.ready(self._embed.forward({"tokens": x.wait()})["h"])

    def post_process_forward(self, h: Pending, labels: torch.Tensor | None) -> None:
        if not self.last:
            self.output = h
            return
        self._log("f", "post_process", "forward")
        assert labels is not None, "the last chunk's forward needs the labels"
        self.output = Pending.ready(self._loss.forward({"h": h.wait(), "labels": labels})["loss"])

    def post_process_backward(self, grad: Pending | None) -> Pending:
        if not self.last:
            assert grad is not None
            return grad
        self._log("b", "post_process", "backward")
        assert self.output is not None
        loss = self.output.wait()
        return Pending.ready(_grad(self._loss.backward({"loss": torch.ones_like(loss)}), "h"))

    def pre_process_backward(self, grad: Pending) -> None:
        if not self.first:
            self.input_grad = grad
            return
        self._log("b", "pre_process", "backward")
        self._embed.backward({"h": grad.wait()})
        self.input_grad = None                    # the tokens have no gradient


def chunk_1f1b(f: ChunkSchedulePlan | None, b: ChunkSchedulePlan | None, f_input: Pending | None,
               f_labels: torch.Tensor | None, b_grad: Pending | None) -> None:
    """Forward of one (chunk, microbatch) with backward of another: b's loss backward, f's
    embedding, then layer pairs matched f.layers[i] with b.layers[n_b-1-i] (layers left over
    on one side run alone), f's output layer, b's embedding backward."""
    g = b.post_process_backward(b_grad) if b is not None else None
    if f is not None:
        assert f_input is not None, "a forward unit needs its input"
    x = f.pre_process_forward(f_input) if f is not None and f_input is not None else None
    f_layers = f.layers if f is not None else []
    b_layers = b.layers if b is not None else []
    nf, nb = len(f_layers), len(b_layers)
    for i in range(max(nf, nb)):
        fl = f_layers[i] if i < nf else None
        bl = b_layers[nb - 1 - i] if i < nb else None
        fx, gb = layer_1f1b(fl, bl, x if fl is not None else None, g if bl is not None else None)
        if fl is not None:
            x = fx
        if bl is not None:
            g = gb
    if f is not None:
        assert x is not None
        f.post_process_forward(x, f_labels)
    if b is not None:
        assert g is not None, "every chunk's input hidden states need a gradient"
        b.pre_process_backward(g)


def run_chunk_schedule(chunks: Sequence[ModelChunk], tokens: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
                       sctx: ScheduleContext) -> list[list[torch.Tensor]]:
    """Chunk level 1F1B. Forward units in order (m0,c0),(m0,c1),…,(m1,c0)…; backward units
    (m0,c_last)…(m0,c0),(m1,c_last)…. The forward units of microbatch 0 run alone; then
    forward unit k runs with backward unit k-C (microbatch m with m-1); then the last
    microbatch's backward units run alone. Returns outputs[chunk][microbatch]."""
    n_chunks, n_mb = len(chunks), len(tokens)
    plans = [[ChunkSchedulePlan(chunks[c], sctx, m, c) for c in range(n_chunks)] for m in range(n_mb)]
    fwd = [(m, c) for m in range(n_mb) for c in range(n_chunks)]
    bwd = [(m, c) for m in range(n_mb) for c in reversed(range(n_chunks))]

    def f_args(k: int) -> tuple[ChunkSchedulePlan, Pending | None, torch.Tensor | None]:
        m, c = fwd[k]
        x = Pending.ready(tokens[m]) if c == 0 else plans[m][c - 1].output
        return plans[m][c], x, (labels[m] if c == n_chunks - 1 else None)

    def b_args(j: int) -> tuple[ChunkSchedulePlan, Pending | None]:
        m, c = bwd[j]
        grad = None if c == n_chunks - 1 else plans[m][c + 1].input_grad
        return plans[m][c], grad

    for k in range(len(fwd) + n_chunks):
        f_plan, f_in, f_lab = f_args(k) if k < len(fwd) else (None, None, None)
        b_plan, b_grad = b_args(k - n_chunks) if k >= n_chunks else (None, None)
        chunk_1f1b(f_plan, b_plan, f_in, f_lab, b_grad)
    return [[_output(plans[m][c]) for m in range(n_mb)] for c in range(n_chunks)]


def _output(plan: ChunkSchedulePlan) -> torch.Tensor:
    assert plan.output is not None, f"chunk {plan.c} of microbatch {plan.mb} never ran forward"
    return plan.output.wait()
