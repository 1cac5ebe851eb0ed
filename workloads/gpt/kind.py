"""The ``gpt`` case kind: functional GPT training runs compared with golden values, and
Megatron's checkpoint-resume test.

Test types (``args.test_type``, Megatron's semantics):

- ``regular``: one launch ``main`` trains ``train_iters`` iterations; its metrics are checked
  against the case's golden file (``runner.compare.golden``: Megatron's rules).
- ``ckpt-resume``: the runner's generic resume flow (``runner.resume``, the same one the
  ``script`` and ``megatron`` kinds use): launch ``run1`` trains all iterations, saving a
  ``torch_dist`` checkpoint every ``save_interval``; before launch ``run2`` (a separate job
  through the backend) starts training, the runner removes the checkpoints after the resume
  iteration (the last save at or before half of ``train_iters``) and points the
  latest-iteration marker at it (Megatron's layout); run2 loads run1's checkpoint folder and
  trains to the end. Checks: run1 vs golden, and run2 vs run1 on every step after the resume
  point for ``lm loss`` and ``num-zeros`` — exact (bit-equal) and approximate.

Args are Megatron's training arguments with underscores (``workloads.gpt.config.GPTConfig``)
plus ``test_type``, ``data`` (``builtin``: a seeded synthetic corpus in Megatron's indexed
format, or the path prefix of a Megatron ``.bin``/``.idx`` dataset) and ``inject_fault`` (the
project's own negative controls only; see ``workloads/gpt/faults.py``).

This module imports without torch.
"""
from __future__ import annotations

import statistics
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from runner.errors import CaseError
from runner.hookspecs import hookimpl
from runner.plan.kind import CaseKind, CompareContext, LaunchPlan
from runner.records import Case, CheckResult, LaunchOutcome
from runner.resume.plan import ResumeSpec, resume_plans
from workloads.gpt.config import BUILTIN_DATA, CHECKPOINT_DIRNAME, ConfigError, GPTConfig
from workloads.gpt.faults import FAULTS, STEP_FAULTS

if TYPE_CHECKING:
    from runner.plugins import KindRegistry

ENTRY = "workloads.gpt.worker:run"
TEST_TYPES = ("regular", "ckpt-resume")
METRICS = ("lm loss", "num-zeros", "mem-allocated-bytes", "mem-max-allocated-bytes", "iteration-time",
           "iteration-cpu-time")
RESUME_METRICS = ("lm loss", "num-zeros")

_DESCRIPTIONS = {
    "num_layers_per_virtual_pipeline_stage": "layers per virtual pipeline stage (interleaved 1F1B); "
                                             "vp = num_layers / (pp * this)",
    "tensor_model_parallel_size": "must be 1: tensor parallelism is not implemented by this workload",
    "save_interval": "save a torch_dist checkpoint every N iterations (required by ckpt-resume)",
    "ddp_bucket_size": "elements per gradient bucket (default: the optimizer's 40000)",
    "num_documents": "documents in the built-in synthetic corpus",
    "lr_decay_iters": "iterations of the lr decay (default: train_iters)",
    "deterministic_mode": "seeds, deterministic algorithms, NCCL_ALGO=Ring, CUBLAS_WORKSPACE_CONFIG",
}
_MINIMUM_ONE = {"num_layers", "hidden_size", "num_attention_heads", "seq_length", "max_position_embeddings",
                "micro_batch_size", "global_batch_size", "train_iters", "tensor_model_parallel_size",
                "pipeline_model_parallel_size", "num_layers_per_virtual_pipeline_stage", "save_interval",
                "ddp_bucket_size", "num_documents", "lr_decay_iters", "ffn_hidden_size"}
