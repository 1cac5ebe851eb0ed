"""The ``megatron`` case source: a Megatron-LM functional test case (a folder with a
``model_config.yaml`` and ``golden_values_{environment}_{platform}.json``) as it is.

Mapping (Megatron's harness semantics):

* ``ENV_VARS`` -> every rank's environment; ``NVTE_ALLOW_NONDETERMINISTIC_ALGO=1`` or
  ``NON_DETERMINSTIC_RESULTS=1`` -> ``compare.deterministic: false`` (exact checks skipped);
* ``MODEL_ARGS`` -> the training entry's command line (``true``: bare flag; ``false``/null:
  left out); ``${TENSORBOARD_PATH}``, ``${CHECKPOINT_SAVE_PATH}``, ``${CHECKPOINT_LOAD_PATH}``,
  ``${DATA_PATH}``, ``${DATA_CACHE_PATH}`` are filled per launch;
* ``TEST_TYPE`` -> ``regular`` / ``ckpt-resume`` / ``frozen-resume``; others are SKIPPED;
* ``METRICS`` -> ``compare.select`` (default ``lm loss``, ``num-zeros``);
* goldens from the case's own folder (or an overlay's ``golden_dir``); a platform without a
  golden file there is SKIPPED with the reason;
* resources: tp x pp from MODEL_ARGS (or the case name), nodes from ``<N>nodes`` in the name;
  8 GPUs per node on GPU platforms (Megatron's DGX runs); on CPU tp x pp x 2 ranks (dp 2).

Settings (``[tool.runner.megatron]``, command line wins): ``entry`` (``builtin``, a path to
Megatron-LM's ``pretrain_gpt.py``, or ``-m package.module``), ``data_path`` (``${DATA_PATH}``),
``frozen_checkpoints`` (a folder with one checkpoint folder per case for frozen-resume),
``unsupported_args`` (``error``/``warn``, built-in entry only), ``overlay``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from runner.compare.golden import find_golden
from runner.errors import CaseError, SpecError, UsageError
from runner.records import Case, Location, Resources
from runner.sources import CaseSource, SourceContext
from runner.sources.overlay import load_overlay
from runner.sources.placeholders import names_in
from runner.spec.schema import validate
from runner.spec.yamlpos import load_with_positions

CONFIG_NAME = "model_config.yaml"
TEST_TYPES = ("regular", "ckpt-resume", "frozen-resume")
DEFAULT_METRICS = ["lm loss", "num-zeros"]
NONDETERMINISTIC = ("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "NON_DETERMINSTIC_RESULTS")
GPUS_PER_NODE = 8
_SCALAR = {"type": ["string", "number", "boolean", "null"]}
SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["MODEL_ARGS", "TEST_TYPE"],
    "properties": {
        "ENV_VARS": {"type": ["object", "null"], "additionalProperties": _SCALAR},
        "MODEL_ARGS": {"type": "object", "propertyNames": {"pattern": "^--"},
                       "additionalProperties": {"anyOf": [_SCALAR, {"type": "array"}]}},
        "TEST_TYPE": {"type": "string"},
        "METRICS": {"type": "array", "items": {"type": "string"}},
        "LAUNCHER": {"type": "string"},
        "MODE": {"type": "string"},
        "N_REPEAT": {"type": "integer"},
        "BEFORE_SCRIPT": {"type": "string"},
        "AFTER_SCRIPT": {"type": "string"},
    },
}


def _flag_int(args: Mapping[str, Any], flag: str, default: int | None) -> int | None:
    v = args.get(flag)
    try:
        return int(v) if v is not None and v is not True else default
    except (TypeError, ValueError):
        return default


class MegatronSource(CaseSource):
    id = "megatron"
    description = "Megatron-LM functional test cases: a folder's model_config.yaml and golden values"
    priority = 10

    def claims(self, file: Path) -> bool:
        return file.name == CONFIG_NAME

    def collect(self, file: Path, ctx: SourceContext) -> list[Case]:
        settings = ctx.settings_for(self.id)
        data, positions = _read(file)
        overlay = load_overlay(settings["overlay"]) if settings.get("overlay") else None
        name = file.parent.name
        merged = _Merged.of(data, positions, overlay, name,
                            settings.get("timeout", 600 if ctx.platform == "cpu" else 1800))
        test_type = str(data["TEST_TYPE"]).strip()
        golden_root = overlay.golden_dir if overlay and overlay.golden_dir else file.parent.parent
        own_goldens = not (overlay and overlay.golden_dir)   # Megatron's case folder: never written to
        frozen_root = settings.get("frozen_checkpoints")
        frozen = str(Path(frozen_root) / name) if test_type == "frozen-resume" and frozen_root else None
        skip = _skip_reason(test_type, merged.model_args, settings, ctx, golden_root, name, own_goldens, frozen)
        env = merged.env
        nondet = any(str(env.get(k, "0")).strip().lower() in ("1", "true") for k in NONDETERMINISTIC)
        args = {"model_config": str(file.resolve()), "argv_args": merged.model_args, "test_type": test_type,
                "entry": str(settings.get("entry", "builtin")), "entry_root": str(ctx.root),
                "unsupported_args": str(settings.get("unsupported_args", "error")),
                "data_path": settings.get("data_path"), "frozen_checkpoint": frozen}
        from runner.spec.loader import parse_duration

        case = Case(
            id=_case_id(file, name, ctx.root), name=name, kind="megatron", args=args,
            resources=_resources(merged, name, ctx.platform), spec_file=str(file),
            location=positions.get(("TEST_TYPE",)) or Location(str(file), 1, 1),
            env={str(k): _env_str(v) for k, v in env.items()}, timeout=parse_duration(merged.timeout),
            tags=("megatron", test_type), skip=skip,
            golden={"dir": str(golden_root), "name": name, "environment": ctx.environment},
            compare={"select": list(data.get("METRICS") or DEFAULT_METRICS), "deterministic": not nondet},
            platform=ctx.platform, key_locations=merged.locs,
        )
        try:
            ctx.plugins.kind("megatron").validate(case)
        except CaseError as exc:
            raise _spec_error(case, exc) from None
        return [case]


def _read(file: Path) -> tuple[dict[str, Any], dict[Any, Location]]:
    """The validated model_config.yaml and the positions of its keys."""
    fname = str(file)
    try:
        text = file.read_text()
    except OSError as exc:
        raise UsageError(f"{fname}: cannot read: {exc.strerror}") from None
    data, positions = load_with_positions(text, fname)
    if data is None:
        raise SpecError("empty model_config.yaml", file=fname, line=1, col=1)
    validate(data, SCHEMA, file=fname, positions=positions, what=" (Megatron model_config.yaml)")
    return data, positions


@dataclass
class _Merged:
    """MODEL_ARGS and ENV_VARS with an overlay's layers applied, and where each key was written."""

    model_args: dict[str, Any]
    env: dict[str, Any]
    locs: dict[str, Location]
    resources: dict[str, Any]
    timeout: Any

    @classmethod
    def of(cls, data: Mapping[str, Any], positions: Mapping[Any, Location], overlay: Any, name: str,
           timeout: Any) -> "_Merged":
        model_args: dict[str, Any] = dict(data["MODEL_ARGS"])
        env: dict[str, Any] = dict(data.get("ENV_VARS") or {})
        locs = {f"{section}.{k}": positions[(section, k)]
                for section, values in (("MODEL_ARGS", model_args), ("ENV_VARS", env))
                for k in values if (section, k) in positions}
        locs.update({key: positions[(key,)] for key in ("TEST_TYPE", "METRICS", "MODEL_ARGS", "ENV_VARS")
                     if (key,) in positions})
        merged = cls(model_args, env, locs, {}, timeout)
        for layer, prefix in (overlay.layers(name) if overlay else ()):
            merged.apply(layer, prefix, overlay.positions)
        return merged

    def apply(self, layer: Mapping[str, Any], prefix: tuple[Any, ...], positions: Mapping[Any, Location]) -> None:
        for section, target in (("MODEL_ARGS", self.model_args), ("ENV_VARS", self.env)):
            for k, v in (layer.get(section) or {}).items():
                if v is None:
                    target.pop(k, None)
                else:
                    target[k] = v
                loc = positions.get(prefix + (section, k))
                if loc:
                    self.locs[f"{section}.{k}"] = loc
        self.resources.update(layer.get("resources") or {})
        self.timeout = layer.get("timeout", self.timeout)


