"""The capture comparator: raw bytes for every dtype after dtype/shape checks, and every
structural difference a failure (each test plants the difference it exists to catch)."""
from __future__ import annotations

import pytest
import torch

from runner.compare.tensors import HANDLED_REPORTS, compare_tensor_trees, path_key, tensor_difference


def test_bitwise_equal_and_nan_bits():
    a = {"x": torch.tensor([1.0, float("nan")]), "y": torch.ones(3, dtype=torch.bfloat16)}
    b = {"x": a["x"].clone(), "y": a["y"].clone()}
    assert compare_tensor_trees(a, b) == []


def test_bitwise_reports_count_max_and_index():
    a = torch.zeros(4, 5)
    b = a.clone()
    b[2, 3] = 0.5
    b[1, 1] = 1e-7
    (m,) = compare_tensor_trees({"grad": {"w": a}}, {"grad": {"w": b}})
    assert m.reason == "values" and m.count == 2 and m.numel == 20
    assert m.index == (2, 3) and abs(m.max_abs_diff - 0.5) < 1e-9
    assert path_key(m.key) == "grad.w"
    assert "2/20 elements differ" in m.describe() and "[2, 3]" in m.describe()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_negative_zero_differs_bitwise_in_every_float_dtype(dtype):
    a, b = torch.tensor([1.0, 0.0], dtype=dtype), torch.tensor([1.0, -0.0], dtype=dtype)
    m = tensor_difference(a, b)
    assert m is not None and m.count == 1 and m.index == (1,) and m.max_abs_diff == 0.0
    (t,) = compare_tensor_trees({"t": a}, {"t": b})
    assert t.count == 1
    assert tensor_difference(a, b, bitwise=False, rtol=0, atol=0) is None   # by value they are equal


@pytest.mark.parametrize("dtype,int_view", [(torch.float32, torch.int32), (torch.float16, torch.int16),
                                            (torch.bfloat16, torch.int16)])
def test_nan_payloads_differ(dtype, int_view):
    a = torch.full((3,), float("nan"), dtype=dtype)
    b = a.clone()
    b.view(int_view)[2] += 1                     # another NaN, another payload
    assert torch.isnan(b).all()
    m = tensor_difference(a, b)
    assert m is not None and m.count == 1 and m.index == (2,) and m.max_abs_diff == float("inf")
    assert len(compare_tensor_trees([a], [b])) == 1


def test_bf16_one_ulp():
    a = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    b = a.clone()
    b.view(torch.int16)[1] += 1
    m = tensor_difference(a, b)
    assert m is not None and m.count == 1 and m.index == (1,) and m.max_abs_diff == pytest.approx(2 ** -6)


@pytest.mark.parametrize("dtype", [d for d in (getattr(torch, "float8_e4m3fn", None),
                                               getattr(torch, "float8_e5m2", None)) if d is not None])
def test_fp8_bytes(dtype):
    a = torch.tensor([0.0, 1.0, -2.0]).to(dtype)
    b = torch.tensor([-0.0, 1.0, -2.0]).to(dtype)
    assert compare_tensor_trees({"f": a}, {"f": a.clone()}) == []
    (m,) = compare_tensor_trees({"f": a}, {"f": b})
    assert m.count == 1 and m.index == (0,)
    c = a.clone()
    c.view(torch.uint8)[2] ^= 1
    m = tensor_difference(a, c)
    assert m is not None and m.index == (2,) and m.max_abs_diff > 0


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_bytes(dtype):
    a = torch.tensor([1 + 0j, 2 + 0j], dtype=dtype)
    b = torch.tensor([1 - 0j, 2 + 0j], dtype=dtype)
    b.imag[0] = -0.0
    assert compare_tensor_trees({"c": a}, {"c": a.clone()}) == []
    m = tensor_difference(a, b)
    assert m is not None and m.count == 1 and m.index == (0,)
    c = a.clone()
    c[1] = 2 + 1e-3j
    m = tensor_difference(a, c)
    assert m.index == (1,) and m.max_abs_diff == pytest.approx(1e-3) and m.actual == pytest.approx(2 + 1e-3j)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_bool_and_ints(dtype):
    a = torch.tensor([[1, 0], [1, 1]], dtype=dtype)
    b = a.clone()
    b[1, 0] = 0
    assert compare_tensor_trees({"i": a}, {"i": a.clone()}) == []
    (m,) = compare_tensor_trees({"i": a}, {"i": b})
    assert m.count == 1 and m.index == (1, 0) and m.max_abs_diff == 1
    assert tensor_difference(a, b, bitwise=False, rtol=1.0, atol=1.0) is not None   # close mode: exact for ints


