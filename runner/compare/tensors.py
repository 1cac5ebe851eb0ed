"""Tensor comparison through deepdiff with a torch operator.

deepdiff walks the nested structures (captures: name -> tensor, per rank); when it meets
two tensors the ``TensorOperator`` takes over and compares them with torch in one go —
bitwise (raw bits equal, dtype and shape equal; bf16 seen as int16) or within rtol/atol —
and reports a mismatch with the count of differing elements, the max abs difference and
its index. Nothing iterates tensor elements in Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from deepdiff import DeepDiff
from deepdiff.model import CUSTOM_FIELD
from deepdiff.operator import BaseOperator


@dataclass(frozen=True)
class TensorMismatch:
    key: str                     # deepdiff path, e.g. "root['grad.layers.0.mlp.fc1.weight']"
    reason: str                  # "values", "dtype", "shape", "missing", "extra", "type"
    count: int = 0               # differing elements
    numel: int = 0
    max_abs_diff: float = 0.0
    index: tuple[int, ...] = ()  # where the max abs difference is
    expected: Any = None
    actual: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "reason": self.reason, "count": self.count, "numel": self.numel,
                "max_abs_diff": self.max_abs_diff, "index": list(self.index)}

    def describe(self) -> str:
        if self.reason == "values":
            return (f"{self.key}: {self.count}/{self.numel} elements differ, max abs diff "
                    f"{self.max_abs_diff:.6g} at index {list(self.index)} (expected {self.expected!r}, got {self.actual!r})")
        if self.reason in ("dtype", "shape", "type"):
            return f"{self.key}: {self.reason} differs (expected {self.expected}, got {self.actual})"
        if self.reason == "missing":
            return f"{self.key}: missing in the actual capture"
        if self.reason == "extra":
            return f"{self.key}: not in the reference capture"
        return f"{self.key}: {self.reason}"


def _raw_bits(t):
    import torch

    t = t.contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16)
    if t.dtype == torch.float32:
        return t.view(torch.int32)
    if t.dtype == torch.float64:
        return t.view(torch.int64)
    return t


def tensor_difference(expected, actual, *, bitwise: bool = True, rtol: float = 0.0, atol: float = 0.0,
                      key: str = "") -> TensorMismatch | None:
    """Compare two tensors with torch; None when they match."""
    import torch

    if expected.dtype != actual.dtype:
        return TensorMismatch(key, "dtype", expected=str(expected.dtype), actual=str(actual.dtype))
    if tuple(expected.shape) != tuple(actual.shape):
        return TensorMismatch(key, "shape", expected=list(expected.shape), actual=list(actual.shape))
    if bitwise:
        differ = _raw_bits(expected) != _raw_bits(actual)
    else:
        if expected.is_floating_point():
            differ = ~torch.isclose(expected, actual, rtol=rtol, atol=atol, equal_nan=True)
        else:
            differ = expected != actual
    count = int(differ.sum().item())
    if count == 0:
        return None
    if expected.is_floating_point() or expected.is_complex():
        diff = (expected.double() - actual.double()).abs()
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
        diff = torch.where(differ, diff, torch.zeros_like(diff))
    else:
        diff = (expected.long() - actual.long()).abs().double() * differ
    flat = int(torch.argmax(diff.reshape(-1)).item()) if diff.numel() else 0
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(expected.shape))) if expected.dim() else ()
    return TensorMismatch(
        key, "values", count=count, numel=expected.numel(),
        max_abs_diff=float(diff.reshape(-1)[flat].item()) if diff.numel() else 0.0, index=index,
        expected=_scalar(expected.reshape(-1)[flat]) if expected.numel() else None,
        actual=_scalar(actual.reshape(-1)[flat]) if actual.numel() else None,
    )


def _scalar(t) -> Any:
    v = t.item()
    return float(v) if isinstance(v, float) else v


class TensorOperator(BaseOperator):
    """deepdiff operator: compares two tensors with torch and reports a 'tensor_mismatch'."""

    def __init__(self, *, bitwise: bool = True, rtol: float = 0.0, atol: float = 0.0) -> None:
        import torch

        super().__init__(types=[torch.Tensor])
        self.bitwise, self.rtol, self.atol = bitwise, rtol, atol

    def give_up_diffing(self, level, diff_instance) -> bool:
        mismatch = tensor_difference(level.t1, level.t2, bitwise=self.bitwise, rtol=self.rtol,
                                     atol=self.atol, key=level.path())
        if mismatch is not None:
            diff_instance.custom_report_result("tensor_mismatch", level, {"mismatch": mismatch})
        return True  # never let deepdiff walk into the tensor


def compare_tensor_trees(expected: Mapping[str, Any], actual: Mapping[str, Any], *, bitwise: bool = True,
                         rtol: float = 0.0, atol: float = 0.0) -> list[TensorMismatch]:
    """All mismatches between two nested structures of tensors, in a stable order."""
    dd = DeepDiff(expected, actual, custom_operators=[TensorOperator(bitwise=bitwise, rtol=rtol, atol=atol)],
                  view="tree", verbose_level=2)
    out: list[TensorMismatch] = []
    for level in dd.get("tensor_mismatch", []):
        out.append(level.additional[CUSTOM_FIELD]["mismatch"])
    for level in dd.get("dictionary_item_removed", []):
        out.append(TensorMismatch(level.path(), "missing"))
    for level in dd.get("dictionary_item_added", []):
        out.append(TensorMismatch(level.path(), "extra"))
    for level in dd.get("type_changes", []):
        out.append(TensorMismatch(level.path(), "type", expected=type(level.t1).__name__, actual=type(level.t2).__name__))
    for level in dd.get("values_changed", []):
        out.append(TensorMismatch(level.path(), "values", count=1, numel=1, expected=level.t1, actual=level.t2))
    out.sort(key=lambda m: m.key)
    return out


def path_key(path: str) -> str:
    """"root['a']['b']" -> "a.b" for messages."""
    import re

    parts = re.findall(r"\[(?:'([^']*)'|(\d+))\]", path)
    return ".".join(a or b for a, b in parts) or path
