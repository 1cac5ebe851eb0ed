"""Tensor comparison through deepdiff with the torch operator."""
from __future__ import annotations

import torch

from runner.compare.tensors import compare_tensor_trees, path_key, tensor_difference


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


def test_negative_zero_is_a_bit_difference_but_close_passes():
    a, b = torch.tensor([0.0]), torch.tensor([-0.0])
    assert tensor_difference(a, b, bitwise=True) is not None
    assert tensor_difference(a, b, bitwise=False, rtol=0, atol=0) is None


def test_bf16_compared_as_raw_bits():
    a = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    b = a.clone()
    b.view(torch.int16)[1] += 1          # one ulp
    m = tensor_difference(a, b)
    assert m is not None and m.count == 1 and m.index == (1,)


def test_dtype_shape_missing_extra():
    out = compare_tensor_trees({"a": torch.zeros(2), "b": torch.zeros(2), "c": torch.zeros(1)},
                               {"a": torch.zeros(2, dtype=torch.float64), "b": torch.zeros(3), "d": torch.zeros(1)})
    reasons = {path_key(m.key): m.reason for m in out}
    assert reasons == {"a": "dtype", "b": "shape", "c": "missing", "d": "extra"}


def test_tolerance_mode():
    a = torch.ones(100)
    b = a + 1e-6
    assert compare_tensor_trees({"t": a}, {"t": b}, bitwise=False, rtol=1e-5) == []
    assert len(compare_tensor_trees({"t": a}, {"t": b}, bitwise=True)) == 1
