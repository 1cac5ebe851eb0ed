"""The structure of a capture: its flat signature (fast path) and, when two signatures differ,
deepdiff's report over light stand-ins, every report type turned into a mismatch.

The tree is walked with mapping keys in sorted order (deepdiff ignores mapping order too), so
the tensors of two captures pair up by position whenever their signatures are equal.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from runner.compare.tensor_mismatch import TensorMismatch

if TYPE_CHECKING:   # torch loads when a comparison runs
    import torch

#: deepdiff report types and the mismatch reason each one becomes
HANDLED_REPORTS = {
    "dictionary_item_removed": "missing", "dictionary_item_added": "extra",
    "iterable_item_removed": "length", "iterable_item_added": "length",
    "type_changes": "type", "values_changed": "values", "tensor_mismatch": "tensor",
}


# -- the fast path: one flat signature per tree -------------------------------------------------
def ordered_keys(d: Mapping[Any, Any]) -> list[Any]:
    try:
        return sorted(d)
    except TypeError:
        return sorted(d, key=repr)


def signature(value: Any, tensors: list[Any], sig: list[Any], tensor: type) -> None:
    """The tree's structure and non-tensor leaves as one flat list (mapping keys in sorted
    order, floats by their bits), its tensors in the same order — no path strings."""
    if isinstance(value, tensor):
        tensors.append(value)
        sig.append(None)
    elif isinstance(value, dict) or isinstance(value, Mapping):
        keys = ordered_keys(value)
        items = [value[k] for k in keys]
        if set(map(type, items)) == {tensor}:   # the common leaf level: only tensors, no calls per item
            sig.append(("dict of tensors", tuple(keys)))
            tensors.extend(items)
            return
        sig.append(("dict", tuple(keys)))
        for v in items:
            signature(v, tensors, sig, tensor)
    elif isinstance(value, (list, tuple)):
        if value and set(map(type, value)) == {tensor}:
            sig.append((type(value).__name__ + " of tensors", len(value)))
            tensors.extend(value)
            return
        sig.append((type(value).__name__, len(value)))
        for v in value:
            signature(v, tensors, sig, tensor)
    elif isinstance(value, float):
        sig.append(("float", struct.pack("<d", value)))
    else:
        sig.append((type(value), value))


def same_signature(a: list[Any], b: list[Any]) -> bool:
    try:
        return a == b
    except Exception:  # noqa: BLE001 - a leaf whose == is not a bool (an array): let deepdiff judge
        return False


def tensor_paths(value: Any, path: str, out: list[str], tensor: type) -> None:
    """The deepdiff paths of the tensors, in ``signature``'s order (only on a mismatch)."""
    if isinstance(value, tensor):
        out.append(path)
    elif isinstance(value, dict) or isinstance(value, Mapping):
        for k in ordered_keys(value):
            tensor_paths(value[k], f"{path}[{k!r}]", out, tensor)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            tensor_paths(v, f"{path}[{i}]", out, tensor)


def flatten(value: Any, path: str, out: dict[str, Any], tensor: type) -> None:
    """path -> leaf, plus path -> container marker, in deepdiff's path syntax."""
    if isinstance(value, tensor):
        out[path] = value
    elif isinstance(value, dict) or isinstance(value, Mapping):
        out[path] = ("dict", len(value))
        for k, v in value.items():
            flatten(v, f"{path}[{k!r}]", out, tensor)
    elif isinstance(value, (list, tuple)):
        out[path] = (type(value).__name__, len(value))
        for i, v in enumerate(value):
            flatten(v, f"{path}[{i}]", out, tensor)
    else:
        out[path] = value


# -- the slow path: deepdiff over light stand-ins ----------------------------------------------
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


def _light(value: Any, tensor: type[torch.Tensor]) -> Any:
    if isinstance(value, tensor):
        return _Desc(str(value.dtype), tuple(value.shape))
    if isinstance(value, float):
        return _Bits(value)
    if isinstance(value, Mapping):
        return {k: _light(v, tensor) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_light(v, tensor) for v in value)
    return value


def _type_name(v: Any) -> str:
    return "Tensor" if isinstance(v, _Desc) else ("float" if isinstance(v, _Bits) else type(v).__name__)


def structure_mismatches(expected: Any, actual: Any, tensor: type[torch.Tensor]) -> list[TensorMismatch]:
    """Every difference deepdiff finds between the two trees, tensors as (dtype, shape) and
    floats as bits; a report type not in ``HANDLED_REPORTS`` is a mismatch of its own."""
    from deepdiff import DeepDiff
    from deepdiff.model import CUSTOM_FIELD
    from deepdiff.operator import BaseOperator

    class LightOperator(BaseOperator):
        def normalize_value_for_hashing(self, parent: Any, obj: Any) -> Any:
            return obj   # descriptors are frozen (hashable); sets hash their items as they are

        def give_up_diffing(self, level: Any, diff_instance: Any) -> bool:
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

    dd = DeepDiff(_light(expected, tensor), _light(actual, tensor), view="tree", verbose_level=2,
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
