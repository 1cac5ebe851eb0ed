"""Generic checkpoint-resume testing (Megatron's ``ckpt-resume`` test type) for any case kind.

Flow, the same for the ``script``, ``megatron`` and ``gpt`` kinds (one implementation):

1. launch ``run1`` trains every iteration, saving checkpoints into its checkpoint folder;
2. at the start of launch ``run2`` the runner (rank 0 of run 2, before the training entry
   starts; the other ranks wait for it) rewinds run 1's checkpoint folder through a
   *checkpoint layout*: the checkpoints after the resume iteration are removed and the
   latest-iteration marker points at the resume iteration — the newest saved iteration at or
   before ``train_iters // 2``;
3. ``run2`` loads that folder and trains to the end;
4. checks (``runner.resume.checks``): run 1 against the golden values; run 2 against run 1 on
   every compared metric for the steps after the resume iteration — exact (unless the case is
   nondeterministic) and approximate, with the golden rules.

Layouts are a registry (``runner_register_layouts``); the built-in one is Megatron-LM's
(``iter_XXXXXXX/`` folders and ``latest_checkpointed_iteration.txt``).
"""
from __future__ import annotations

from runner.resume.plan import ResumeSpec, resume_plans

__all__ = ["ResumeSpec", "resume_plans"]