def test_dtype_shape_missing_extra():
    out = compare_tensor_trees({"a": torch.zeros(2), "b": torch.zeros(2), "c": torch.zeros(1)},
                               {"a": torch.zeros(2, dtype=torch.float64), "b": torch.zeros(3), "d": torch.zeros(1)})
    reasons = {path_key(m.key): m.reason for m in out}
    assert reasons == {"a": "dtype", "b": "shape", "c": "missing", "d": "extra"}


def test_dtype_and_shape_with_equal_structure():
    out = compare_tensor_trees({"a": torch.zeros(2), "b": torch.zeros(2)},
                               {"a": torch.zeros(2, dtype=torch.bfloat16), "b": torch.zeros(2, 1)})
    assert [(path_key(m.key), m.reason) for m in out] == [("a", "dtype"), ("b", "shape")]


@pytest.mark.parametrize("expected,actual,key,reason", [
    ({"l": [torch.ones(1), torch.ones(1)]}, {"l": [torch.ones(1)]}, "l", "length"),
    ({"l": [torch.ones(1)]}, {"l": [torch.ones(1), torch.ones(1), torch.ones(1)]}, "l", "length"),
    ({"g": torch.ones(2)}, {"g": None}, "g", "type"),
    ({"g": None}, {"g": torch.ones(2)}, "g", "type"),
    ({"g": {"w": torch.ones(2)}}, {"g": [torch.ones(2)]}, "g", "type"),
    ({"n": 3}, {"n": 4}, "n", "values"),
    ({"n": 0.0}, {"n": -0.0}, "n", "values"),
    ({"s": "a"}, {"s": "b"}, "s", "values"),
    ({"n": 1}, {"n": 1.0}, "n", "type"),
    ({"d": {"x": torch.ones(1)}}, {"d": {}}, "d.x", "missing"),
    ({"d": {}}, {"d": {"x": torch.ones(1)}}, "d.x", "extra"),
])
def test_structural_differences_all_fail(expected, actual, key, reason):
    out = compare_tensor_trees(expected, actual)
    assert [(path_key(m.key), m.reason) for m in out] == [(key, reason)], out
    assert out[0].describe()


def test_list_length_reports_both_lengths():
    (m,) = compare_tensor_trees({"l": [1, 2, 3]}, {"l": [1]})
    assert m.describe() == "root['l']: list length differs (expected 3, got 1)"


def test_a_report_type_the_comparator_does_not_know_is_a_failure():
    assert "set_item_added" not in HANDLED_REPORTS
    out = compare_tensor_trees({"s": {1, 2}}, {"s": {1, 2, 3}})
    assert len(out) == 1 and out[0].reason == "unhandled deepdiff report 'set_item_added'"


def test_many_small_tensors_one_differs():
    ref = {f"t{i}": torch.full((3,), float(i)) for i in range(500)}
    cand = {k: v.clone() for k, v in ref.items()}
    cand["t321"][1] = -1.0
    (m,) = compare_tensor_trees(ref, cand)
    assert path_key(m.key) == "t321" and m.index == (1,) and m.max_abs_diff == 322.0


def test_large_and_empty_and_scalar_tensors():
    big = torch.arange(100_000, dtype=torch.float32)
    b2 = big.clone()
    b2[99_999] = 0.0
    (m,) = compare_tensor_trees({"b": big, "e": torch.empty(0), "s": torch.tensor(1.5)},
                                {"b": b2, "e": torch.empty(0), "s": torch.tensor(1.5)})
    assert m.index == (99_999,) and m.count == 1
    (s,) = compare_tensor_trees({"s": torch.tensor(1.5)}, {"s": torch.tensor(2.5)})
    assert s.index == () and s.max_abs_diff == 1.0


def test_non_contiguous_tensors_compare_by_their_values():
    a = torch.arange(12.0).view(3, 4).t()
    assert compare_tensor_trees({"a": a}, {"a": a.contiguous()}) == []


def test_tolerance_mode():
    a = torch.ones(100)
    b = a + 1e-6
    assert compare_tensor_trees({"t": a}, {"t": b}, bitwise=False, rtol=1e-5) == []
    assert len(compare_tensor_trees({"t": a}, {"t": b}, bitwise=True)) == 1
    c = a.clone()
    c[7] = 2.0
    (m,) = compare_tensor_trees({"t": a}, {"t": c}, bitwise=False, rtol=1e-5)
    assert m.count == 1 and m.index == (7,)
