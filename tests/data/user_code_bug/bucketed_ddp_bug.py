"""specs/examples/user_code/bucketed_ddp.py with a planted bug: the last bucket's gradients
are summed over the ranks but not averaged (tests/data/equivalence_user_bug.yaml must FAIL)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[3] / "specs" / "examples" / "user_code" / "bucketed_ddp.py"
_spec = importlib.util.spec_from_file_location("_bucketed_ddp_original", _SOURCE)
assert _spec is not None and _spec.loader is not None
original = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(original)


class BuggyBuckets(original.Buckets):
    def unpack(self, flat, b, world):
        super().unpack(flat, b, 1 if b == len(self.groups) - 1 else world)   # the bug


def candidate(ctx, state):
    saved, original.Buckets = original.Buckets, BuggyBuckets
    try:
        return original.candidate(ctx, state)
    finally:
        original.Buckets = saved
