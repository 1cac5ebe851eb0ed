"""Helpers for the functions an ``equivalence`` case calls (``setup`` / ``reference`` /
``candidate``).

    from runner.equivalence import Skip, grads

    def reference(ctx, state):
        loss = state["model"](state["batch"]).sum()
        loss.backward()
        return {"loss": loss.detach(), "grads": grads(state)}

* ``grads(state)`` — every parameter's ``.grad`` of the modules reachable from ``state``,
  named the way ``expect: {grads: all_parameters}`` checks them.
* ``Skip("reason")`` — raise it (on every rank) when the case cannot run here; the case is
  SKIPPED with that reason.

What is *reachable* from ``state``: the object itself, its mapping values, its list/tuple
items, and its dataclass fields or instance attributes — one level deep. Names are the
path to the module (``"model."`` for ``state["model"]`` or ``state.model``, ``"0."`` for
``state[0]``, nothing for ``state`` itself) followed by ``named_parameters()``' names. A
parameter shared by two modules is named once (first path wins).

Importing this module does not import torch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping


class Skip(Exception):
    """Raised by a case's function: the case is SKIPPED with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def reachable(state: Any) -> Iterator[tuple[str, Any]]:
    """(name prefix, object) for ``state`` and the objects one level below it."""
    yield "", state
    if isinstance(state, Mapping):
        children: Iterator[tuple[str, Any]] = ((f"{k}.", v) for k, v in state.items())
    elif isinstance(state, (list, tuple)):
        children = ((f"{i}.", v) for i, v in enumerate(state))
    elif dataclasses.is_dataclass(state) and not isinstance(state, type):
        children = ((f"{f.name}.", getattr(state, f.name)) for f in dataclasses.fields(state))
    elif _is_module(state):
        return  # a module's own submodules are covered by the module
    elif hasattr(state, "__dict__") and not isinstance(state, type):
        children = ((f"{k}.", v) for k, v in vars(state).items() if not k.startswith("__"))
    else:
        return
    yield from children


def _is_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def modules(state: Any) -> list[tuple[str, Any]]:
    """The torch.nn.Module objects reachable from ``state`` (each once), with their prefixes."""
    import torch

    seen: set[int] = set()
    out = []
    for prefix, obj in reachable(state):
        if isinstance(obj, torch.nn.Module) and id(obj) not in seen:
            seen.add(id(obj))
            out.append((prefix, obj))
    return out


def optimizers(state: Any) -> list[tuple[str, Any]]:
    """The torch.optim.Optimizer objects reachable from ``state`` (each once)."""
    import torch

    seen: set[int] = set()
    out = []
    for prefix, obj in reachable(state):
        if isinstance(obj, torch.optim.Optimizer) and id(obj) not in seen:
            seen.add(id(obj))
            out.append((prefix, obj))
    return out


def named_parameters(state: Any) -> list[tuple[str, Any]]:
    """(name, parameter) of every module reachable from ``state``; shared parameters once."""
    seen: set[int] = set()
    out = []
    for prefix, module in modules(state):
        for name, param in module.named_parameters():
            if id(param) not in seen:
                seen.add(id(param))
                out.append((prefix + name, param))
    return out


def grads(state: Any) -> dict[str, Any]:
    """Parameter name -> a detached copy of its ``.grad`` (None where there is none), for
    every parameter that requires grad."""
    return {name: (p.grad.detach().clone() if p.grad is not None else None)
            for name, p in named_parameters(state) if p.requires_grad}


def gradient_names(state: Any) -> list[str]:
    """The names ``expect: {grads: all_parameters}`` requires in a capture's ``grads``."""
    return [name for name, p in named_parameters(state) if p.requires_grad]
