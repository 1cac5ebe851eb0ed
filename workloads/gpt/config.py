"""The GPT workload's arguments, with Megatron-LM's names and defaults.

``GPTConfig`` is the frozen, validated set of model/training arguments one run uses. It is
built from a case's ``args`` (spec YAML keys use Megatron's names with underscores, e.g.
``num_layers_per_virtual_pipeline_stage``); keys that belong to the test flow rather than to
training (``test_type``, ``inject_fault``, ``load``...) are in ``RUN_KEYS`` and are read by the
worker, not here. Importing this module does not import torch (the case kind uses it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

#: keys of a launch's args that steer the test flow, not the model or optimiser
RUN_KEYS = ("test_type", "inject_fault", "load_from", "resume", "data")

BUILTIN_DATA = "builtin"
#: where a launch writes its checkpoints, inside its results dir
CHECKPOINT_DIRNAME = "checkpoints"


class ConfigError(ValueError):
    """An argument combination that cannot run; ``key`` is the offending argument name."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class GPTConfig:
    # -- model (Megatron GPT defaults: learned absolute positions, pre-LN, GeLU, tied embeddings)
    num_layers: int = 8
    hidden_size: int = 64
    num_attention_heads: int = 4
    ffn_hidden_size: int | None = None          # None: 4 * hidden_size (Megatron's default)
    seq_length: int = 64
    max_position_embeddings: int = 64
    vocab_size: int = 512
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    init_method_std: float = 0.02
    layernorm_epsilon: float = 1e-5
    # -- batch and schedule
    micro_batch_size: int = 2
    global_batch_size: int = 16
    train_iters: int = 20
    # -- optimiser (Adam with decoupled weight decay, as Megatron's default 'adam')
    lr: float = 1.5e-4
    min_lr: float = 1.0e-5
    lr_decay_style: str = "cosine"
    lr_decay_iters: int | None = None            # None: train_iters (Megatron's default)
    lr_warmup_fraction: float | None = 0.01
    lr_warmup_iters: int = 0
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    bf16: bool = False
    # -- parallelism
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    num_layers_per_virtual_pipeline_stage: int | None = None
    use_distributed_optimizer: bool = True
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    ddp_bucket_size: int | None = None           # elements per grad bucket; None: the optimiser's default
    # -- checkpointing
    save_interval: int | None = None
    ckpt_format: str = "torch_dist"
    async_save: bool = False
    # -- reproducibility and data
    deterministic_mode: bool = True
    seed: int = 1234
    num_documents: int = 2000                    # size of the built-in corpus

    # -- derived -----------------------------------------------------------------------
    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def pp(self) -> int:
        return self.pipeline_model_parallel_size

    @property
    def vp(self) -> int:
        """Model chunks per pipeline rank (Megatron's virtual_pipeline_model_parallel_size)."""
        lpvs = self.num_layers_per_virtual_pipeline_stage
        if lpvs is None or self.pp == 1:
            return 1
        return self.num_layers // (self.pp * lpvs)

    @property
    def layers_per_virtual_stage(self) -> int:
        return self.num_layers // (self.pp * self.vp)

    def dp(self, world_size: int) -> int:
        return world_size // (self.tensor_model_parallel_size * self.pp)

    def num_microbatches(self, world_size: int) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.dp(world_size))

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters if self.lr_decay_iters is not None else self.train_iters

    # -- construction and checks --------------------------------------------------------
    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in args if k not in known and k not in RUN_KEYS)
        if unknown:
            raise ConfigError(unknown[0], f"unknown GPT argument; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in args.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, world_size: int) -> None:
        """Raise ConfigError(key, why) for a layout or schedule that cannot run."""
        if self.tensor_model_parallel_size != 1:
            raise ConfigError("tensor_model_parallel_size",
                              f"tensor parallelism is not implemented by this workload (got "
                              f"{self.tensor_model_parallel_size}); use 1")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("num_attention_heads", f"hidden_size {self.hidden_size} is not divisible by "
                                                     f"num_attention_heads {self.num_attention_heads}")
        if self.seq_length > self.max_position_embeddings:
            raise ConfigError("seq_length", f"{self.seq_length} exceeds max_position_embeddings "
                                            f"{self.max_position_embeddings}")
        mp = self.tensor_model_parallel_size * self.pp
        if world_size % mp:
            raise ConfigError("pipeline_model_parallel_size",
                              f"world size {world_size} is not divisible by tp*pp = {mp} (world size must be "
                              f"tp * pp * dp)")
        lpvs = self.num_layers_per_virtual_pipeline_stage
        if self.num_layers % self.pp:
            raise ConfigError("num_layers", f"{self.num_layers} layers are not divisible by "
                                            f"pipeline_model_parallel_size {self.pp}")
        if lpvs is not None and self.pp > 1:
            if lpvs < 1 or self.num_layers % (self.pp * lpvs):
                raise ConfigError("num_layers_per_virtual_pipeline_stage",
                                  f"num_layers {self.num_layers} is not divisible by pp * "
                                  f"layers_per_virtual_stage = {self.pp} * {lpvs}")
        dp = self.dp(world_size)
        if self.global_batch_size % (self.micro_batch_size * dp):
            raise ConfigError("global_batch_size",
                              f"{self.global_batch_size} is not divisible by micro_batch_size * dp = "
                              f"{self.micro_batch_size} * {dp}")
        m = self.num_microbatches(world_size)
        if self.vp > 1 and m % self.pp:
            raise ConfigError("global_batch_size",
                              f"the interleaved schedule needs the number of microbatches ({m} = gbs / (mbs * "
                              f"dp)) to be a multiple of pipeline_model_parallel_size {self.pp}")
        if self.lr_decay_style not in ("cosine", "linear", "constant"):
            raise ConfigError("lr_decay_style", f"'{self.lr_decay_style}' is not one of cosine, linear, constant")
        if self.ckpt_format != "torch_dist":
            raise ConfigError("ckpt_format", f"only 'torch_dist' is supported, got '{self.ckpt_format}'")
        if self.save_interval is not None and self.save_interval < 1:
            raise ConfigError("save_interval", "must be >= 1")
        if self.overlap_param_gather and not self.use_distributed_optimizer:
            raise ConfigError("overlap_param_gather", "needs use_distributed_optimizer (as in Megatron)")
