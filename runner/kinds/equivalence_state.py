"""Snapshot and restore of what a run may change: modules, optimizers, RNG (in the rank).

``snapshot(state)`` is taken right after ``setup``; ``restore`` puts every module's
parameters and buffers back (in place, so optimizers and hooks keep pointing at the same
tensors), sets gradients to None, reloads every optimizer's state dict, and resets the
python, numpy, torch CPU and CUDA generators — so ``candidate`` starts exactly where
``reference`` did.
"""
from __future__ import annotations

import copy
import random
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from runner.equivalence import modules, optimizers


@dataclass(frozen=True)
class RngState:
    python: Any
    torch_cpu: torch.Tensor
    cuda: tuple[torch.Tensor, ...] | None
    numpy: Any = None

    @classmethod
    def capture(cls) -> "RngState":
        np = sys.modules.get("numpy")
        cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(random.getstate(), torch.get_rng_state(), cuda, np.random.get_state() if np is not None else None)

    def restore(self) -> list[str]:
        random.setstate(self.python)
        torch.set_rng_state(self.torch_cpu)
        restored = ["python", "torch"]
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(list(self.cuda))
            restored.append("cuda")
        if self.numpy is not None:
            sys.modules["numpy"].random.set_state(self.numpy)
            restored.append("numpy")
        return restored


@dataclass(frozen=True)
class Snapshot:
    modules: tuple[tuple[str, torch.nn.Module, dict[str, torch.Tensor]], ...]
    optimizers: tuple[tuple[str, torch.optim.Optimizer, dict[str, Any]], ...]
    rng: RngState
    notes: tuple[str, ...] = field(default=())


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {f"param:{n}": p for n, p in module.named_parameters()}
    out.update({f"buffer:{n}": b for n, b in module.named_buffers() if b is not None})
    return out


def snapshot(state: Any) -> Snapshot:
    mods = tuple((prefix, m, {k: t.detach().clone() for k, t in _tensors(m).items()}) for prefix, m in modules(state))
    opts = tuple((prefix, o, copy.deepcopy(o.state_dict())) for prefix, o in optimizers(state))
    return Snapshot(mods, opts, RngState.capture())


@dataclass(frozen=True)
class Restored:
    modules: int
    tensors: int
    optimizers: int
    rng: tuple[str, ...]
    weights: bool
    grads: bool

    def describe(self) -> str:
        parts = []
        if self.weights:
            parts.append(f"weights of {self.modules} module{'s' if self.modules != 1 else ''} ({self.tensors} tensors)")
        if self.optimizers:
            parts.append(f"{self.optimizers} optimizer state{'s' if self.optimizers != 1 else ''}")
        if self.rng:
            parts.append("RNG (" + ", ".join(self.rng) + ")")
        text = "restored before candidate: " + (", ".join(parts) if parts else "nothing")
        if self.grads:
            text += "; grads set to None"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"modules": self.modules, "tensors": self.tensors, "optimizers": self.optimizers,
                "rng": list(self.rng), "weights": self.weights, "grads": self.grads}


def restore(snap: Snapshot, *, weights: bool = True, grads: bool = True, rng: bool = True) -> Restored:
    """Put the snapshot back; ``weights``/``grads``/``rng`` False leave that part as it is
    (only the project's negative-control faults do that)."""
    count = 0
    with torch.no_grad():
        for prefix, module, saved in snap.modules:
            current = _tensors(module)
            if weights:
                for key, value in saved.items():
                    t = current.get(key)
                    if t is None:
                        raise RuntimeError(f"{prefix}{key.split(':', 1)[1]} was removed from the module by the reference run")
                    if t.shape == value.shape and t.dtype == value.dtype:
                        t.copy_(value)
                    else:
                        t.data = value.clone()
                    count += 1
            if grads:
                for p in module.parameters():
                    p.grad = None
    for _, opt, saved_opt in snap.optimizers:
        opt.load_state_dict(copy.deepcopy(saved_opt))
    rng_names = tuple(snap.rng.restore()) if rng else ()
    return Restored(len(snap.modules), count, len(snap.optimizers), rng_names, weights, grads)
