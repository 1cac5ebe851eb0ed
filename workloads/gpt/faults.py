"""Planted bugs for negative controls of the ckpt-resume test (``args.inject_fault``).

Each fault removes one piece of "everything that determines the future" from the checkpoint
round trip, the way a real regression would. A resume test that is worth anything must turn
FAILED for every one of them, naming the metric and the first step that differs; the tests in
tests/workloads/test_gpt_kind.py check exactly that. Not for production specs: the default is no fault.

- ``rng_not_saved``: the per-rank RNG states are left out of the checkpoint, so the resumed
  run draws different dropout masks;
- ``data_position_not_saved``: the data iterator's ``consumed_samples`` is left out, so the
  resumed run re-reads the first global batches;
- ``optimizer_state_not_saved``: the optimizer's fp32 main-parameter and Adam-moment shards are
  left out, so the resumed run restarts Adam from its initial state;
- ``lr_scheduler_not_restored``: the scheduler state is saved but not applied on load, so the
  resumed run restarts the warmup;
- ``slow_step_2x`` / ``slow_step_4x`` (any test type): every transformer layer runs its forward
  and backward two / four times (the extra results times zero), so the step does about that
  many times the layer compute with unchanged numerics; ``slow_step_4x`` is the negative
  control of the load-proof ``timing`` check (bound 2x), ``slow_step_2x`` a measurement.

Faults of the overlap and async-save machinery (negative controls of the debug modes):

- ``skip_param_gather_wait``: the forward pre-hooks that wait for a bucket's param all-gather
  are removed, so (with ``overlap_param_gather``) a forward may read parameters before the
  gather has landed; under the strict param gather of ``dist_optimizer`` it reads the previous
  step's values every time;
- ``crash_during_async_save``: every rank dies (exit code 43) right after the second async
  save has started and before it is finalised; the latest-iteration marker must still name
  the previous checkpoint, and a run that loads from it must continue exactly;
- ``early_marker_crash_during_async_save``: the same crash, but rank 0 first moves the marker
  to the save still in flight (the bug the marker protocol exists to prevent), so loading from
  the marker must fail.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

#: faults of what a checkpoint carries: they only show in a ckpt-resume test
RESUME_FAULTS = ("rng_not_saved", "data_position_not_saved", "optimizer_state_not_saved", "lr_scheduler_not_restored")
#: faults that are not about checkpoints (any test type)
STEP_FAULTS = ("slow_step_2x", "slow_step_4x", "skip_param_gather_wait", "crash_during_async_save",
               "early_marker_crash_during_async_save")
FAULTS = RESUME_FAULTS + STEP_FAULTS

#: exit code of the ranks killed by the async-save crash faults
CRASH_EXIT_CODE = 43
#: the save (counted from 1 within a launch) during which the crash faults strike
CRASH_AT_SAVE = 2

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
    def compute_repeats(self) -> int:
        """How many times each transformer layer computes (1: normally)."""
        return {"slow_step_2x": 2, "slow_step_4x": 4}.get(self.name or "", 1)

    @property
    def restore_scheduler(self) -> bool:
        return self.name != "lr_scheduler_not_restored"

    def apply_to_optimizer(self, optimizer: Any) -> None:
        """Plant the optimizer fault, if any, into a freshly built ``DistributedOptimizer``."""
        if self.name == "skip_param_gather_wait":
            optimizer.drop_gather_wait_hooks()

    def after_save_started(self, request: Any, save_number: int, rank: int) -> None:
        """Called once a save has been started (``request``: the checkpoint module's
        SaveRequest; ``save_number`` counts this launch's saves from 1). The crash faults end
        the process here, before an async save is finalised."""
        if self.name not in ("crash_during_async_save", "early_marker_crash_during_async_save"):
            return
        if save_number != CRASH_AT_SAVE or request.done:
            return
        if self.name == "early_marker_crash_during_async_save" and rank == 0:
            from workloads.gpt.checkpoint import set_latest_iteration

            set_latest_iteration(request.ckpt_dir, request.iteration)
        print(f"planted fault {self.name}: rank {rank} exits during the async save of iteration "
              f"{request.iteration}", flush=True)
        os._exit(CRASH_EXIT_CODE)
