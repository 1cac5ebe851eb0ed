"""One pair of tensors: dtype and shape first, then the raw bytes of every dtype (so
bf16/fp16/fp32 ``-0.0`` vs ``+0.0`` differ, NaN payloads differ, fp8, complex, bool and ints are
exact), or ``torch.isclose`` (NaN equal to NaN) for floating and complex dtypes in ``close``
mode. The detail of a mismatch: count of differing elements, max abs difference and its index,
the two values there.
"""
from __future__ import annotations

import math
from typing import Any

from runner.compare.tensor_mismatch import TensorMismatch

_INT_OF_SIZE = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


def bytes_view(t: Any, torch: Any) -> Any:
    """The tensor's bytes as a flat integer tensor (widest integer that divides the size)."""
    flat = t.reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    size = flat.element_size()
    if size in _INT_OF_SIZE and flat.dtype != getattr(torch, _INT_OF_SIZE[size]):
        return flat.view(getattr(torch, _INT_OF_SIZE[size]))
    if size in _INT_OF_SIZE:
        return flat
    return flat.view(torch.uint8).view(torch.int64) if size % 8 == 0 else flat.view(torch.uint8)


def same_bytes(expected: Any, actual: Any, torch: Any) -> bool:
    """Every byte equal (dtype and shape checked by the caller)."""
    return bool(torch.equal(bytes_view(expected, torch), bytes_view(actual, torch)))


def close_applies(t: Any) -> bool:
    """``close`` mode compares by value: floating and complex dtypes wider than a byte (fp8 by bytes)."""
    return bool(t.is_floating_point() or t.is_complex()) and t.element_size() > 1


def tensor_difference(expected: Any, actual: Any, *, bitwise: bool = True, rtol: float = 0.0, atol: float = 0.0,
                      key: str = "") -> TensorMismatch | None:
    """Compare two tensors; None when they match (bitwise: every byte equal)."""
    import torch

    if expected.dtype != actual.dtype:
        return TensorMismatch(key, "dtype", expected=str(expected.dtype), actual=str(actual.dtype))
    if tuple(expected.shape) != tuple(actual.shape):
        return TensorMismatch(key, "shape", expected=list(expected.shape), actual=list(actual.shape))
    if bitwise or not close_applies(expected):
        if same_bytes(expected, actual, torch):
            return None
    elif bool(torch.isclose(expected, actual, rtol=rtol, atol=atol, equal_nan=True).all()):
        return None
    return _detail(expected, actual, bitwise=bitwise, rtol=rtol, atol=atol, key=key)


def _element_bytes(t: Any, torch: Any) -> Any:
    """[numel, element_size] uint8 view: one row of bytes per element."""
    flat = t.reshape(-1).contiguous()
    return flat.view(torch.uint8).view(flat.numel(), flat.element_size()) if flat.numel() else flat.view(torch.uint8)


def _detail(expected: Any, actual: Any, *, bitwise: bool, rtol: float, atol: float, key: str) -> TensorMismatch:
    import torch

    if expected.numel() == 0:
        return TensorMismatch(key, "values", count=0, numel=0)
    if bitwise or not close_applies(expected):
        differ = (_element_bytes(expected, torch) != _element_bytes(actual, torch)).any(dim=1)
    else:
        differ = ~torch.isclose(expected, actual, rtol=rtol, atol=atol, equal_nan=True).reshape(-1)
    e, a = _as_wide(expected.reshape(-1), torch), _as_wide(actual.reshape(-1), torch)
    diff = (e - a).abs().double()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    score = torch.where(differ, diff, torch.full_like(diff, -1.0))   # any differing element beats an equal one
    flat = int(torch.argmax(score).item())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(expected.shape))) if expected.dim() else ()
    return TensorMismatch(key, "values", count=int(differ.sum().item()), numel=expected.numel(),
                          max_abs_diff=float(diff[flat].item()), index=index,
                          expected=_scalar(expected.reshape(-1)[flat]), actual=_scalar(actual.reshape(-1)[flat]))


def _as_wide(t: Any, torch: Any) -> Any:
    if t.is_complex():
        return t.to(torch.complex128)
    if t.is_floating_point():
        return t.to(torch.float64)
    if t.dtype == torch.bool:
        return t.to(torch.int64)
    return t.to(torch.float64) if t.dtype == torch.uint64 else t.to(torch.int64)


def _scalar(t: Any) -> Any:
    import torch

    if t.is_floating_point():
        return float(t.to(torch.float64).item())
    if t.is_complex():
        return complex(t.to(torch.complex128).item())
    return t.item()
