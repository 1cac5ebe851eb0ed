"""Bugs planted into megatron-core at run time, for the negative controls (``params.plant``).

Each plant wraps one megatron-core function for the duration of a ``with`` block, so the
case runs megatron-core's real code with exactly one defect. ``None`` plants nothing.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

PLANTS: dict[str, str] = {}


@contextlib.contextmanager
def planted(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    raise ValueError(f"params.plant: unknown plant {name!r} (known: {', '.join(sorted(PLANTS))})")
