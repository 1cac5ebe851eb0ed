"""Planted bugs for negative controls of the ckpt-resume test (``args.inject_fault``).

Each fault removes one piece of "everything that determines the future" from the checkpoint
round trip, the way a real regression would. A resume test that is worth anything must turn
FAILED for every one of them, naming the metric and the first step that differs; the tests in
tests/test_gpt_kind.py check exactly that. Not for production specs: the default is no fault.

- ``rng_not_saved``: the per-rank RNG states are left out of the checkpoint, so the resumed
  run draws different dropout masks;
- ``data_position_not_saved``: the data iterator's ``consumed_samples`` is left out, so the
  resumed run re-reads the first global batches;
- ``optimizer_state_not_saved``: the optimizer's fp32 main-parameter and Adam-moment shards are
  left out, so the resumed run restarts Adam from its initial state;
- ``lr_scheduler_not_restored``: the scheduler state is saved but not applied on load, so the
  resumed run restarts the warmup;
- ``slow_step_2x`` (any test type): every transformer layer runs its forward and backward twice
  (the second result times zero), so the step does about twice the compute with unchanged
  numerics: the negative control of the load-proof ``timing`` check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

FAULTS = ("rng_not_saved", "data_position_not_saved", "optimizer_state_not_saved", "lr_scheduler_not_restored",
          "slow_step_2x")
#: faults that are not about checkpoints (any test type)
STEP_FAULTS = ("slow_step_2x",)

#: the checkpoint top-level key each "not saved" fault drops ("rng" matches the per-rank keys)
_DROPPED_KEY = {
    "rng_not_saved": "rng",
    "data_position_not_saved": "data",
    "optimizer_state_not_saved": "optimizer",
}


@dataclass(frozen=True)
class Fault:
    name: str | None = None

    @classmethod
    def parse(cls, value: Any) -> "Fault":
        if value in (None, "", "none"):
            return cls(None)
        if value not in FAULTS:
            raise ValueError(f"unknown fault {value!r}; known: {', '.join(FAULTS)}")
        return cls(str(value))

    def checkpoint_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The state as saved and loaded under this fault (the same keys both ways)."""
        drop = _DROPPED_KEY.get(self.name or "")
        if drop is None:
            return dict(state)
        return {k: v for k, v in state.items() if k != drop and not k.startswith(drop + ".")}

    @property
    def doubles_compute(self) -> bool:
        return self.name == "slow_step_2x"

    @property
    def restore_scheduler(self) -> bool:
        return self.name != "lr_scheduler_not_restored"
