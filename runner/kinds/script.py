"""The generic ``script`` case kind: run any Python script or module under torchrun.

Args::

    script: path/to/train.py     # relative to the spec file; or
    module: my_pkg.train         # run as ``python -m my_pkg.train``
    argv: ["--lr", "1e-4"]       # its command-line arguments
    metrics: jsonl               # jsonl | tensorboard | none: where its per-step metrics are
    golden: true                 # compare the metrics with golden values (default: metrics != none)
    steps: [1, 100]              # first and last step it logs (checked against the golden's range)
    test_type: ckpt-resume       # regular (default) | ckpt-resume: the runner's generic resume test
    layout: megatron             # the checkpoint layout the script writes (a registry; default megatron)

``${CHECKPOINT_SAVE_PATH}``, ``${CHECKPOINT_LOAD_PATH}`` and ``${TENSORBOARD_PATH}`` in ``argv`` are
filled per launch (run 2 of a resume test loads run 1's checkpoints).

In every rank the script runs as ``__main__`` with these environment variables:
``RUNNER_RESULTS_DIR`` (this launch's results dir), ``RUNNER_METRICS_FILE`` (a JSON-lines
file for this rank: one ``{"step": N, "lm loss": ..., ...}`` object per line, Megatron's metric
names) and ``RUNNER_TENSORBOARD_DIR`` (where to write TensorBoard event files when
``metrics: tensorboard``). torchrun's usual RANK/WORLD_SIZE/MASTER_ADDR variables are set; the
script initialises torch.distributed itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from runner.errors import CaseError
from runner.hookspecs import hookimpl
from runner.plan.kind import CaseKind, CompareContext, LaunchPlan
from runner.records import Case, CheckResult, LaunchOutcome
from runner.resume.plan import ResumeSpec, resume_plans
from runner.results import ResultsDir

WORKER = "runner.kinds.script_worker:run"


class ScriptKind(CaseKind):
    id = "script"
    description = "any Python script or module under torchrun; metrics from JSON lines or TensorBoard vs golden values"
    uses_golden = True
    args_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "script": {"type": "string", "minLength": 1},
            "module": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_.]*$"},
            "argv": {"type": "array", "items": {"type": ["string", "number", "boolean"]}},
            "metrics": {"enum": ["jsonl", "tensorboard", "none"]},
            "golden": {"type": "boolean"},
            "steps": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
            "test_type": {"enum": ["regular", "ckpt-resume"]},
            "layout": {"type": "string", "minLength": 1},
        },
        "oneOf": [{"required": ["script"]}, {"required": ["module"]}],
    }

    def validate(self, case: Case) -> None:
        args = case.args
        if "script" in args:
            path = self.script_path(case)
            if not path.is_file():
                raise CaseError("args.script", f"no such file: {path}")
        if args.get("test_type") == "ckpt-resume":
            if not args.get("steps"):
                raise CaseError("args.test_type", "ckpt-resume needs steps: [first, last] (last = train iterations)")
            argv = " ".join(map(str, args.get("argv", [])))
            if "${CHECKPOINT_SAVE_PATH}" not in argv or "${CHECKPOINT_LOAD_PATH}" not in argv:
                raise CaseError("args.argv", "ckpt-resume: pass ${CHECKPOINT_SAVE_PATH} and ${CHECKPOINT_LOAD_PATH} "
                                             "to the script (where it saves and what it loads)")

    @staticmethod
    def script_path(case: Case) -> Path:
        p = Path(case.args["script"])
        return p if p.is_absolute() else (Path(case.spec_file).parent / p).resolve()

    def case_uses_golden(self, case: Case) -> bool:
        return bool(case.args.get("golden", case.args.get("metrics", "jsonl") != "none"))

    def expected_steps(self, case: Case) -> tuple[int, int] | None:
        steps = case.args.get("steps")
        return (int(steps[0]), int(steps[1])) if steps else None

    def plan(self, case: Case) -> Sequence[LaunchPlan]:
        args: dict[str, Any] = {"argv": [str(a) if not isinstance(a, bool) else str(a).lower()
                                         for a in case.args.get("argv", [])]}
        if "script" in case.args:
            args["script"] = str(self.script_path(case))
        else:
            args["module"] = case.args["module"]
        if case.args.get("test_type") == "ckpt-resume":
            steps = case.args["steps"]
            return resume_plans(WORKER, args, ResumeSpec(train_iters=int(steps[1]),
                                                         layout=str(case.args.get("layout", "megatron"))))
        return [LaunchPlan("main", WORKER, args)]

    def metrics(self, case: Case, outcome: LaunchOutcome) -> dict[str, dict[int, float]]:
        rd = ResultsDir(outcome.launch.results_dir)
        if case.args.get("metrics", "jsonl") == "tensorboard":
            from runner.tensorboard import read_scalars

            return read_scalars(rd.tensorboard_dir)
        return rd.metrics()

    def compare(self, case: Case, outcomes: Sequence[LaunchOutcome], ctx: CompareContext) -> Sequence[CheckResult]:
        from runner.resume.checks import rewind_checks

        checks = [CheckResult("completed", True)]
        if case.args.get("test_type") == "ckpt-resume":
            checks.extend(rewind_checks(outcomes))
        return checks

    def comparisons(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Sequence[Any]:
        from runner.compare.stage import GoldenMetrics
        from runner.resume.checks import resume_comparisons

        source = "tensorboard" if case.args.get("metrics", "jsonl") == "tensorboard" else "jsonl"
        if case.args.get("test_type") == "ckpt-resume":
            return resume_comparisons(case, outcomes, golden=self.case_uses_golden(case), source=source)
        if not self.case_uses_golden(case):
            return ()
        return [GoldenMetrics(outcomes[0].launch.name if outcomes else "main", source)]

    def golden_metrics(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Mapping[str, Mapping[int, float]] | None:
        return self.metrics(case, outcomes[0]) if outcomes else None


@hookimpl
def runner_register_kinds(registry) -> None:
    registry.add(ScriptKind)