_ENUMS = {"lr_decay_style": ["cosine", "linear", "constant"], "ckpt_format": ["torch_dist"]}
_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def _field_schema(name: str, annotation: str) -> dict[str, Any]:
    base, _, rest = annotation.partition(" | ")
    jtype: Any = _JSON_TYPES[base.strip()]
    if rest.strip() == "None":
        jtype = [jtype, "null"]
    out: dict[str, Any] = {"type": jtype}
    if name in _ENUMS:
        out = {"enum": _ENUMS[name]}
    if name in _MINIMUM_ONE:
        out["minimum"] = 1
    if name in ("vocab_size",):
        out["minimum"] = 8
    if name in ("hidden_dropout", "attention_dropout"):
        out.update(minimum=0, maximum=1)
    if name in _DESCRIPTIONS:
        out["description"] = _DESCRIPTIONS[name]
    return out


def _build_schema() -> dict[str, Any]:
    props: dict[str, Any] = {}
    defaults = GPTConfig()
    for f in fields(GPTConfig):
        sch = _field_schema(f.name, str(f.type))
        default = getattr(defaults, f.name)
        if default is not None:
            sch["default"] = default
        props[f.name] = sch
    props["test_type"] = {"enum": list(TEST_TYPES), "default": "regular",
                          "description": "regular: one run vs golden; ckpt-resume: run1 saves, run2 resumes "
                                         "from the half-way checkpoint, both vs golden/each other"}
    props["data"] = {"type": "string", "default": BUILTIN_DATA,
                     "description": "'builtin' (seeded synthetic corpus in Megatron's indexed format) or the "
                                    "path prefix of a Megatron indexed dataset (PREFIX.bin / PREFIX.idx)"}
    props["inject_fault"] = {"enum": list(FAULTS),
                             "description": "FOR THE PROJECT'S OWN TESTS ONLY: plant a checkpoint, overlap or "
                                            "async-save bug so a check must fail (negative control); see "
                                            "workloads/gpt/faults.py"}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "additionalProperties": False, "properties": props}


ARGS_SCHEMA = _build_schema()


