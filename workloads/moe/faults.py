"""Planted schedule bugs for the ``inject_fault`` arg — for the project's own tests only.

A comparison that cannot fail proves nothing; each fault here is a real bug of the kind the
overlapped schedule could have, and the tests assert that the ``a2a_overlap`` comparison
reports it as FAILED and names what differs. None of them is used in the specs.
``skip_weight_restore`` and ``skip_zero_grad`` are the ``equivalence`` kind's own faults (its
restore between the runs); the others are planted in the schedule.

* ``skip_weight_restore`` — the worker does not restore the saved initial weights before the
  overlapped run, so it starts from the weights the reference run's optimizer step produced.
* ``skip_zero_grad`` — the worker does not zero the gradients before the overlapped run, so
  they accumulate on top of the reference run's.
* ``wrong_microbatch_grad`` — ``b.pre_dispatch.backward`` of microbatch i is fed the
  dispatch-backward gradient of microbatch i-1 (an off-by-one in the per-microbatch state:
  the shapes match, the values do not).
* ``swap_node_calls`` — ``b.dispatch.backward`` runs before ``b.mlp.backward_dw``: two node
  calls swapped. The numbers do not change; only the order check against the documented
  order (``workloads.moe.order``) can see it.
* ``skip_wait`` — ``f.mlp.forward`` reads the dispatch receive buffer without waiting for
  the all-to-all. Caught every time with ``poison_receive_buffers: true`` (the buffer holds
  NaN until the wait); without it only when the all-to-all happened not to be complete.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, MutableMapping

if TYPE_CHECKING:
    import torch

SKIP_WEIGHT_RESTORE = "skip_weight_restore"
SKIP_ZERO_GRAD = "skip_zero_grad"
WRONG_MICROBATCH_GRAD = "wrong_microbatch_grad"
SWAP_NODE_CALLS = "swap_node_calls"
SKIP_WAIT = "skip_wait"

FAULTS: dict[str, str] = {
    SKIP_WEIGHT_RESTORE: "the overlapped run starts from the reference run's updated weights",
    SKIP_ZERO_GRAD: "the overlapped run's gradients accumulate onto the reference run's",
    WRONG_MICROBATCH_GRAD: "b.pre_dispatch.backward uses the previous microbatch's dispatch gradient",
    SWAP_NODE_CALLS: "b.dispatch.backward and b.mlp.backward_dw run swapped",
    SKIP_WAIT: "f.mlp.forward reads the dispatch receive buffer without waiting",
}


def wrong_microbatch_grad(last: MutableMapping[Any, torch.Tensor], key: Any, grad: torch.Tensor) -> torch.Tensor:
    """Return the gradient stored for ``key`` by the previous microbatch (if any) and store
    this microbatch's in its place."""
    previous = last.get(key)
    last[key] = grad
    if previous is not None and previous.shape == grad.shape:
        return previous
    return grad
