"""Comparison of nested captures (mappings / lists / scalars / tensors), strict and fast.

* **Structure** — both trees are walked once into a flat signature (container types, mapping
  keys, non-tensor leaves with floats as bits) and a list of tensors. When the signatures are
  equal, the tensors pair up by position and no path string is built unless a tensor
  differs. Otherwise deepdiff compares the two trees with every tensor replaced by a light
  descriptor (dtype, shape) and every float by its bits, and *every* report type it makes is
  turned into a mismatch: missing / extra keys, list-length differences, None vs tensor and
  any other type change, changed scalars; a report type this module does not know is a
  mismatch too ("unhandled deepdiff report"), never ignored.
* **Tensors** — dtype and shape first, then the raw bytes of every dtype (so bf16/fp16/fp32
  ``-0.0`` vs ``+0.0`` differ, NaN payloads differ, fp8, complex, bool and ints are exact):
  large tensors one ``torch.equal`` each over an integer view of their bytes, small ones
  concatenated per dtype and compared in one call. ``close`` mode uses ``torch.isclose``
  (NaN equal to NaN) for floating and complex dtypes and bytes for the rest.
* **Detail** only on mismatch: count of differing elements, max abs difference and its
  index, the two values there.
"""
from __future__ import annotations

import gc
import math
import re
import struct
from dataclasses import dataclass
from typing import Any, Mapping

#: tensors up to this many bytes are compared in one batch per dtype
SMALL_BYTES = 1 << 16
#: deepdiff report types and the mismatch reason each one becomes
HANDLED_REPORTS = {
    "dictionary_item_removed": "missing", "dictionary_item_added": "extra",
    "iterable_item_removed": "length", "iterable_item_added": "length",
    "type_changes": "type", "values_changed": "values", "tensor_mismatch": "tensor",
}


@dataclass(frozen=True)
class TensorMismatch:
    key: str                     # deepdiff path, e.g. "root['grads']['layers.0.mlp.fc1.weight']"
    reason: str                  # values, dtype, shape, missing, extra, type, length, unhandled
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
        if self.reason == "values" and self.numel:
            return (f"{self.key}: {self.count}/{self.numel} elements differ, max abs diff "
                    f"{self.max_abs_diff:.6g} at index {list(self.index)} (expected {self.expected!r}, got {self.actual!r})")
        if self.reason == "values":
            return f"{self.key}: value differs (expected {self.expected!r}, got {self.actual!r})"
        if self.reason in ("dtype", "shape", "type"):
            return f"{self.key}: {self.reason} differs (expected {self.expected}, got {self.actual})"
        if self.reason == "length":
            return f"{self.key}: list length differs (expected {self.expected}, got {self.actual})"
        if self.reason == "missing":
            return f"{self.key}: missing in the actual capture"
        if self.reason == "extra":
            return f"{self.key}: not in the reference capture"
        return f"{self.key}: {self.reason} (expected {self.expected!r}, got {self.actual!r})"


# -- structure --------------------------------------------------------------------------------
def _flatten(value: Any, path: str, out: dict[str, Any], tensor: type) -> None:
    """path -> leaf, plus path -> container marker, in deepdiff's path syntax."""
    if isinstance(value, tensor):
        out[path] = value
    elif isinstance(value, dict) or isinstance(value, Mapping):
        out[path] = ("dict", len(value))
        for k, v in value.items():
            _flatten(v, f"{path}[{k!r}]", out, tensor)
    elif isinstance(value, (list, tuple)):
        out[path] = (type(value).__name__, len(value))
        for i, v in enumerate(value):
            _flatten(v, f"{path}[{i}]", out, tensor)
    else:
        out[path] = value


