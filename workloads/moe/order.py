"""The documented node order of the overlapped schedule, written out from the contract (not
from the schedule's code): the ``a2a_overlap`` reference returns it as its ``trace``, the
candidate returns the node calls it really made, and the equivalence comparison checks the
two item by item — so two node calls swapped, one dropped or one repeated FAIL even when
the numbers happen to agree.

Inside one step, forward of microbatch i with backward of microbatch i-1, Megatron's order
(``TransformerLayerSchedulePlan.run`` in megatron-core's model_chunk_schedule_plan.py)::

    b.combine.backward  f.pre_dispatch.forward  b.mlp.backward (input grads only)
    f.dispatch.forward  b.mlp.backward_dw (weight grads)  b.dispatch.backward
    f.mlp.forward  f.combine.forward  b.pre_dispatch.backward

so the forward dispatch all-to-all is in flight while the expert weight gradients are
computed. A side that is absent (warm-up, cool-down) drops its nodes. Chunk level: forward
units (m, c) in order, backward units (m, c reversed); forward unit k runs with backward
unit k - C; inside a step: b's loss backward, f's embedding, layer pairs f.L[i] with
b.L[nb-1-i], f's loss, b's embedding backward. No torch here.
"""
from __future__ import annotations

from typing import Sequence

STEP_ORDER: tuple[str, ...] = (
    "b.combine.backward", "f.pre_dispatch.forward", "b.mlp.backward", "f.dispatch.forward",
    "b.mlp.backward_dw", "b.dispatch.backward", "f.mlp.forward", "f.combine.forward", "b.pre_dispatch.backward",
)
#: communication nodes (launch an all-to-all) and the node that waits for each one's result
COMM_NODES = ("f.dispatch.forward", "f.combine.forward", "b.combine.backward", "b.dispatch.backward")


def label(name: str, microbatch: int, chunk: int, layer: int | None) -> str:
    """One trace item, e.g. 'f.dispatch.forward mb1 c0 l0'."""
    return f"{name} mb{microbatch} c{chunk}" + (f" l{layer}" if layer is not None else "")


def _pair(f: tuple[int, int, int] | None, b: tuple[int, int, int] | None) -> list[str]:
    """One layer pair: f/b are (microbatch, chunk, layer) or None."""
    out = []
    for name in STEP_ORDER:
        side = f if name.startswith("f.") else b
        if side is not None:
            out.append(label(name, *side))
    return out


def layer_order(microbatches: int) -> list[str]:
    out: list[str] = []
    for i in range(microbatches + 1):
        f = (i, 0, 0) if i < microbatches else None
        b = (i - 1, 0, 0) if i >= 1 else None
        out += _pair(f, b)
    return out


def chunk_order(layers: Sequence[int], microbatches: int) -> list[str]:
    n = len(layers)
    fwd = [(m, c) for m in range(microbatches) for c in range(n)]
    bwd = [(m, c) for m in range(microbatches) for c in reversed(range(n))]
    out: list[str] = []
    for k in range(len(fwd) + n):
        f = fwd[k] if k < len(fwd) else None
        b = bwd[k - n] if k >= n else None
        if b and b[1] == n - 1:
            out.append(label("b.post_process.backward", b[0], b[1], None))
        if f and f[1] == 0:
            out.append(label("f.pre_process.forward", f[0], f[1], None))
        nf = layers[f[1]] if f else 0
        nb = layers[b[1]] if b else 0
        for i in range(max(nf, nb)):
            fl = (f[0], f[1], i) if f and i < nf else None
            bl = (b[0], b[1], nb - 1 - i) if b and i < nb else None
            out += _pair(fl, bl)
        if f and f[1] == n - 1:
            out.append(label("f.post_process.forward", f[0], f[1], None))
        if b and b[1] == 0:
            out.append(label("b.pre_process.backward", b[0], b[1], None))
    return out


def documented_order(level: str, microbatches: int, layers: Sequence[int] | None = None) -> list[str]:
    if level == "layer":
        return layer_order(microbatches)
    assert layers, "chunk level needs the layers per chunk"
    return chunk_order(layers, microbatches)
