"""Planning a ckpt-resume case: two launches, the second wrapped so the runner rewinds the
first one's checkpoints before the training entry starts."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from runner.plan.kind import LaunchPlan

#: in-rank wrapper of run 2 (rewinds run 1's checkpoint folder, then calls the real entry)
WRAPPER = "runner.resume.worker:run"
RESUME_KEY = "resume"
RUN1, RUN2 = "run1", "run2"
CHECKPOINT_SUBDIR = "checkpoints"


@dataclass(frozen=True)
class ResumeSpec:
    """What the runner needs to know to rewind: how long run 1 trains, where it saves (a
    folder inside run 1's results dir) and in which layout."""

    train_iters: int
    layout: str = "megatron"
    checkpoint_subdir: str = CHECKPOINT_SUBDIR

    def to_json(self, entry: str) -> dict[str, Any]:
        return {"entry": entry, "from": RUN1, "subdir": self.checkpoint_subdir, "layout": self.layout,
                "train_iters": int(self.train_iters)}


def resume_plans(entry: str, args: Mapping[str, Any], spec: ResumeSpec, *,
                 run2_args: Mapping[str, Any] | None = None) -> list[LaunchPlan]:
    """``run1`` (entry, args) then ``run2`` (the wrapper; ``run2_args`` or args, plus the
    resume record under ``args["resume"]``)."""
    second = dict(run2_args if run2_args is not None else args)
    second[RESUME_KEY] = spec.to_json(entry)
    return [LaunchPlan(RUN1, entry, dict(args)), LaunchPlan(RUN2, WRAPPER, second)]


def bind_layouts(plans: Sequence[LaunchPlan], layouts: Any) -> list[LaunchPlan]:
    """Resolve each resume record's layout id through the layout registry (a usage error for
    an unknown id) and record the class as ``module:qualname`` for the ranks."""
    out = []
    for p in plans:
        rec = p.args.get(RESUME_KEY) if p.entry == WRAPPER else None
        if isinstance(rec, Mapping) and "layout" in rec:
            cls = layouts.get(str(rec["layout"])).cls
            bound = {**rec, "layout_ref": f"{cls.__module__}:{cls.__qualname__}"}
            p = replace(p, args={**p.args, RESUME_KEY: bound})
        out.append(p)
    return out


def resume_iteration_for(saved: Sequence[int], train_iters: int) -> int | None:
    """Megatron's resume point: half of train_iters; here the newest saved iteration at or
    before it (the same when save_interval divides train_iters // 2)."""
    candidates = [i for i in saved if 0 < i <= train_iters // 2]
    return max(candidates) if candidates else None