@dataclass(frozen=True)
class _Desc:
    """A tensor as deepdiff sees it."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Bits:
    """A float as deepdiff sees it: its bits (so -0.0 != 0.0 and NaN == NaN of one payload)."""

    value: float

    @property
    def bits(self) -> bytes:
        return struct.pack("<d", self.value)


def _light(value: Any, torch: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _Desc(str(value.dtype), tuple(value.shape))
    if isinstance(value, float):
        return _Bits(value)
    if isinstance(value, Mapping):
        return {k: _light(v, torch) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_light(v, torch) for v in value)
    return value


def _structure_mismatches(expected: Any, actual: Any, torch: Any) -> list[TensorMismatch]:
    from deepdiff import DeepDiff
    from deepdiff.model import CUSTOM_FIELD
    from deepdiff.operator import BaseOperator

    class LightOperator(BaseOperator):
        def normalize_value_for_hashing(self, parent: Any, obj: Any) -> Any:
            return obj   # descriptors are frozen (hashable); sets hash their items as they are

        def give_up_diffing(self, level, diff_instance) -> bool:
            a, b = level.t1, level.t2
            if isinstance(a, _Desc) and isinstance(b, _Desc):
                if a.dtype != b.dtype:
                    diff_instance.custom_report_result("tensor_mismatch", level, {"m": ("dtype", a.dtype, b.dtype)})
                elif a.shape != b.shape:
                    diff_instance.custom_report_result("tensor_mismatch", level,
                                                       {"m": ("shape", list(a.shape), list(b.shape))})
            elif isinstance(a, _Bits) and isinstance(b, _Bits):
                if a.bits != b.bits:
                    diff_instance.custom_report_result("tensor_mismatch", level, {"m": ("values", a.value, b.value)})
            else:
                return False
            return True

    dd = DeepDiff(_light(expected, torch), _light(actual, torch), view="tree", verbose_level=2,
                  custom_operators=[LightOperator(types=[_Desc, _Bits])])
    out: list[TensorMismatch] = []
    for report, levels in dd.items():
        reason = HANDLED_REPORTS.get(report)
        for level in levels:
            path = level.path()
            if reason == "tensor":
                why, e, a = level.additional[CUSTOM_FIELD]["m"]
                out.append(TensorMismatch(path, why, expected=e, actual=a))
            elif reason == "length":
                parent = level.up
                out.append(TensorMismatch(parent.path(), "length", expected=len(parent.t1), actual=len(parent.t2)))
            elif reason == "type":
                out.append(TensorMismatch(path, "type", expected=_type_name(level.t1), actual=_type_name(level.t2)))
            elif reason in ("missing", "extra"):
                out.append(TensorMismatch(path, reason))
            elif reason == "values":
                out.append(TensorMismatch(path, "values", expected=level.t1, actual=level.t2))
            else:
                out.append(TensorMismatch(path, f"unhandled deepdiff report '{report}'", expected=level.t1,
                                          actual=level.t2))
    # one entry per list whose length differs, however many items it gained or lost
    seen: set[tuple[str, str]] = set()
    unique = []
    for m in out:
        if (m.key, m.reason) not in seen:
            seen.add((m.key, m.reason))
            unique.append(m)
    return unique


def _type_name(v: Any) -> str:
    return "Tensor" if isinstance(v, _Desc) else ("float" if isinstance(v, _Bits) else type(v).__name__)


# -- tensors ----------------------------------------------------------------------------------
_INT_OF_SIZE = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


def _bytes_view(t: Any, torch: Any) -> Any:
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


def _element_bytes(t: Any, torch: Any) -> Any:
    """[numel, element_size] uint8 view: one row of bytes per element."""
    flat = t.reshape(-1).contiguous()
    return flat.view(torch.uint8).view(flat.numel(), flat.element_size()) if flat.numel() else flat.view(torch.uint8)


def _close_applies(t: Any) -> bool:
    return bool(t.is_floating_point() or t.is_complex()) and t.element_size() > 1


def tensor_difference(expected: Any, actual: Any, *, bitwise: bool = True, rtol: float = 0.0, atol: float = 0.0,
                      key: str = "") -> TensorMismatch | None:
    """Compare two tensors; None when they match (bitwise: every byte equal)."""
    import torch

    if expected.dtype != actual.dtype:
        return TensorMismatch(key, "dtype", expected=str(expected.dtype), actual=str(actual.dtype))
    if tuple(expected.shape) != tuple(actual.shape):
        return TensorMismatch(key, "shape", expected=list(expected.shape), actual=list(actual.shape))
    if bitwise or not _close_applies(expected):
        if torch.equal(_bytes_view(expected, torch), _bytes_view(actual, torch)):
            return None
    elif bool(torch.isclose(expected, actual, rtol=rtol, atol=atol, equal_nan=True).all()):
        return None
    return _detail(expected, actual, bitwise=bitwise, rtol=rtol, atol=atol, key=key)


def _detail(expected: Any, actual: Any, *, bitwise: bool, rtol: float, atol: float, key: str) -> TensorMismatch:
    import torch

    if expected.numel() == 0:
        return TensorMismatch(key, "values", count=0, numel=0)
    if bitwise or not _close_applies(expected):
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


def _suspects(refs: list[Any], te: list[Any], ta: list[Any], out: list[TensorMismatch], key_of: Any,
              bitwise: bool, torch: Any) -> list[int]:
    """dtype and shape checks (mismatches into ``out``), then the pairs that may differ: every
    pair in ``close`` mode that has a float dtype, else the pairs whose bytes differ. Small
    tensors of one dtype are concatenated and compared in one call; large ones one by one.
    Tensor attributes are read in list comprehensions (one pass each), not per pair.
    Returns positions into ``te``/``ta``."""
    de, da = [t.dtype for t in te], [t.dtype for t in ta]
    se, sa = [t.shape for t in te], [t.shape for t in ta]
    ok: Any = range(len(te))
    if de != da or se != sa:
        ok = []
        for i in range(len(te)):
            if de[i] is not da[i]:
                out.append(TensorMismatch(key_of(refs[i]), "dtype", expected=str(de[i]), actual=str(da[i])))
            elif se[i] != sa[i]:
                out.append(TensorMismatch(key_of(refs[i]), "shape", expected=list(se[i]), actual=list(sa[i])))
            else:
                ok.append(i)
    found: list[int] = []
    nbytes = [t.nbytes for t in te]
    small: dict[Any, list[int]] = {}
    for i in ok:
        e = te[i]
        if not bitwise and _close_applies(e):
            found.append(i)
        elif nbytes[i] <= SMALL_BYTES:
            group = small.get(de[i])
            if group is None:
                group = small[de[i]] = []
            group.append(i)
        elif not torch.equal(_bytes_view(e, torch), _bytes_view(ta[i], torch)):
            found.append(i)
    for idx in small.values():
        if set(map(len, map(se.__getitem__, idx))) == {1}:   # all 1-D: no reshape per tensor
            es, as_ = list(map(te.__getitem__, idx)), list(map(ta.__getitem__, idx))
        else:
            es = [te[i].reshape(-1) for i in idx]
            as_ = [ta[i].reshape(-1) for i in idx]
        try:
            same = torch.equal(_bytes_view(torch.cat(es), torch), _bytes_view(torch.cat(as_), torch))
        except RuntimeError:   # e.g. tensors on different devices: one by one
            same = False
        if not same:           # find which (rare): one by one
            found.extend(i for i in idx
                         if te[i].device != ta[i].device
                         or not torch.equal(_bytes_view(te[i], torch), _bytes_view(ta[i], torch)))
    return found


def _ordered_keys(d: Mapping[Any, Any]) -> list[Any]:
    try:
        return sorted(d)
    except TypeError:
        return sorted(d, key=repr)


def _signature(value: Any, tensors: list[Any], sig: list[Any], tensor: type) -> None:
    """The tree's structure and non-tensor leaves as one flat list (mapping keys in sorted
    order, floats by their bits), its tensors in the same order — no path strings."""
    if isinstance(value, tensor):
        tensors.append(value)
        sig.append(None)
    elif isinstance(value, dict) or isinstance(value, Mapping):
        keys = _ordered_keys(value)
        items = [value[k] for k in keys]
        if set(map(type, items)) == {tensor}:   # the common leaf level: only tensors, no calls per item
            sig.append(("dict of tensors", tuple(keys)))
            tensors.extend(items)
            return
        sig.append(("dict", tuple(keys)))
        for v in items:
            _signature(v, tensors, sig, tensor)
    elif isinstance(value, (list, tuple)):
        if value and set(map(type, value)) == {tensor}:
            sig.append((type(value).__name__ + " of tensors", len(value)))
            tensors.extend(value)
            return
        sig.append((type(value).__name__, len(value)))
        for v in value:
            _signature(v, tensors, sig, tensor)
    elif isinstance(value, float):
        sig.append(("float", struct.pack("<d", value)))
    else:
        sig.append((type(value), value))


def _tensor_paths(value: Any, path: str, out: list[str], tensor: type) -> None:
    """The deepdiff paths of the tensors, in ``_signature``'s order (only on a mismatch)."""
    if isinstance(value, tensor):
        out.append(path)
    elif isinstance(value, dict) or isinstance(value, Mapping):
        for k in _ordered_keys(value):
            _tensor_paths(value[k], f"{path}[{k!r}]", out, tensor)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _tensor_paths(v, f"{path}[{i}]", out, tensor)


