"""Warm worker pools, launcher side: moved to ``runner.run.pooling`` (backend-agnostic; the
local, Slurm and Kubernetes backends all wrap themselves with it). Kept as a re-export."""
from __future__ import annotations

from runner.run.pooling import (
    ERROR_GRACE_S,
    MAX_IDLE_POOLS,
    PER_LAUNCH_ENV,
    POOL_LIFETIME_S,
    STOP_WAIT_S,
    Pool,
    PoolingBackend,
    PoolSettings,
    pooled,
    shape_key,
)

__all__ = ["ERROR_GRACE_S", "MAX_IDLE_POOLS", "PER_LAUNCH_ENV", "POOL_LIFETIME_S", "STOP_WAIT_S", "Pool",
           "PoolSettings", "PoolingBackend", "pooled", "shape_key"]
