"""Megatron-LM's command line for the built-in GPT workload (``pretrain_gpt.py`` arguments).

``parse(argv)`` maps the arguments Megatron's GPT functional cases use onto ``GPTConfig``
(Megatron's defaults where they differ from the workload's own, e.g. no distributed optimizer
and linear decay unless asked) and onto the run's paths (``--save``, ``--load``,
``--tensorboard-dir``, ``--data-path`` / ``--mock-data``, ``--data-cache-path``).

Three groups of arguments:

* ``MAPPED``: change what the workload does (model, batch, optimiser, parallel layout,
  checkpoints, data);
* ``WITHOUT_EFFECT``: accepted because they change nothing this workload could reproduce or
  already does unconditionally; each has the reason, printed by rank 0 at start;
* anything else is unsupported: ``UnsupportedArgs`` lists every one (or, with
  ``unsupported="warn"``, they are ignored and named in a warning).

Imports without torch (collection validates a case's arguments with it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from workloads.gpt.config import BUILTIN_DATA


class MegatronArgError(ValueError):
    """A bad value or combination; ``flag`` is the offending argument (``--num-layers``)."""

    def __init__(self, flag: str, message: str) -> None:
        self.flag = flag
        super().__init__(f"{flag}: {message}")


class UnsupportedArgs(MegatronArgError):
    def __init__(self, flags: Sequence[str]) -> None:
        self.flags = tuple(flags)
        super().__init__(self.flags[0], f"not supported by the built-in GPT workload: {', '.join(self.flags)} "
                                        f"(set [tool.runner.megatron] unsupported_args = \"warn\" to ignore them, "
                                        f"or point [tool.runner.megatron] entry at Megatron-LM's pretrain_gpt.py)")


def _bool(_: str) -> bool:
    return True


def _decay_style(v: str) -> str:
    if v not in ("cosine", "linear", "constant"):
        raise ValueError(f"'{v}' is not one of cosine, linear, constant")
    return v


def _ckpt_format(v: str) -> str:
    if v != "torch_dist":
        raise ValueError(f"only torch_dist is supported, got '{v}'")
    return v


#: flag -> (GPTConfig field, converter); converter ``_bool`` marks a flag without a value
MAPPED: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--num-layers": ("num_layers", int),
    "--hidden-size": ("hidden_size", int),
    "--ffn-hidden-size": ("ffn_hidden_size", int),
    "--num-attention-heads": ("num_attention_heads", int),
    "--seq-length": ("seq_length", int),
    "--max-position-embeddings": ("max_position_embeddings", int),
    "--vocab-size": ("vocab_size", int),
    "--hidden-dropout": ("hidden_dropout", float),
    "--attention-dropout": ("attention_dropout", float),
    "--init-method-std": ("init_method_std", float),
    "--norm-epsilon": ("layernorm_epsilon", float),
    "--micro-batch-size": ("micro_batch_size", int),
    "--global-batch-size": ("global_batch_size", int),
    "--train-iters": ("train_iters", int),
    "--lr": ("lr", float),
    "--min-lr": ("min_lr", float),
    "--lr-decay-style": ("lr_decay_style", _decay_style),
    "--lr-decay-iters": ("lr_decay_iters", int),
    "--lr-warmup-fraction": ("lr_warmup_fraction", float),
    "--lr-warmup-iters": ("lr_warmup_iters", int),
    "--weight-decay": ("weight_decay", float),
    "--clip-grad": ("clip_grad", float),
    "--adam-beta1": ("adam_beta1", float),
    "--adam-beta2": ("adam_beta2", float),
    "--adam-eps": ("adam_eps", float),
    "--bf16": ("bf16", _bool),
    "--tensor-model-parallel-size": ("tensor_model_parallel_size", int),
    "--pipeline-model-parallel-size": ("pipeline_model_parallel_size", int),
    "--num-layers-per-virtual-pipeline-stage": ("num_layers_per_virtual_pipeline_stage", int),
    "--use-distributed-optimizer": ("use_distributed_optimizer", _bool),
    "--overlap-grad-reduce": ("overlap_grad_reduce", _bool),
    "--overlap-param-gather": ("overlap_param_gather", _bool),
    "--ddp-bucket-size": ("ddp_bucket_size", int),
    "--save-interval": ("save_interval", int),
    "--ckpt-format": ("ckpt_format", _ckpt_format),
    "--async-save": ("async_save", _bool),
    "--deterministic-mode": ("deterministic_mode", _bool),
    "--seed": ("seed", int),
}

#: flag -> the run option it sets (paths and data), with its converter
PATHS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--save": ("save", str),
    "--load": ("load", str),
    "--tensorboard-dir": ("tensorboard_dir", str),
    "--data-path": ("data_path", str),
    "--mock-data": ("mock_data", _bool),
    "--data-cache-path": ("data_cache", str),
    "--vocab-file": ("vocab_file", str),
    "--make-vocab-size-divisible-by": ("vocab_divisible_by", int),
}

#: flag -> (takes a value, why it changes nothing here)
WITHOUT_EFFECT: dict[str, tuple[bool, str]] = {
    "--log-params-norm": (False, "params-norm is not logged by this workload"),
    "--log-num-zeros-in-grad": (False, "num-zeros is always logged"),
    "--log-validation-ppl-to-tensorboard": (False, "no validation runs (training only)"),
    "--log-timers-to-tensorboard": (False, "timers are not logged; iteration-time is"),
    "--log-memory-to-tensorboard": (False, "mem-allocated-bytes / mem-max-allocated-bytes are always logged"),
    "--timing-log-level": (True, "iteration-time is always measured"),
    "--log-interval": (True, "metrics are logged every iteration"),
    "--eval-interval": (True, "training only: no evaluation runs"),
    "--eval-iters": (True, "training only: no evaluation runs"),
    "--split": (True, "training reads the whole dataset prefix"),
    "--distributed-backend": (True, "the runner picks NCCL on GPU, gloo on CPU"),
    "--transformer-impl": (True, "one implementation (PyTorch operators)"),
    "--attention-backend": (True, "one attention implementation (unfused, softmax in fp32)"),
    "--attention-softmax-in-fp32": (False, "softmax is always computed in fp32"),
    "--no-gradient-accumulation-fusion": (False, "no fused kernels"),
    "--use-mcore-models": (False, "one model implementation"),
    "--use-checkpoint-opt_param-scheduler": (False, "the lr scheduler state is always restored from the checkpoint"),
    "--no-ckpt-fully-parallel-save": (False, "every rank writes its own shards (torch.distributed.checkpoint)"),
    "--ckpt-fully-parallel-load": (False, "every rank reads its own shards (torch.distributed.checkpoint)"),
    "--dist-ckpt-strictness": (True, "checkpoint keys are always checked strictly"),
    "--dist-ckpt-optim-fully-reshardable": (False, "the optimizer state is saved per dp shard"),
    "--ckpt-assume-constant-structure": (False, "no save-plan caching"),
    "--use-persistent-ckpt-worker": (False, "async saves run in a background thread"),
    "--check-weight-hash-across-dp-replicas-interval": (True, "weight hashes are not compared across replicas"),
    "--disable-gloo-process-groups": (False, "checkpoint collectives need a gloo group on any device"),
    "--merge-file": (True, "the data is pre-tokenised: merges are not needed"),
    "--tokenizer-type": (True, "the data is pre-tokenised; the vocabulary size comes from --vocab-file or "
                               "--vocab-size"),
}

#: Megatron's defaults where they differ from GPTConfig's (an absent flag means these)
MEGATRON_DEFAULTS: dict[str, Any] = {"use_distributed_optimizer": False, "deterministic_mode": False,
                                     "lr_decay_style": "linear", "min_lr": 0.0, "lr_warmup_fraction": None}
REQUIRED = ("--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length", "--max-position-embeddings",
            "--micro-batch-size", "--global-batch-size", "--train-iters", "--lr")


@dataclass(frozen=True)
class MegatronRun:
    """A parsed command line: GPTConfig keyword arguments plus the run's paths."""

    config: Mapping[str, Any]
    save: str | None = None
    load: str | None = None
    tensorboard_dir: str | None = None
    data: str = BUILTIN_DATA
    data_cache: str | None = None
    without_effect: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)


