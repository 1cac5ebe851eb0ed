"""Comparison of nested captures (mappings / lists / scalars / tensors), strict and fast.

* **Structure** (``tensor_structure``) — both trees are walked once into a flat signature
  (container types, mapping keys, non-tensor leaves with floats as bits) and a list of tensors.
  When the signatures are equal, the tensors pair up by position and no path string is built
  unless a tensor differs. Otherwise deepdiff compares the two trees with every tensor replaced
  by a light descriptor (dtype, shape) and every float by its bits, and *every* report type it
  makes is turned into a mismatch: missing / extra keys, list-length differences, None vs
  tensor and any other type change, changed scalars; a report type this module does not know
  is a mismatch too ("unhandled deepdiff report"), never ignored.
* **Tensors** (``tensor_batch``, ``tensor_values``) — dtype and shape first, then the raw
  bytes of every dtype (so bf16/fp16/fp32 ``-0.0`` vs ``+0.0`` differ, NaN payloads differ,
  fp8, complex, bool and ints are exact): large tensors one ``torch.equal`` each over an
  integer view of their bytes, small ones concatenated per dtype and compared in one call.
  ``close`` mode uses ``torch.isclose`` (NaN equal to NaN) for floating and complex dtypes and
  bytes for the rest.
* **Detail** only on mismatch: count of differing elements, max abs difference and its
  index, the two values there.
"""
from __future__ import annotations

import gc
from typing import Any, Sequence

from runner.compare.tensor_batch import SMALL_BYTES, suspects
from runner.compare.tensor_mismatch import TensorMismatch, path_key
from runner.compare.tensor_structure import (HANDLED_REPORTS, flatten, same_signature, signature,
                                             structure_mismatches, tensor_paths)
from runner.compare.tensor_values import tensor_difference

__all__ = ["HANDLED_REPORTS", "SMALL_BYTES", "TensorMismatch", "compare_tensor_trees", "path_key",
           "tensor_difference"]


def compare_tensor_trees(expected: Any, actual: Any, *, bitwise: bool = True, rtol: float = 0.0,
                         atol: float = 0.0) -> list[TensorMismatch]:
    """All mismatches between two nested structures of tensors, sorted by key.

    The cyclic garbage collector is paused while it runs (it allocates no cycles, and a full
    collection triggered by its small bookkeeping objects would cost more than the work), and
    so is autograd (a capture's tensors may require grad; nothing here needs a graph)."""
    import torch

    paused = gc.isenabled()
    gc.disable()
    try:
        with torch.no_grad():
            return _compare(expected, actual, bitwise=bitwise, rtol=rtol, atol=atol, torch=torch)
    finally:
        if paused:
            gc.enable()


def _compare(expected: Any, actual: Any, *, bitwise: bool, rtol: float, atol: float, torch: Any) -> list[TensorMismatch]:
    tensor = torch.Tensor
    te: list[Any] = []
    ta: list[Any] = []
    se: list[Any] = []
    sa: list[Any] = []
    signature(expected, te, se, tensor)
    signature(actual, ta, sa, tensor)
    out: list[TensorMismatch] = []
    keys: Sequence[str] | None = None
    if not same_signature(se, sa):      # deepdiff names what differs; tensors it flags are not compared twice
        fe: dict[str, Any] = {}
        fa: dict[str, Any] = {}
        flatten(expected, "root", fe, tensor)
        flatten(actual, "root", fa, tensor)
        out.extend(structure_mismatches(expected, actual, tensor))
        flagged = {m.key for m in out}
        keys = [k for k, e in fe.items()
                if k not in flagged and isinstance(e, tensor) and isinstance(fa.get(k), tensor)]
        te, ta = [fe[k] for k in keys], [fa[k] for k in keys]
    paths: list[str] = []

    def key_of(i: int) -> str:
        if keys is not None:
            return keys[i]
        if not paths:                   # built only when a tensor differs
            tensor_paths(expected, "root", paths, tensor)
        return paths[i]

    for i in suspects(te, ta, bitwise=bitwise, rtol=rtol, atol=atol, torch=torch, key_of=key_of, out=out):
        m = tensor_difference(te[i], ta[i], bitwise=bitwise, rtol=rtol, atol=atol, key=key_of(i))
        if m is not None:
            out.append(m)
    out.sort(key=lambda m: m.key)
    return out
