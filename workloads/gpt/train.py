"""The GPT training loop: process groups, model chunks, pipeline schedule, distributed
optimizer, LR schedule, data, metrics, torch_dist checkpoints and resume.

Process groups are built in ``groups.py`` (Megatron's rank order), the CPU memory metrics
measured in ``memory.py``.

Per iteration (Megatron's ``train_step``): zero the grad buffers, take this dp rank's
microbatches of the next global batch, run the pipeline schedule (the optimizer's buckets
launch during the backward of each chunk's last microbatch), finish the grad sync (dp
reduce-scatter or all-reduce, plus the tied-embedding all-reduce), step the optimizer with
the scheduler's lr, advance the scheduler by the global batch size.

Metrics (logged by rank 0 for the whole job, Megatron's names):
- ``lm loss``: mean over the global batch's microbatches of the masked token cross entropy
  (computed on the last pipeline stage, averaged over dp);
- ``num-zeros``: zeros in the reduced, clipped main gradients (from the optimizer);
- ``mem-allocated-bytes`` / ``mem-max-allocated-bytes``: on GPU ``torch.cuda.memory_allocated``
  / ``max_memory_allocated``. On CPU, where PyTorch keeps no allocator statistics, a measured
  substitute: allocated = the bytes of the distinct tensor storages the training state holds
  after the iteration (model parameters, fp32 grad buffers, main-param and Adam shards: found
  by walking the model chunks and the optimizer object); max = the running maximum of that
  plus the iteration's microbatch tensors plus the peak of the activation bytes autograd held
  for backward during the schedule (saved-tensor hooks, parameters excluded, one count per
  storage). Both are deterministic for a config, so the golden 5% rule is meaningful; the
  maximum over ranks is logged;
- ``iteration-time``: wall seconds of the iteration, the maximum over ranks;
- ``iteration-cpu-time``: CPU seconds the iteration took on each rank's main thread
  (``time.thread_time()``; mean over ranks; CPU runs only): the compute the step did, which a busy neighbour
  does not change (it steals wall time, not this thread's CPU seconds). The ``timing`` check
  compares it with the golden's (workloads/common/timing.py, docs/golden.md).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.distributed as dist

from workloads.common import timing
from workloads.gpt.checkpoint import (
    MARKER_FILE,
    SaveRequest,
    finalize_pending_saves,
    import_dcp,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from workloads.gpt.config import BUILTIN_DATA, GPTConfig
from workloads.gpt.data import GPTSamples, IndexedDataset, MicroBatchIterator, build_synthetic_corpus
from workloads.gpt.dist_optimizer import DistributedOptimizer, OptimizerConfig
from workloads.gpt.faults import Fault
from workloads.gpt.groups import build_groups
from workloads.gpt.lr_schedule import OptimizerParamScheduler, ScheduleParams
from workloads.gpt.memory import MemoryMeter
from workloads.gpt.model import GPTChunk, TransformerLayer, build_chunks
from workloads.gpt.pipeline import PipelineLayout, PipelineSchedule

if TYPE_CHECKING:
    from runner.worker.context import WorkerContext


@dataclass(frozen=True)
class RunOptions:
    """What the test flow asks of one launch (not model/optimiser arguments)."""

    save_dir: Path | None = None             # write checkpoints here every save_interval
    load_dir: Path | None = None             # resume from the latest checkpoint here
    load_optional: bool = False              # Megatron's --load: no checkpoint there -> train from scratch
    data: str = BUILTIN_DATA                 # "builtin" or a Megatron indexed-dataset path prefix
    data_cache: Path | None = None           # where the built-in corpus is written
    tensorboard_dir: Path | None = None      # Megatron's --tensorboard-dir (rank 0 writes scalars there)
    fault: Fault = Fault()


def optimizer_config(cfg: GPTConfig) -> OptimizerConfig:
    """The distributed optimizer's arguments of a run (its default bucket size unless set)."""
    ocfg = OptimizerConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, adam_beta1=cfg.adam_beta1,
                           adam_beta2=cfg.adam_beta2, adam_eps=cfg.adam_eps, clip_grad=cfg.clip_grad,
                           bf16=cfg.bf16, overlap_grad_reduce=cfg.overlap_grad_reduce,
                           overlap_param_gather=cfg.overlap_param_gather,
                           use_distributed_optimizer=cfg.use_distributed_optimizer)
    return ocfg if cfg.ddp_bucket_size is None else replace(ocfg, bucket_size=cfg.ddp_bucket_size)