def resume_iteration(cfg: GPTConfig) -> int:
    """Where run 2 resumes: the last save at or before half of train_iters (Megatron: 50 of 100)."""
    assert cfg.save_interval
    return (cfg.train_iters // 2) // cfg.save_interval * cfg.save_interval


def _config(case: Case) -> GPTConfig:
    try:
        return GPTConfig.from_args(case.args)
    except ConfigError as exc:
        raise CaseError(f"args.{exc.key}", str(exc).split(": ", 1)[-1]) from None
    except TypeError as exc:
        raise CaseError("args", str(exc)) from None


def _test_type(case: Case) -> str:
    return str(case.args.get("test_type", "regular"))


class GPTKind(CaseKind):
    id = "gpt"
    description = ("GPT training with pipeline (virtual stages), distributed optimizer and torch_dist "
                   "checkpoints: golden values, and Megatron's checkpoint-resume test")
    args_schema = ARGS_SCHEMA
    uses_golden = True

    def validate(self, case: Case) -> None:
        cfg = _config(case)
        world = case.resources.world_size
        try:
            cfg.check(world)
        except ConfigError as exc:
            raise CaseError(f"args.{exc.key}", str(exc).split(": ", 1)[-1]) from None
        if cfg.tensor_model_parallel_size * cfg.pp * cfg.dp(world) != world:
            raise CaseError("resources", f"world size {world} != tp * pp * dp")
        test_type = _test_type(case)
        if test_type not in TEST_TYPES:
            raise CaseError("args.test_type", f"'{test_type}' is not one of {', '.join(TEST_TYPES)}")
        if test_type == "ckpt-resume":
            if not cfg.save_interval:
                raise CaseError("args.save_interval", "test_type ckpt-resume needs save_interval (the run "
                                                      "resumes from a saved checkpoint)")
            if resume_iteration(cfg) < 1:
                raise CaseError("args.save_interval", f"save_interval {cfg.save_interval} leaves no checkpoint in "
                                                      f"the first half of train_iters {cfg.train_iters} to resume from")
            if not cfg.deterministic_mode:
                raise CaseError("args.deterministic_mode", "ckpt-resume compares run 1 and run 2 exactly; it "
                                                           "needs deterministic_mode: true")
        if case.args.get("inject_fault") not in (None, *STEP_FAULTS) and test_type != "ckpt-resume":
            raise CaseError("args.inject_fault", "planted checkpoint faults only make sense with test_type "
                                                 "ckpt-resume")

    def plan(self, case: Case) -> Sequence[LaunchPlan]:
        args = dict(case.args)
        if _test_type(case) == "regular":
            return [LaunchPlan("main", ENTRY, args)]
        cfg = _config(case)
        return resume_plans(ENTRY, args, ResumeSpec(train_iters=cfg.train_iters, layout="megatron",
                                                    checkpoint_subdir=CHECKPOINT_DIRNAME),
                            run2_args={**args, "load_from": "run1"})

    def expected_steps(self, case: Case) -> tuple[int, int] | None:
        return (1, _config(case).train_iters)

    @staticmethod
    def _metrics(outcomes: Sequence[LaunchOutcome], name: str) -> dict[str, dict[int, float]]:
        from runner.results import ResultsDir

        for o in outcomes:
            if o.launch.name == name:
                return ResultsDir(o.launch.results_dir).metrics()
        return {}

    def compare(self, case: Case, outcomes: Sequence[LaunchOutcome], ctx: CompareContext) -> Sequence[CheckResult]:
        cfg = _config(case)
        regular = _test_type(case) == "regular"
        first = self._metrics(outcomes, "main" if regular else "run1")
        checks: list[CheckResult] = []
        steps = sorted(first.get("lm loss", {}))
        if steps != list(range(1, cfg.train_iters + 1)):
            checks.append(CheckResult("metrics:steps", False,
                                      f"{'main' if regular else 'run1'} logged steps {_span(steps)}, expected "
                                      f"1..{cfg.train_iters}"))
        if regular:
            return checks
        resume = resume_iteration(cfg)
        run2_steps = sorted(self._metrics(outcomes, "run2").get("lm loss", {}))
        after = list(range(resume + 1, cfg.train_iters + 1))
        if run2_steps != after:
            checks.append(CheckResult("resume:steps", False,
                                      f"run2 logged steps {_span(run2_steps)}, expected {after[0]}..{after[-1]} "
                                      f"(resumed from iteration {resume})"))
        return checks

    def comparisons(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Sequence[Any]:
        from runner.compare.stage import GoldenMetrics, RunAgreement

        if _test_type(case) == "regular":
            return [GoldenMetrics("main", metrics=METRICS)]
        return [GoldenMetrics("run1", metrics=METRICS),
                RunAgreement("run1", "run2", resume_iteration(_config(case)), RESUME_METRICS)]

    def golden_metrics(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Mapping[str, Mapping[int, float]] | None:
        first = self._metrics(outcomes, "main" if _test_type(case) == "regular" else "run1")
        return {k: v for k, v in first.items() if k in METRICS}

    def info(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Mapping[str, Any]:
        cfg = _config(case)
        first = self._metrics(outcomes, "main" if _test_type(case) == "regular" else "run1")
        times = [v for s, v in first.get("iteration-time", {}).items() if s > 1]
        out: dict[str, Any] = {}
        if times:
            med = statistics.median(times)
            out["iteration_time_median_s"] = round(med, 6)
            out["tokens_per_s"] = round(cfg.global_batch_size * cfg.seq_length / med, 1)
        if _test_type(case) == "ckpt-resume" and cfg.save_interval:
            out["resume_iteration"] = resume_iteration(cfg)
        return out


def _span(steps: Sequence[int]) -> str:
    if not steps:
        return "none"
    return f"{steps[0]}..{steps[-1]} ({len(steps)} steps)"


@hookimpl
def runner_register_kinds(registry: KindRegistry) -> None:
    registry.add(GPTKind)