def _same_signature(a: list[Any], b: list[Any]) -> bool:
    try:
        return a == b
    except Exception:  # noqa: BLE001 - a leaf whose == is not a bool (an array): let deepdiff judge
        return False


def compare_tensor_trees(expected: Any, actual: Any, *, bitwise: bool = True, rtol: float = 0.0,
                         atol: float = 0.0) -> list[TensorMismatch]:
    """All mismatches between two nested structures of tensors, sorted by key.

    The cyclic garbage collector is paused while it runs (it allocates no cycles, and a full
    collection triggered by its small bookkeeping objects would cost more than the work)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return _compare(expected, actual, bitwise=bitwise, rtol=rtol, atol=atol)
    finally:
        if paused:
            gc.enable()


def _compare(expected: Any, actual: Any, *, bitwise: bool, rtol: float, atol: float) -> list[TensorMismatch]:
    import torch

    tensor = torch.Tensor
    te: list[Any] = []
    ta: list[Any] = []
    se: list[Any] = []
    sa: list[Any] = []
    _signature(expected, te, se, tensor)
    _signature(actual, ta, sa, tensor)
    out: list[TensorMismatch] = []
    refs: Any = range(len(te))
    if not _same_signature(se, sa):                         # deepdiff names what differs; tensors it flags are not compared twice
        fe: dict[str, Any] = {}
        fa: dict[str, Any] = {}
        _flatten(expected, "root", fe, tensor)
        _flatten(actual, "root", fa, tensor)
        out.extend(_structure_mismatches(expected, actual, torch))
        flagged = {m.key for m in out}
        refs = [k for k, e in fe.items()
                if k not in flagged and isinstance(e, tensor) and isinstance(fa.get(k), tensor)]
        te, ta = [fe[k] for k in refs], [fa[k] for k in refs]
    paths: list[str] = []

    def key_of(ref: Any) -> str:
        if isinstance(ref, str):
            return ref
        if not paths:
            _tensor_paths(expected, "root", paths, tensor)
        return paths[ref]

    for i in _suspects(refs, te, ta, out, key_of, bitwise, torch):
        m = tensor_difference(te[i], ta[i], bitwise=bitwise, rtol=rtol, atol=atol, key=key_of(refs[i]))
        if m is not None:
            out.append(m)
    out.sort(key=lambda m: m.key)
    return out


def path_key(path: str) -> str:
    """"root['a']['b'][0]" -> "a.b.0" for messages."""
    parts = re.findall(r"\[(?:'([^']*)'|\"([^\"]*)\"|(\d+))\]", path)
    return ".".join(a or b or c for a, b, c in parts) or path
