"""megatron-core ``dist_checkpointing`` (torch_dist) round trip of model and optimizer state.

Reference: train ``iterations`` + ``resume_iterations`` iterations in one go. Candidate: train
``iterations``, save model and DistributedOptimizer state with ``dist_checkpointing.save``
(torch_dist, optimizer sharding ``params.sharding``), build a *different* model and optimizer
(another seed, as many steps on other data), load the checkpoint into them with ``dist_checkpointing.load`` and train the
remaining iterations. Captures: the parameters right after the save point (reference) / right
after the load (candidate), the losses after it, and the final parameters — all bitwise.
"""
from __future__ import annotations

import shutil
from typing import Any, Mapping

from workloads.megatron import plants
from workloads.megatron.pipeline import Training, build, finish_param_sync, parameters, run_iterations
from workloads.megatron.session import init_parallel, megatron


def setup(ctx: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    with megatron(ctx):
        init_parallel(ctx, pp=int(params.get("pp", 1)))
    return {"params": dict(params)}


def _sharded(t: Training, params: Mapping[str, Any], is_loading: bool) -> dict[str, Any]:
    model_sd = t.model[0].module.sharded_state_dict()
    metadata = {"distrib_optim_sharding_type": params.get("sharding", "dp_reshardable")}
    return {"model": model_sd,
            "optimizer": t.optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata)}


def _unshare_adam_step(t: Training) -> None:
    """Work around megatron-core 0.16.1 without Apex/TE: DistributedOptimizer.load_state_dict
    gives every parameter's Adam state the *same* ``step`` tensor, which torch's Adam then
    increments once per parameter per step (step 2 becomes 9 after one step with 7 params).
    ``params.unshare_step: false`` leaves the bug in place (the case then fails)."""
    for opt in getattr(t.optimizer, "chained_optimizers", [t.optimizer]):
        for st in opt.optimizer.state.values():
            if "step" in st:
                st["step"] = st["step"].clone()


def reference(ctx: Any, state: dict[str, Any]) -> dict[str, Any]:
    params = state["params"]
    with megatron(ctx):
        t = build(params, overlap=False, seed=int(params.get("seed", 1234)))
        n = int(params.get("iterations", 2))
        run_iterations(t, params, 0, n)
        at_save = parameters(t)
        losses = run_iterations(t, params, n, int(params.get("resume_iterations", 2)))
        return {"restored": at_save, "losses_after": losses, "final": parameters(t)}


def candidate(ctx: Any, state: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    params = state["params"]
    seed = int(params.get("seed", 1234))
    ckpt = ctx.results_dir / "megatron_ckpt"
    with megatron(ctx):
        t = build(params, overlap=False, seed=seed)
        n = int(params.get("iterations", 2))
        run_iterations(t, params, 0, n)
        finish_param_sync(t)
        if ctx.rank == 0 and ckpt.exists():
            shutil.rmtree(ckpt)
        dist.barrier()
        if ctx.rank == 0:
            ckpt.mkdir(parents=True)
        dist.barrier()
        dist_checkpointing.save(_sharded(t, params, is_loading=False), str(ckpt))
        # Another model and optimizer, trained as many steps on other data: the load must
        # overwrite weights and Adam moments. (As many steps, because on the path without
        # Apex/TE megatron-core 0.16.1 can neither load into an optimizer that never stepped
        # -- DistributedOptimizer.state_dict asserts one common 'step' -- nor does the
        # dp_reshardable load replace the loading optimizer's own per-parameter 'step'.)
        fresh = build(params, overlap=False, seed=seed + 1)
        run_iterations(fresh, params, 1000, n)
        with plants.planted(params.get("plant")), torch.no_grad():   # loading state is not differentiable
            loaded = dist_checkpointing.load(_sharded(fresh, params, is_loading=True), str(ckpt))
            fresh.model[0].module.load_state_dict(loaded["model"])
            fresh.optimizer.load_state_dict(loaded["optimizer"])
            if params.get("unshare_step", True):
                _unshare_adam_step(fresh)
        restored = parameters(fresh)
        losses = run_iterations(fresh, params, n, int(params.get("resume_iterations", 2)))
        return {"restored": restored, "losses_after": losses, "final": parameters(fresh)}