def split_flags(argv: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["--a", "1", "--b", "--c=x"]`` -> ``[("--a", ["1"]), ("--b", []), ("--c", ["x"])]``."""
    out: list[tuple[str, list[str]]] = []
    for tok in argv:
        tok = str(tok)
        if tok.startswith("--"):
            name, eq, value = tok.partition("=")
            out.append((name, [value] if eq else []))
        elif out:
            out[-1][1].append(tok)
        else:
            raise MegatronArgError(tok, "a value before any --flag")
    return out


def parse(argv: Sequence[str], *, unsupported: str = "error", read_files: bool = True) -> MegatronRun:
    """Map a Megatron command line; ``read_files``: read --vocab-file for the vocabulary size
    (off while validating, when the data paths are not filled in yet)."""
    config: dict[str, Any] = dict(MEGATRON_DEFAULTS)
    paths: dict[str, Any] = {}
    without, unknown, notes = [], [], []
    seen: set[str] = set()
    for flag, values in split_flags(argv):
        if flag in seen:
            raise MegatronArgError(flag, "given twice")
        seen.add(flag)
        if flag in MAPPED or flag in PATHS:
            key, conv = MAPPED.get(flag) or PATHS[flag]
            target = config if flag in MAPPED else paths
            if conv is _bool:
                if values:
                    raise MegatronArgError(flag, f"takes no value (got {' '.join(values)})")
                target[key] = True
                continue
            if len(values) != 1:
                raise MegatronArgError(flag, "expects one value" + (f", got {len(values)}: {' '.join(values)}"
                                                                    if values else ""))
            try:
                target[key] = conv(values[0])
            except ValueError as exc:
                msg = str(exc) if conv not in (int, float) else f"expected {conv.__name__}, got {values[0]!r}"
                raise MegatronArgError(flag, msg) from None
        elif flag in WITHOUT_EFFECT:
            takes_value, why = WITHOUT_EFFECT[flag]
            if takes_value and len(values) != 1:
                raise MegatronArgError(flag, "expects one value")
            if not takes_value and values:
                raise MegatronArgError(flag, f"takes no value (got {' '.join(values)})")
            without.append(flag)
            notes.append(f"{flag}: {why}")
        else:
            unknown.append(flag)
    if unknown and unsupported != "warn":
        raise UnsupportedArgs(unknown)
    missing = [f for f in REQUIRED if MAPPED[f][0] not in config]
    if missing:
        raise MegatronArgError(missing[0], f"required (missing: {', '.join(missing)})")
    if "vocab_size" not in config:
        config["vocab_size"] = _vocab_size(paths, read_files)
    data = BUILTIN_DATA if paths.get("mock_data") else paths.get("data_path")
    if data is None:
        raise MegatronArgError("--data-path", "give --data-path PREFIX (a Megatron indexed dataset) or --mock-data")
    if paths.get("mock_data") and paths.get("data_path"):
        raise MegatronArgError("--mock-data", "give either --mock-data or --data-path, not both")
    return MegatronRun(config=config, save=paths.get("save"), load=paths.get("load"),
                       tensorboard_dir=paths.get("tensorboard_dir"), data=data, data_cache=paths.get("data_cache"),
                       without_effect=tuple(without), ignored=tuple(unknown), notes=tuple(notes))


def _vocab_size(paths: Mapping[str, Any], read_files: bool) -> int:
    """Megatron's padded vocabulary: the tokenizer's size rounded up to a multiple of
    --make-vocab-size-divisible-by (128); GPT-2's BPE (50257) gives 50304."""
    vocab_file = paths.get("vocab_file")
    if vocab_file is None:
        raise MegatronArgError("--vocab-size", "give --vocab-size N (with --mock-data / NullTokenizer) or "
                                               "--vocab-file")
    size = 50257
    if read_files:
        try:
            size = len(json.loads(Path(vocab_file).read_text()))
        except (OSError, ValueError) as exc:
            raise MegatronArgError("--vocab-file", f"cannot read {vocab_file}: {exc}") from None
    multiple = int(paths.get("vocab_divisible_by", 128))
    return -(-size // multiple) * multiple


def model_args_to_argv(model_args: Mapping[str, Any]) -> list[str]:
    """MODEL_ARGS of a model_config.yaml as a command line, as Megatron's harness builds it:
    ``true`` -> the bare flag, ``false`` / null -> left out, anything else -> flag and value."""
    argv: list[str] = []
    for flag, value in model_args.items():
        if value is None or value is False:
            continue
        argv.append(str(flag))
        if value is True:
            continue
        if isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        else:
            argv.append(_scalar(value))
    return argv


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)
