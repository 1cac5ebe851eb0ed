"""The GPT workload's process groups, in Megatron's rank order with tp = 1:
``rank = pp_rank * dp + dp_rank``; data-parallel groups are the ranks of one pipeline stage,
pipeline groups the ranks of one dp replica, and the embedding group of a replica is its
first and last pipeline rank."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from workloads.gpt.config import GPTConfig


@dataclass(frozen=True)
class Groups:
    world_rank: int
    world_size: int
    pp: int
    dp: int
    pp_rank: int
    dp_rank: int
    dp_group: Any
    pp_group: Any
    embedding_group: Any | None          # this rank's first/last-stage group, None if not in one
    p2p_group: Any | None                # gloo group for pipeline messages (None: the default gloo group)
    stage_ranks: tuple[int, ...]


def build_groups(cfg: GPTConfig) -> Groups:
    """Create every process group (all ranks call new_group for every group, in one order)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    pp, dp = cfg.pp, cfg.dp(world)
    pp_rank, dp_rank = divmod(rank, dp)
    dp_group = pp_group = emb_group = None
    for p in range(pp):
        g = dist.new_group([p * dp + d for d in range(dp)])
        if p == pp_rank:
            dp_group = g
    for d in range(dp):
        g = dist.new_group([p * dp + d for p in range(pp)])
        if d == dp_rank:
            pp_group = g
    if pp > 1:
        for d in range(dp):
            ranks = [d, (pp - 1) * dp + d]
            g = dist.new_group(ranks)
            if rank in ranks:
                emb_group = g
    p2p = None
    if dist.get_backend() != "gloo":
        p2p = dist.new_group(list(range(world)), backend="gloo")
    stage_ranks = tuple(p * dp + dp_rank for p in range(pp))
    return Groups(rank, world, pp, dp, pp_rank, dp_rank, dp_group, pp_group, emb_group, p2p, stage_ranks)
