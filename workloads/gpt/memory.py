"""``mem-allocated-bytes`` / ``mem-max-allocated-bytes``: CUDA allocator statistics on GPU,
and on CPU (where PyTorch keeps no allocator statistics) a measured substitute — the bytes of
the distinct tensor storages the training state holds, plus the iteration's micro-batch data
and the peak of the activations autograd saved for backward."""
from __future__ import annotations

from typing import Any

import torch

from workloads.gpt.pipeline import ActivationTracker


def tensor_storage_bytes(*roots: Any, max_depth: int = 6) -> int:
    """Bytes of the distinct tensor storages reachable from ``roots`` through modules, lists,
    tuples, dicts and object attributes (each storage counted once). Used on CPU as the
    substitute for CUDA's memory_allocated: the roots are the model chunks and the optimizer,
    so the count covers parameters, grad buffers, fp32 main params and Adam moments."""
    seen_obj: set[int] = set()
    seen_storage: set[int] = set()
    total = 0

    def visit(obj: Any, depth: int) -> None:
        nonlocal total
        if isinstance(obj, torch.Tensor):
            st = obj.untyped_storage()
            ptr = st.data_ptr()
            if ptr and ptr not in seen_storage:
                seen_storage.add(ptr)
                total += st.nbytes()
            return
        if depth > max_depth or id(obj) in seen_obj or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            return
        seen_obj.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                visit(t, depth + 1)
            return
        if isinstance(obj, dict):
            for v in obj.values():
                visit(v, depth + 1)
        elif isinstance(obj, (list, tuple, set)):
            for v in obj:
                visit(v, depth + 1)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("workloads."):
            untracked = getattr(type(obj), "untracked_attributes", ())
            for k, v in vars(obj).items():
                if k not in untracked:
                    visit(v, depth + 1)

    for r in roots:
        visit(r, 0)
    return total


class MemoryMeter:
    """``mem-allocated-bytes`` / ``mem-max-allocated-bytes``: CUDA allocator statistics on GPU;
    on CPU the bytes of the tensors the training state holds (model, grad buffers, optimizer
    shards) after the iteration, and for the maximum that plus the iteration's microbatch data
    and the peak of activation bytes held for backward (saved-tensor hooks)."""

    def __init__(self, device: torch.device, roots: tuple[Any, ...], param_storages: list[int]) -> None:
        self.cuda = device.type == "cuda"
        self.roots = roots
        self.param_storages = param_storages
        self.max_bytes = 0
        self.tracker: ActivationTracker | None = None

    def begin(self) -> ActivationTracker | None:
        if self.cuda:
            return None
        self.tracker = ActivationTracker(self.param_storages)
        return self.tracker

    def end(self, batches: Any) -> tuple[float, float]:
        if self.cuda:
            return float(torch.cuda.memory_allocated()), float(torch.cuda.max_memory_allocated())
        allocated = tensor_storage_bytes(*self.roots)
        peak = allocated + tensor_storage_bytes(batches) + (self.tracker.peak if self.tracker else 0)
        self.max_bytes = max(self.max_bytes, peak)
        return float(allocated), float(self.max_bytes)
