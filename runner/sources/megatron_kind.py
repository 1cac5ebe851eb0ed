"""The ``megatron`` case kind: cases collected by the megatron source (``model_config.yaml``).

Launches: ``main`` (regular, frozen-resume) or ``run1`` + ``run2`` (ckpt-resume, the runner's
generic resume flow with Megatron's checkpoint layout). Every launch runs the training entry
(``runner.sources.megatron_worker``) with MODEL_ARGS as its command line. Metrics are the
TensorBoard scalars the entry writes to ``--tensorboard-dir`` (Megatron's names). Checks:
the run (run 1) vs the golden on the selected METRICS; run 2 vs run 1 after the resume
iteration, exact at 5 decimals (Megatron's rule) unless nondeterministic, and approximate.
Imports without torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from runner.errors import CaseError
from runner.hookspecs import hookimpl
from runner.plan.kind import CaseKind, CompareContext, LaunchPlan
from runner.records import Case, CheckResult, LaunchOutcome
from runner.resume.plan import ResumeSpec, resume_plans

WORKER = "runner.sources.megatron_worker:run"
GOLDEN_METRICS = ("lm loss", "num-zeros", "mem-allocated-bytes", "mem-max-allocated-bytes", "iteration-time")
_DUMMY = {"TENSORBOARD_PATH": "/tb", "CHECKPOINT_SAVE_PATH": "/ckpt", "CHECKPOINT_LOAD_PATH": "/ckpt",
          "DATA_PATH": "/data", "DATA_CACHE_PATH": "/cache"}


def _argv(case: Case) -> list[str]:
    from workloads.gpt.megatron_args import model_args_to_argv

    return model_args_to_argv(case.args["argv_args"])


def train_iters(case: Case) -> int | None:
    v = case.args["argv_args"].get("--train-iters")
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


class MegatronKind(CaseKind):
    id = "megatron"
    description = "a Megatron-LM functional test case (model_config.yaml) run as it is"
    uses_golden = True

    def case_uses_golden(self, case: Case) -> bool:
        return True

    def validate(self, case: Case) -> None:
        from runner.sources.placeholders import KNOWN, names_in

        argv = _argv(case)
        for name in names_in(argv):
            if name not in KNOWN:
                flag = next(k for k, v in case.args["argv_args"].items() if f"${{{name}}}" in str(v))
                raise CaseError(f"MODEL_ARGS.{flag}", f"unknown placeholder ${{{name}}}; the runner fills "
                                                      f"{', '.join(KNOWN)}")
        if train_iters(case) is None and case.args["test_type"] != "frozen-resume":
            raise CaseError("MODEL_ARGS", "needs --train-iters (the steps compared with the golden)")
        if case.args["test_type"] == "ckpt-resume":
            args = case.args["argv_args"]
            for flag in ("--save", "--load", "--save-interval"):
                if flag not in args:
                    raise CaseError("MODEL_ARGS", f"TEST_TYPE ckpt-resume needs {flag}")
        if case.args["entry"] == "builtin" and not case.skip:   # a skipped case never starts the entry
            self._validate_builtin(case, argv)

    def _validate_builtin(self, case: Case, argv: list[str]) -> None:
        from runner.sources.placeholders import fill
        from workloads.gpt.config import ConfigError, GPTConfig
        from workloads.gpt.megatron_args import MAPPED, MegatronArgError, parse

        try:
            parsed = parse(fill(argv, _DUMMY), unsupported=case.args["unsupported_args"], read_files=False)
            GPTConfig(**parsed.config).check(case.resources.world_size)
        except MegatronArgError as exc:
            raise CaseError(f"MODEL_ARGS.{exc.flag}", str(exc).split(": ", 1)[-1]) from None
        except ConfigError as exc:
            flag = next((f for f, (k, _) in MAPPED.items() if k == exc.key), exc.key)
            key = f"MODEL_ARGS.{flag}" if flag in case.args["argv_args"] else "MODEL_ARGS"
            raise CaseError(key, f"{str(exc).split(': ', 1)[-1]} (world size {case.resources.world_size})") from None

    def plan(self, case: Case) -> Sequence[LaunchPlan]:
        args = {"argv": _argv(case), "entry": case.args["entry"], "entry_root": case.args["entry_root"],
                "unsupported_args": case.args["unsupported_args"], "data_path": case.args.get("data_path"),
                "frozen_checkpoint": case.args.get("frozen_checkpoint")}
        if case.args["test_type"] != "ckpt-resume":
            return [LaunchPlan("main", WORKER, args)]
        iters = train_iters(case)
        assert iters is not None
        return resume_plans(WORKER, args, ResumeSpec(train_iters=iters, layout="megatron"))

    def expected_steps(self, case: Case) -> tuple[int, int] | None:
        iters = train_iters(case)
        return (1, iters) if iters and case.args["test_type"] != "frozen-resume" else None

    @staticmethod
    def _metrics(outcomes: Sequence[LaunchOutcome], name: str) -> dict[str, dict[int, float]]:
        from runner.tensorboard import read_scalars

        for o in outcomes:
            if o.launch.name == name:
                return read_scalars(Path(o.launch.results_dir) / "tensorboard")
        return {}

    def compare(self, case: Case, outcomes: Sequence[LaunchOutcome], ctx: CompareContext) -> Sequence[CheckResult]:
        from runner.resume.checks import rewind_checks

        return rewind_checks(outcomes) if case.args["test_type"] == "ckpt-resume" else []

    def comparisons(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Sequence[Any]:
        from runner.compare.stage import GoldenMetrics
        from runner.resume.checks import resume_comparisons

        if case.args["test_type"] != "ckpt-resume":
            return [GoldenMetrics("main", "tensorboard")]
        # Megatron's own rule for run 2 vs run 1: exact at 5 decimals (its TensorBoard reader's rounding)
        return resume_comparisons(case, outcomes, golden=True, source="tensorboard", decimals=5)

    def golden_metrics(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Mapping[str, Mapping[int, float]] | None:
        first = self._metrics(outcomes, "run1" if case.args["test_type"] == "ckpt-resume" else "main")
        return {k: v for k, v in first.items() if k in GOLDEN_METRICS}

    def info(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Mapping[str, Any]:
        return {"test_type": case.args["test_type"], "entry": case.args["entry"]}