def _resources(merged: _Merged, name: str, platform: str) -> Resources:
    """tp x pp from MODEL_ARGS (or the case name), nodes from ``<N>nodes`` in the name; on CPU
    tp x pp x 2 ranks, on GPU platforms a full node; an overlay's ``resources`` win."""
    tp = _flag_int(merged.model_args, "--tensor-model-parallel-size", None) or _from_name(name, "tp") or 1
    pp = _flag_int(merged.model_args, "--pipeline-model-parallel-size", None) or _from_name(name, "pp") or 1
    over = merged.resources
    nodes = int(over.get("nodes", _from_name(name, "nodes", suffix=True) or 1))
    nproc = int(over.get("nproc_per_node", tp * pp * 2 if platform == "cpu" else GPUS_PER_NODE))
    return Resources(nodes=nodes, nproc_per_node=nproc)


def _skip_reason(test_type: str, model_args: Mapping[str, Any], settings: Mapping[str, Any], ctx: SourceContext,
                 golden_root: Path, name: str, own_goldens: bool, frozen: str | None) -> str | None:
    """Why this case cannot run here (None: it can), the first reason that applies."""
    if test_type not in TEST_TYPES:
        return f"TEST_TYPE '{test_type}' is not run by this runner (supported: {', '.join(TEST_TYPES)})"
    if find_golden(golden_root, name, ctx.environment, ctx.platform) is None \
            and test_type != "frozen-resume" and (own_goldens or not ctx.allow_missing_golden):
        return (f"no golden values for platform '{ctx.platform}' in {golden_root / name} "
                f"(golden_values_{ctx.environment}_{ctx.platform}.json); on CPU run with an overlay "
                f"(--overlay specs/megatron/cpu-overlay.yaml); new goldens go to an overlay's golden_dir")
    argv_names = set(names_in([v for v in model_args.values() if not isinstance(v, bool)]))
    if "DATA_PATH" in argv_names and not settings.get("data_path"):
        return "MODEL_ARGS use ${DATA_PATH}: set [tool.runner.megatron] data_path to Megatron's data root"
    if test_type == "frozen-resume" and not frozen:
        return ("frozen-resume loads a prepared checkpoint: set [tool.runner.megatron] "
                "frozen_checkpoints to a folder holding one checkpoint folder per case")
    return None


def _spec_error(case: Case, exc: CaseError) -> SpecError:
    where = case.key_locations.get(exc.key) or case.location
    return SpecError(f"case '{case.name}': {exc.bare_message}", file=where.file if where else case.spec_file,
                     line=where.line if where else None, col=where.col if where else None, key=exc.key)


def _from_name(name: str, what: str, *, suffix: bool = False) -> int | None:
    m = re.search(rf"(\d+){what}" if suffix else rf"(?:^|_){what}(\d+)(?:_|$)", name)
    return int(m.group(1)) if m else None


def _case_id(file: Path, name: str, root: Path) -> str:
    try:
        rel = file.resolve().relative_to(root)
    except ValueError:
        rel = file
    return f"{Path(rel).as_posix()}::{name}"


def _env_str(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)
