"""``runner compare GOLDEN ACTUAL``: compare what a run already produced with a golden file.

ACTUAL is one of:

- a TensorBoard log directory (event files; Megatron's metric names) — a launch's results
  dir with ``metrics/rank*.jsonl`` works too;
- a metrics JSON-lines file (one ``{"step": N, "<metric>": value, ...}`` object per line);
- a golden-format JSON file (``{metric: {start_step, end_step, step_interval, values}}``).

``--model-config model_config.yaml`` applies Megatron's case semantics: ``METRICS`` selects the
metrics (default ``lm loss``, ``num-zeros``); ``NVTE_ALLOW_NONDETERMINISTIC_ALGO=1`` or
``NON_DETERMINSTIC_RESULTS=1`` in ``ENV_VARS`` skips exact checks; ``TEST_TYPE`` ``regular``
compares the run with the golden; ``ckpt-resume`` / ``frozen-resume`` also compare the second
run with the first on the steps after ``--train-iters // 2`` when ACTUAL is a TensorBoard
directory holding both runs' event files (Megatron's layout), every METRIC, at 5 decimals.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from runner.compare.golden.evaluate import check_metrics, series_agreement
from runner.compare.golden.files import MEGATRON_DECIMALS, load_golden
from runner.compare.golden.rules import MEGATRON_DEFAULT_SELECT, CompareOptions
from runner.errors import UsageError
from runner.records import CheckResult

NONDETERMINISTIC_ENV = ("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "NON_DETERMINSTIC_RESULTS")
RESUME_TYPES = ("ckpt-resume", "frozen-resume")
Metrics = dict[str, dict[int, float]]


@dataclass(frozen=True)
class ModelConfig:
    select: tuple[str, ...] = MEGATRON_DEFAULT_SELECT
    deterministic: bool = True
    test_type: str = "regular"
    train_iters: int | None = None
    path: Path | None = None


@dataclass(frozen=True)
class OfflineResult:
    checks: Sequence[CheckResult]
    notes: Sequence[str] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)


def read_model_config(path: str | Path) -> ModelConfig:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: model config not found") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UsageError(f"{where}: malformed YAML: {exc.problem}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping (ENV_VARS, MODEL_ARGS, TEST_TYPE, METRICS, ...)")
    metrics = data.get("METRICS", list(MEGATRON_DEFAULT_SELECT))
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics) or not metrics:
        raise UsageError(f"{path}: METRICS: expected a list of metric names, got {metrics!r}")
    env = data.get("ENV_VARS") or {}
    if not isinstance(env, dict):
        raise UsageError(f"{path}: ENV_VARS: expected a mapping, got {env!r}")
    nondet = any(str(env.get(k, "0")).strip() == "1" for k in NONDETERMINISTIC_ENV)
    test_type = data.get("TEST_TYPE", "regular")
    if test_type not in ("regular", *RESUME_TYPES):
        raise UsageError(f"{path}: TEST_TYPE: '{test_type}' cannot be compared offline (regular, ckpt-resume, "
                         f"frozen-resume)")
    args = data.get("MODEL_ARGS") or {}
    iters = args.get("--train-iters") if isinstance(args, dict) else None
    if iters is not None and (not isinstance(iters, int) or isinstance(iters, bool)):
        raise UsageError(f"{path}: MODEL_ARGS.--train-iters: expected an integer, got {iters!r}")
    return ModelConfig(tuple(metrics), not nondet, str(test_type), iters, path)


def _jsonl(path: Path) -> Metrics:
    out: Metrics = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{n}:{exc.colno}: malformed JSON line: {exc.msg}") from None
        step = rec.get("step") if isinstance(rec, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise UsageError(f"{path}:{n}: 'step': expected an integer step in every line")
        for key, value in rec.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, {}).setdefault(step, float(value))
            elif key != "step" and value is None:
                out.setdefault(key, {}).setdefault(step, math.nan)
    return out


def tensorboard_runs(directory: Path) -> list[Metrics]:
    """One metric map per event file that holds scalars, oldest first (Megatron: index 0 is
    run 1, index 1 run 2; header-only files are dropped)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise UsageError("reading TensorBoard logs needs the 'tensorboard' package "
                         "(pip install 'dist-spec-runner[tensorboard]')") from None
    files = sorted(directory.rglob("events*tfevents*"), key=lambda p: p.stat().st_mtime)
    runs: list[Metrics] = []
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
        if tags:
            runs.append({t: {int(e.step): float(e.value) for e in acc.Scalars(t)} for t in tags})
    return runs


def read_actual(path: str | Path) -> list[Metrics]:
    """The run(s) in ACTUAL: a list with one metric map per run found (usually one)."""
    path = Path(path)
    if path.is_dir():
        if any((path / "metrics").glob("rank*.jsonl")):
            from runner.results import ResultsDir

            return [ResultsDir(path).metrics()]
        runs = tensorboard_runs(path)
        if not runs:
            raise UsageError(f"{path}: no TensorBoard event file with scalars (and no metrics/rank*.jsonl)")
        return runs
    if not path.is_file():
        raise UsageError(f"{path}: no such file or directory")
    if path.suffix == ".jsonl":
        return [_jsonl(path)]
    golden = load_golden(path)
    return [{k: v.as_dict() for k, v in golden.metrics.items()}]


def compare_offline(golden_path: str | Path, actual_path: str | Path, config: ModelConfig | None = None,
                    checks: Mapping[str, Any] | None = None) -> OfflineResult:
    golden = load_golden(golden_path)
    runs = read_actual(actual_path)
    options = CompareOptions(config.deterministic, config.select) if config else CompareOptions()
    results = list(check_metrics(golden, runs[0], options, checks=checks))
    notes: list[str] = []
    if config and config.test_type in RESUME_TYPES:
        if len(runs) < 2:
            notes.append(f"TEST_TYPE {config.test_type}: ACTUAL holds one run; run 2 vs run 1 not compared")
        elif config.train_iters is None:
            raise UsageError(f"{config.path}: MODEL_ARGS.--train-iters is needed to compare run 2 with run 1")
        else:
            results.extend(series_agreement(runs[0], runs[1], list(config.select), config.train_iters // 2,
                                            deterministic=config.deterministic, decimals=MEGATRON_DECIMALS))
    return OfflineResult(results, tuple(notes))


def result_json(result: OfflineResult, golden: str | Path, actual: str | Path) -> dict[str, Any]:
    return {"golden": str(golden), "actual": str(actual), "passed": result.passed, "notes": list(result.notes),
            "checks": [{"name": c.name, "passed": c.passed, "skipped": c.skipped, "detail": c.detail,
                        "data": dict(c.data)} for c in result.checks]}
