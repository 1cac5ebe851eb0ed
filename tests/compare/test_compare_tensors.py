"""The capture comparator: raw bytes for every dtype after dtype/shape checks, and every
structural difference a failure (each test plants the difference it exists to catch)."""
from __future__ import annotations

import pytest
import torch

from runner.compare import tensor_batch
from runner.compare.tensors import HANDLED_REPORTS, compare_tensor_trees, path_key, tensor_difference


@pytest.fixture(autouse=True, params=["nested", "concatenated"])
def packing(request, monkeypatch):
    """Every test runs twice: many small tensors of one dtype packed as nested tensors first
    (the fast path), and without that (concatenation only)."""
    monkeypatch.setattr(tensor_batch, "NESTED_PACKING", request.param == "nested")
    return request.param


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


# -- batched comparison of many small tensors: each test plants differences the batches must find
def test_many_small_tensors_several_differ_in_several_dtypes():
    ref = {f"f{i:04d}": torch.full((3,), float(i)) for i in range(3000)}
    ref.update({f"h{i:04d}": torch.full((2,), float(i), dtype=torch.bfloat16) for i in range(1000)})
    ref.update({f"i{i:04d}": torch.full((2,), i, dtype=torch.int64) for i in range(1000)})
    cand = {k: v.clone() for k, v in ref.items()}
    cand["f0000"][0] = 1.0
    cand["f1234"][2] = -0.0 if ref["f1234"][2] == 0 else 0.5
    cand["f2999"][1] = float("nan")
    cand["h0500"].view(torch.int16)[0] += 1
    cand["i0999"][1] = -7
    out = compare_tensor_trees(ref, cand)
    assert [(path_key(m.key), m.index) for m in out] == [
        ("f0000", (0,)), ("f1234", (2,)), ("f2999", (1,)), ("h0500", (0,)), ("i0999", (1,))]
    assert all(m.reason == "values" and m.count == 1 for m in out)


def test_every_small_tensor_differs():
    ref = [torch.zeros(2) for _ in range(300)]
    cand = [torch.ones(2) for _ in range(300)]
    out = compare_tensor_trees(ref, cand)
    assert len(out) == 300 and {m.count for m in out} == {2}


def test_mixed_ranks_and_scalars_in_one_dtype():
    ref = {"m": torch.zeros(2, 3), "v": torch.zeros(4), "s": torch.tensor(1.0), "e": torch.zeros(0, 5),
           "t": torch.arange(6.0).view(2, 3).t()}
    cand = {k: v.clone() for k, v in ref.items()}
    assert compare_tensor_trees(ref, cand) == []
    cand["s"] = torch.tensor(-1.0)
    cand["t"] = ref["t"].contiguous()
    cand["t"][2, 1] = 9.0
    out = compare_tensor_trees(ref, cand)
    assert [(path_key(m.key), m.index) for m in out] == [("s", ()), ("t", (2, 1))]


def test_small_tensors_over_one_batch_are_compared_in_chunks(monkeypatch):
    monkeypatch.setattr(tensor_batch, "BATCH_BYTES", 64)        # 4 tensors of 16 bytes per batch
    ref = {f"t{i:02d}": torch.full((4,), float(i)) for i in range(40)}
    cand = {k: v.clone() for k, v in ref.items()}
    assert compare_tensor_trees(ref, cand) == []
    cand["t37"][3] = 0.0
    (m,) = compare_tensor_trees(ref, cand)
    assert path_key(m.key) == "t37" and m.index == (3,)


def test_large_and_small_tensors_together():
    big = torch.zeros(tensor_batch_small_bytes() // 4 + 1)
    ref = {"big": big, **{f"s{i}": torch.zeros(2) for i in range(50)}}
    cand = {k: v.clone() for k, v in ref.items()}
    cand["big"][-1] = 1.0
    cand["s49"][0] = 2.0
    out = compare_tensor_trees(ref, cand)
    assert [(path_key(m.key), m.index) for m in out] == [("big", (big.numel() - 1,)), ("s49", (0,))]


def tensor_batch_small_bytes() -> int:
    return tensor_batch.SMALL_BYTES


def test_close_mode_in_batches():
    ref = {f"w{i}": torch.full((4,), 1.0 + i) for i in range(200)}
    ref["nan"] = torch.tensor([float("nan"), 1.0])
    ref.update({f"n{i}": torch.full((2,), i) for i in range(50)})
    ref["fp8"] = torch.tensor([1.0, 2.0]).to(torch.float8_e4m3fn)
    near = {k: (v * (1 + 1e-7) if v.is_floating_point() and v.element_size() > 1 else v.clone())
            for k, v in ref.items()}
    assert compare_tensor_trees(ref, near, bitwise=False, rtol=1e-5) == []      # NaN equal to NaN by value
    assert len(compare_tensor_trees(ref, near)) == 201                          # bitwise: every float differs
    far = {k: v.clone() for k, v in ref.items()}
    far["w123"][1] += 1e-2
    far["n7"][0] += 1                                                            # ints exact in close mode
    far["fp8"].view(torch.uint8)[0] ^= 1                                         # fp8 by bytes in close mode
    out = compare_tensor_trees(ref, far, bitwise=False, rtol=1e-5)
    assert [(path_key(m.key), m.index) for m in out] == [("fp8", (0,)), ("n7", (0,)), ("w123", (1,))]


def test_shapes_swapped_with_the_same_bytes():
    """Same dtypes, same bytes in the same order: only the shapes tell the captures apart."""
    out = compare_tensor_trees([torch.zeros(2), torch.zeros(3)], [torch.zeros(3), torch.zeros(2)])
    assert [(path_key(m.key), m.reason, m.expected, m.actual) for m in out] == [
        ("0", "shape", [2], [3]), ("1", "shape", [3], [2])]
    ref = {f"w{i:02d}": torch.zeros(2, 3) for i in range(20)}
    cand = {**ref, "w07": torch.zeros(3, 2)}
    (m,) = compare_tensor_trees(ref, cand)
    assert (path_key(m.key), m.reason) == ("w07", "shape")


def test_a_typical_capture_takes_the_nested_path(packing, monkeypatch):
    """On this torch, an all-small one-dtype capture that matches is decided by the nested
    packing alone (the per-tensor shape reads of the general way never run)."""
    if packing != "nested":
        pytest.skip("the nested path only")
    ref = {"outputs": {f"mb{i}": torch.randn(8) for i in range(100)},
           "grads": {f"p{i}": torch.randn(4, 4) for i in range(100)}}
    cand = {k: {n: t.clone() for n, t in v.items()} for k, v in ref.items()}

    def general_way(*args, **kwargs):
        raise AssertionError("the general way ran")

    monkeypatch.setattr(tensor_batch, "_same_dtype_and_shape", general_way)
    assert compare_tensor_trees(ref, cand) == []
    assert compare_tensor_trees(ref, cand, bitwise=False, rtol=1e-6) == []


def test_fp8_tensors_of_several_shapes_in_one_batch():
    """fp8 cannot be packed as nested tensors, nor concatenated when trailing dims differ:
    each is flattened first, and a difference in the last one is still found."""
    dtype = torch.float8_e4m3fn
    ref = {f"f{i}": torch.ones(2, 2 + i).to(dtype) for i in range(6)}
    cand = {k: v.clone() for k, v in ref.items()}
    assert compare_tensor_trees(ref, cand) == []
    cand["f5"].view(torch.uint8)[1, 6] ^= 1
    (m,) = compare_tensor_trees(ref, cand)
    assert (path_key(m.key), m.index) == ("f5", (1, 6))
