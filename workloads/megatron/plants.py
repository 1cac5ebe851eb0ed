"""Bugs planted into megatron-core at run time, for the negative controls (``params.plant``).

Each plant wraps one megatron-core function for the duration of a ``with`` block, so the
case runs megatron-core's real code with exactly one defect. ``None`` plants nothing.

* ``wrong_microbatch`` — ``TransformerLayerSchedulePlan.run`` (models/common/
  model_chunk_schedule_plan.py) runs the forward nodes on the previous call's microbatch input
  from the second overlapped step on.
* ``dropped_combine_grad`` — ``ScheduleNode.get_grad`` (pipeline_parallel/utils.py) of the
  ``moe_combine`` node returns zeros: the gradient flowing back through the combine all-to-all
  is dropped.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator


def _wrong_microbatch() -> tuple[Any, str, Callable[..., Any]]:
    from megatron.core.models.common.model_chunk_schedule_plan import TransformerLayerSchedulePlan

    original = TransformerLayerSchedulePlan.run
    seen: list[Any] = []

    def run(f_layer: Any, b_layer: Any, f_input: Any = None, b_grad: Any = None, is_last_layer_in_bwd: bool = False):
        if f_layer is not None and b_layer is not None and f_input is not None:
            if len(seen) >= 2:
                f_input = seen[-1]
            seen.append(f_input)
        elif f_input is not None:
            seen.append(f_input)
        return original(f_layer, b_layer, f_input=f_input, b_grad=b_grad, is_last_layer_in_bwd=is_last_layer_in_bwd)

    return TransformerLayerSchedulePlan, "run", staticmethod(run)


def _dropped_combine_grad() -> tuple[Any, str, Callable[..., Any]]:
    import torch
    from megatron.core.pipeline_parallel.utils import ScheduleNode

    original = ScheduleNode.get_grad

    def get_grad(self: Any) -> Any:
        grad = original(self)
        if self.name != "moe_combine":
            return grad
        if isinstance(grad, tuple):
            return tuple(torch.zeros_like(g) if g is not None else None for g in grad)
        return torch.zeros_like(grad) if grad is not None else None

    return ScheduleNode, "get_grad", get_grad


PLANTS: dict[str, Callable[[], tuple[Any, str, Any]]] = {
    "wrong_microbatch": _wrong_microbatch,
    "dropped_combine_grad": _dropped_combine_grad,
}


@contextlib.contextmanager
def planted(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    if name not in PLANTS:
        raise ValueError(f"params.plant: unknown plant {name!r} (known: {', '.join(sorted(PLANTS))})")
    owner, attr, value = PLANTS[name]()
    old = owner.__dict__[attr]
    setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, old)
