"""Capture comparison speed: ``runner.compare.tensors.compare_tensor_trees`` vs a plain loop of
``torch.equal`` over the same pairs, measured side by side (alternating, same process).

Two workloads: large tensors (8 x 4M float32 + bf16 grads) and 5,000 small ones (a nested
capture as the equivalence kind saves it). Prints the median time of each and the ratio
``torch.equal time / comparator time`` (1.0 = as fast as torch.equal; higher is faster).
A third line times 5,000 small tensors of mixed ranks (a gradient capture: 2,500 weights
[4, 4] and 2,500 biases [4]); a fourth the 1-D small workload in ``close`` mode (rtol 1e-5)
against a loop of ``torch.allclose`` (NaN equal to NaN) over the same pairs.

    python benchmarks/compare_tensors.py [--repeats 15]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

from runner.compare.tensors import compare_tensor_trees


def large() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {"outputs": {f"out{i}": torch.randn(2048, 2048, generator=g) for i in range(4)},
            "grads": {f"layer{i}.weight": torch.randn(2048, 2048, generator=g).to(torch.bfloat16) for i in range(4)}}


def small(n: int = 5000) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    return {"outputs": {f"mb{i}": torch.randn(8, generator=g) for i in range(n // 2)},
            "grads": {f"layers.{i}.bias": torch.randn(16, generator=g) for i in range(n - n // 2)}}


def mixed(n: int = 5000) -> dict[str, Any]:
    g = torch.Generator().manual_seed(2)
    grads: dict[str, torch.Tensor] = {}
    for i in range(n // 2):
        grads[f"layers.{i}.weight"] = torch.randn(4, 4, generator=g)
        grads[f"layers.{i}.bias"] = torch.randn(4, generator=g)
    return {"grads": grads}


def clone(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: clone(v) for k, v in tree.items()}
    return tree.clone()


def pairs(a: Any, b: Any, out: list) -> list:
    if isinstance(a, dict):
        for k in a:
            pairs(a[k], b[k], out)
    else:
        out.append((a, b))
    return out


def bench(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, ref: Any, repeats: int, close: bool = False) -> float:
    cand = clone(ref)
    flat = pairs(ref, cand, [])

    def with_torch_equal() -> bool:
        if close:
            return all(torch.allclose(x, y, rtol=1e-5, atol=0.0, equal_nan=True) for x, y in flat)
        return all(torch.equal(x, y) for x, y in flat)

    def with_comparator() -> bool:
        return not compare_tensor_trees(ref, cand, bitwise=not close, rtol=1e-5)

    assert with_torch_equal() and with_comparator()
    t_eq, t_cmp = [], []
    for _ in range(repeats):          # alternate, so load changes hit both alike
        t_eq.append(bench(with_torch_equal))
        t_cmp.append(bench(with_comparator))
    eq, cmp_ = statistics.median(t_eq), statistics.median(t_cmp)
    ratio = eq / cmp_
    base = "allclose" if close else "torch.equal"
    print(f"{name:34} {base:11} {eq * 1e3:9.2f} ms   comparator {cmp_ * 1e3:9.2f} ms   ratio {ratio:.2f}")
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    ns = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, medians of {ns.repeats}")
    measure("large: 8 tensors x 4M elements", large(), ns.repeats)
    measure("small: 5,000 tensors of 8-16", small(), ns.repeats)
    measure("small, mixed ranks (weights+biases)", mixed(), ns.repeats)
    measure("small, close mode (rtol 1e-5)", small(), ns.repeats, close=True)


if __name__ == "__main__":
    main()