def model_state(chunks: Sequence[GPTChunk]) -> dict[str, torch.Tensor]:
    """Model parameters keyed by virtual stage (identical on dp replicas: one copy is written)."""
    out = {}
    for chunk in chunks:
        for name, p in chunk.named_parameters():
            out[f"vstage{chunk.virtual_stage}.{name}"] = p.data
    return out


class Trainer:
    """One rank's training run; ``run()`` does the whole thing."""

    def __init__(self, ctx: WorkerContext, cfg: GPTConfig, opts: RunOptions) -> None:
        self.ctx, self.cfg, self.opts = ctx, cfg, opts
        self.device = ctx.device
        self.g = g = build_groups(cfg)
        self.dtype = torch.bfloat16 if cfg.bf16 else torch.float32
        self.chunks = build_chunks(cfg, g.pp_rank, device=self.device)
        for c in self.chunks:
            c.train()
        shared = None
        if g.embedding_group is not None:
            owner = self.chunks[0] if g.pp_rank == 0 else self.chunks[-1]
            weight = owner.shared_embedding_weight()
            if weight is None:
                raise RuntimeError(f"pipeline rank {g.pp_rank} is in an embedding group but holds no tied embedding")
            shared = (weight, g.embedding_group)
        self.optimizer = DistributedOptimizer(self.chunks, optimizer_config(cfg), dp_group=g.dp_group,
                                              mp_group=g.pp_group, shared_embedding=shared)
        opts.fault.apply_to_optimizer(self.optimizer)
        self.scheduler = OptimizerParamScheduler(ScheduleParams.from_config(cfg))
        self.data = MicroBatchIterator(self._samples(), micro_batch_size=cfg.micro_batch_size,
                                       global_batch_size=cfg.global_batch_size, dp_rank=g.dp_rank, dp_size=g.dp)
        m = self.data.num_microbatches
        layout = PipelineLayout(g.pp_rank, g.stage_ranks, cfg.vp)
        self.schedule = PipelineSchedule(
            self.chunks, layout, num_microbatches=m,
            activation_shape=(cfg.micro_batch_size, cfg.seq_length, cfg.hidden_size), dtype=self.dtype,
            device=self.device, p2p_group=g.p2p_group,
            before_backward=lambda chunk, last: self.optimizer.set_is_last_microbatch(last, chunk=chunk))
        params = [p for c in self.chunks for p in c.parameters()]
        self.memory = MemoryMeter(self.device, (self.chunks, self.optimizer),
                                  [p.untyped_storage().data_ptr() for p in params])
        self.is_last_stage = g.pp_rank == g.pp - 1
        self.iteration = 0
        self.saved: list[int] = []
        self.pending_save: SaveRequest | None = None
        self.timings: dict[str, Any] = {}
        if opts.fault.compute_repeats > 1:
            timing.repeat_compute((m for c in self.chunks for m in c.modules() if isinstance(m, TransformerLayer)),
                                  opts.fault.compute_repeats)

    def _samples(self) -> GPTSamples:
        """The run's samples; every rank reads (first stage needs tokens, last stage labels;
        all keep the position)."""
        cfg, opts = self.cfg, self.opts
        if opts.data == BUILTIN_DATA:
            cache = opts.data_cache or (self.ctx.results_dir / "data")
            prefix = cache / f"synthetic_v{cfg.vocab_size}_n{cfg.num_documents}_s{cfg.seed}"
            if self.ctx.local_rank == 0:   # one writer per node: right on shared and on node-local disks
                cache.mkdir(parents=True, exist_ok=True)
                build_synthetic_corpus(prefix, vocab_size=cfg.vocab_size, num_documents=cfg.num_documents,
                                       seed=cfg.seed)
            dist.barrier()
        else:
            prefix = Path(opts.data)
        return GPTSamples(IndexedDataset(prefix), seq_length=cfg.seq_length, seed=cfg.seed,
                          num_samples=cfg.train_iters * cfg.global_batch_size)

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": model_state(self.chunks),
            "optimizer": self.optimizer.sharded_state_dict(),
            "opt_param_scheduler": self.scheduler.state_dict(),
            "data": self.data.state_dict(),
            f"rng.rank{self.g.world_rank}": rng_state(),
            "iteration": self.iteration,
        }
        return self.opts.fault.checkpoint_state(state)

    def layout_record(self) -> dict[str, Any]:
        """What a checkpoint must match to be loaded here: the parallel layout and the model shape."""
        c = self.cfg
        model = {k: getattr(c, k) for k in ("num_layers", "hidden_size", "num_attention_heads", "ffn_size",
                                             "seq_length", "max_position_embeddings", "vocab_size", "bf16",
                                             "use_distributed_optimizer")}
        return {"tp": c.tensor_model_parallel_size, "pp": self.g.pp, "vp": c.vp, "dp": self.g.dp,
                "world_size": self.g.world_size, "model": model}

    def save(self, save_dir: Path) -> None:
        if self.pending_save is not None:
            self.pending_save.wait()
        self.optimizer.finish_param_sync()
        t0 = time.perf_counter()
        self.pending_save = save_checkpoint(save_dir, self.iteration, self.checkpoint_state(),
                                            async_save=self.cfg.async_save, layout=self.layout_record())
        self.timings.setdefault("checkpoint_save_blocking_s", []).append(time.perf_counter() - t0)
        self.saved.append(self.iteration)
        self.opts.fault.after_save_started(self.pending_save, len(self.saved), self.g.world_rank)

    def load(self, load_dir: Path) -> None:
        state = self.checkpoint_state()
        t0 = time.perf_counter()
        self.iteration = load_checkpoint(load_dir, state, layout=self.layout_record())
        self.timings["checkpoint_load_s"] = time.perf_counter() - t0
        if "optimizer" in state:
            self.optimizer.load_sharded_state_dict(state["optimizer"])
        if self.opts.fault.restore_scheduler:
            self.scheduler.load_state_dict(state["opt_param_scheduler"])
        if "data" in state:
            self.data.load_state_dict(state["data"])
        rng_key = f"rng.rank{self.g.world_rank}"
        if rng_key in state:
            set_rng_state(state[rng_key])
        if int(state["iteration"]) != self.iteration:
            raise RuntimeError(f"checkpoint iteration {state['iteration']} != marker {self.iteration}")
        del state
        print(f"resumed from {load_dir} at iteration {self.iteration}", flush=True)

    # -- one iteration ----------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.schedule.tracker = self.memory.begin()
        t0, cpu0 = time.perf_counter(), time.thread_time()
        self.optimizer.zero_grad()
        batches = self.data.next_global_batch()
        losses = self.schedule.run(batches)
        self.optimizer.finish_grad_sync()
        stats = self.optimizer.step(self.scheduler.get_lr())
        self.scheduler.step(cfg.global_batch_size)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        allocated, peak = self.memory.end(batches)
        del batches
        loss = torch.stack(losses).mean().double() if losses else torch.zeros((), dtype=torch.float64)
        summed = torch.stack([loss.cpu(), torch.tensor(float(self.is_last_stage), dtype=torch.float64),
                              torch.tensor(cpu, dtype=torch.float64)])
        maxed = torch.tensor([allocated, peak, elapsed], dtype=torch.float64)
        if self.device.type == "cuda":
            summed, maxed = summed.to(self.device), maxed.to(self.device)
        dist.all_reduce(summed)
        dist.all_reduce(maxed, op=dist.ReduceOp.MAX)
        summed, maxed = summed.cpu(), maxed.cpu()
        metrics = {
            "lm loss": float(summed[0] / summed[1]),
            "num-zeros": float(stats.num_zeros),
            "mem-allocated-bytes": float(maxed[0]),
            "mem-max-allocated-bytes": float(maxed[1]),
            "iteration-time": float(maxed[2]),
        }
        if self.device.type == "cpu":     # on GPU the host thread's CPU time is not the step's compute
            metrics["iteration-cpu-time"] = float(summed[2]) / self.g.world_size
        return metrics

    def open_tensorboard(self) -> Any:
        """Rank 0's writer for Megatron's --tensorboard-dir (the metrics are read from there);
        without it the results dir's tensorboard/ mirrors the JSON lines (when installed)."""
        if self.ctx.rank == 0 and self.opts.tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(log_dir=str(self.opts.tensorboard_dir))
        if self.ctx.rank == 0:
            try:
                self.ctx.tensorboard()
            except ImportError:
                print("tensorboard not installed: metrics go to JSON lines only", flush=True)
        return None

    def run(self) -> None:
        cfg, load_dir, save_dir = self.cfg, self.opts.load_dir, self.opts.save_dir
        if load_dir is not None or (save_dir is not None and cfg.save_interval):
            import_dcp()   # once, before the first timed step
        if load_dir is not None and (not self.opts.load_optional or (load_dir / MARKER_FILE).is_file()):
            self.load(load_dir)
        elif load_dir is not None:
            print(f"no checkpoint in {load_dir}: training from scratch", flush=True)
        writer = self.open_tensorboard()
        while self.iteration < cfg.train_iters:
            self.iteration += 1
            metrics = self.train_step()
            if self.ctx.rank == 0:
                self.ctx.log_metrics(self.iteration, metrics)
                if writer is not None:
                    for name, value in metrics.items():
                        writer.add_scalar(name, value, self.iteration)
                print(f"iteration {self.iteration}/{cfg.train_iters} " +
                      " ".join(f"{k}={v:.6g}" for k, v in metrics.items()), flush=True)
            if save_dir is not None and cfg.save_interval and self.iteration % cfg.save_interval == 0:
                self.save(save_dir)
        self.optimizer.finish_param_sync()
        if self.pending_save is not None:
            self.pending_save.wait()
            finalize_pending_saves()
        if writer is not None:
            writer.close()
        dist.barrier()


def train(ctx: WorkerContext, cfg: GPTConfig, opts: RunOptions) -> None:
    """Run one training launch in this rank."""
    from workloads.common.determinism import deterministic, seed_everything

    ctx.init_distributed()
    cfg.check(dist.get_world_size())
    if cfg.deterministic_mode:
        with deterministic(cfg.seed):
            _train(ctx, cfg, opts, seed_everything)
    else:
        _train(ctx, cfg, opts, seed_everything)


def _train(ctx: WorkerContext, cfg: GPTConfig, opts: RunOptions, seed_everything: Callable[[int], None]) -> None:
    trainer = Trainer(ctx, cfg, opts)
    # Megatron's _set_random_seed: one stream per pipeline stage, shared by its dp replicas
    seed_everything(cfg.seed + 100 * trainer.g.pp_rank)
    trainer.run()
    ctx.record("gpt", {"iterations": trainer.iteration, "saved": trainer.saved,
                       "world_size": trainer.g.world_size, "pp": trainer.g.pp, "dp": trainer.g.dp,
                       "vp": cfg.vp, "num_microbatches": trainer.data.num_microbatches,
                       "pid": os.getpid(), **trainer.timings})
