"""The collectives checkpoint I/O runs, on a gloo group of its own (so an async save's
background thread never shares a communicator with training, also under NCCL)."""
from __future__ import annotations

from typing import Any

import torch.distributed as dist

from workloads.gpt.checkpoint.errors import CheckpointError

_GROUP_CACHE: list[Any] = []  # [default group object, its checkpoint gloo group]


def dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_rank0() -> bool:
    return not dist_on() or dist.get_rank() == 0


def ckpt_group() -> Any:
    """A gloo group over all ranks, created once per default process group (collective);
    ``None`` without torch.distributed."""
    if not dist_on():
        return None
    default = dist.group.WORLD
    if not _GROUP_CACHE or _GROUP_CACHE[0] is not default:
        # a new default group (first use, or after destroy/re-init): make a new gloo group
        _GROUP_CACHE[:] = [default, dist.new_group(backend="gloo")]
    return _GROUP_CACHE[1]


def all_gather(obj: Any, group: Any) -> list[Any]:
    """Every rank's ``obj`` (just ``[obj]`` without a group)."""
    if group is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def agree(error: str | None, group: Any) -> None:
    """Raise the same CheckpointError on every rank if any rank found one."""
    errors = [e for e in all_gather(error, group) if e]
    if errors:
        raise CheckpointError(errors[0])
