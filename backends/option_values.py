"""Option values the cluster backends (Slurm, Kubernetes) parse alike: numbers within a range,
one-line strings, and the warm-pool options both offer (``pools``, ``pool_time``, ``pool_poll``).

Unknown option names are rejected once, by ``runner.run.backend.check_options`` (each
backend declares its ``OPTION_HELP`` as its schema); the backends' ``options`` modules check
the values, with these helpers where the rules are shared.
"""
from __future__ import annotations

import math
from typing import Mapping

from runner.errors import UsageError
from runner.run.pools import PoolSettings

#: the warm-pool options of a cluster backend (docs/pools.md, "Slurm and Kubernetes")
POOL_OPTION_HELP: dict[str, str] = {
    "pools": "warm pools per case shape at once (default 1): poolable cases of one shape run in "
             "turn in one allocation; 0 runs every launch fresh (as --no-reuse)",
    "pool_time": "longest time limit of one pool allocation in seconds (default 14400); a pool asks "
                 "for the sum of its waiting cases' timeouts, up to this",
    "pool_poll": "longest sleep of a pool's ranks between looks at the spool on the shared results "
                 "filesystem, in seconds (default 1)",
}
DEFAULT_POOLS = 1
DEFAULT_POOL_TIME_S = 4 * 3600.0
DEFAULT_POOL_POLL_S = 1.0


def number(backend: str, key: str, raw: object, *, lo: float, hi: float = math.inf,
           integer: bool = False, open_low: bool = False) -> float:
    """``raw`` as a number in ``lo..hi`` (``open_low``: greater than ``lo``); a one-line usage
    error naming the backend and the option otherwise."""
    text = str(raw).strip()
    try:
        value: float = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise UsageError(f"{backend} backend: option '{key}': {text!r} is not {kind}") from None
    if not math.isfinite(value) or value > hi or value < lo or (open_low and value == lo):
        low = f"> {lo:g}" if open_low else f">= {lo:g}"
        high = "" if hi == math.inf else f" and <= {hi:g}"
        raise UsageError(f"{backend} backend: option '{key}': {text} must be {low}{high}")
    return value


def one_line(backend: str, key: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise UsageError(f"{backend} backend: option '{key}' must be one line")
    return value


def pool_settings(backend: str, opts: Mapping[str, str]) -> PoolSettings | None:
    """The pool settings of a cluster backend from its options; None when ``pools=0``."""
    pools = int(number(backend, "pools", opts.get("pools", DEFAULT_POOLS), lo=0, hi=1024, integer=True))
    if pools == 0:
        return None
    cap = number(backend, "pool_time", opts.get("pool_time", DEFAULT_POOL_TIME_S), lo=0, hi=365 * 86400.0,
                 open_low=True)
    poll = number(backend, "pool_poll", opts.get("pool_poll", DEFAULT_POOL_POLL_S), lo=0, hi=60.0, open_low=True)
    return PoolSettings(per_shape=pools, time_cap=cap, idle_poll_s=poll, shared_fs=True)
