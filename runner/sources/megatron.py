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
        fname = str(file)
        try:
            text = file.read_text()
        except OSError as exc:
            raise UsageError(f"{fname}: cannot read: {exc.strerror}") from None
        data, positions = load_with_positions(text, fname)
        if data is None:
            raise SpecError("empty model_config.yaml", file=fname, line=1, col=1)
        validate(data, SCHEMA, file=fname, positions=positions, what=" (Megatron model_config.yaml)")
        overlay = load_overlay(settings["overlay"]) if settings.get("overlay") else None
        name = file.parent.name
        model_args: dict[str, Any] = dict(data["MODEL_ARGS"])
        env: dict[str, Any] = dict(data.get("ENV_VARS") or {})
        locs = {f"MODEL_ARGS.{k}": positions[("MODEL_ARGS", k)] for k in model_args if ("MODEL_ARGS", k) in positions}
        locs.update({f"ENV_VARS.{k}": positions[("ENV_VARS", k)] for k in env if ("ENV_VARS", k) in positions})
        for key in ("TEST_TYPE", "METRICS", "MODEL_ARGS", "ENV_VARS"):
            if (key,) in positions:
                locs[key] = positions[(key,)]
        res_over: dict[str, Any] = {}
        timeout: Any = settings.get("timeout", 600 if ctx.platform == "cpu" else 1800)
        if overlay:
            for layer, prefix in overlay.layers(name):
                for section, target in (("MODEL_ARGS", model_args), ("ENV_VARS", env)):
                    for k, v in (layer.get(section) or {}).items():
                        if v is None:
                            target.pop(k, None)
                        else:
                            target[k] = v
                        loc = overlay.positions.get(prefix + (section, k))
                        if loc:
                            locs[f"{section}.{k}"] = loc
                res_over.update(layer.get("resources") or {})
                timeout = layer.get("timeout", timeout)
        test_type = str(data["TEST_TYPE"]).strip()
        case_loc = positions.get(("TEST_TYPE",)) or Location(fname, 1, 1)
        skip = None if test_type in TEST_TYPES else (f"TEST_TYPE '{test_type}' is not run by this runner "
                                                     f"(supported: {', '.join(TEST_TYPES)})")
        tp = _flag_int(model_args, "--tensor-model-parallel-size", None) or _from_name(name, "tp") or 1
        pp = _flag_int(model_args, "--pipeline-model-parallel-size", None) or _from_name(name, "pp") or 1
        nodes = int(res_over.get("nodes", _from_name(name, "nodes", suffix=True) or 1))
        if ctx.platform == "cpu":
            nproc = int(res_over.get("nproc_per_node", tp * pp * 2))
        else:
            nproc = int(res_over.get("nproc_per_node", GPUS_PER_NODE))
        golden_root = overlay.golden_dir if overlay and overlay.golden_dir else file.parent.parent
        golden_name = name
        nondet = any(str(env.get(k, "0")).strip().lower() in ("1", "true") for k in NONDETERMINISTIC)
        metrics = list(data.get("METRICS") or DEFAULT_METRICS)
        entry = str(settings.get("entry", "builtin"))
        argv_names = set(names_in([v for v in model_args.values() if not isinstance(v, bool)]))
        own_goldens = not (overlay and overlay.golden_dir)   # Megatron's case folder: never written to
        if skip is None and find_golden(golden_root, golden_name, ctx.environment, ctx.platform) is None \
                and test_type != "frozen-resume" and (own_goldens or not ctx.allow_missing_golden):
            skip = (f"no golden values for platform '{ctx.platform}' in {golden_root / golden_name} "
                    f"(golden_values_{ctx.environment}_{ctx.platform}.json); on CPU run with an overlay "
                    f"(--overlay specs/megatron/cpu-overlay.yaml); new goldens go to an overlay's golden_dir")
        if skip is None and "DATA_PATH" in argv_names and not settings.get("data_path"):
            skip = "MODEL_ARGS use ${DATA_PATH}: set [tool.runner.megatron] data_path to Megatron's data root"
        frozen = None
        if test_type == "frozen-resume":
            root = settings.get("frozen_checkpoints")
            frozen = str(Path(root) / name) if root else None
            if skip is None and not frozen:
                skip = ("frozen-resume loads a prepared checkpoint: set [tool.runner.megatron] "
                        "frozen_checkpoints to a folder holding one checkpoint folder per case")
        args = {"model_config": str(file.resolve()), "argv_args": model_args, "test_type": test_type,
                "entry": entry, "entry_root": str(ctx.root), "unsupported_args": str(settings.get("unsupported_args",
                                                                                              "error")),
                "data_path": settings.get("data_path"), "frozen_checkpoint": frozen}
        from runner.spec.loader import parse_duration

        case = Case(
            id=_case_id(file, name, ctx.root), name=name, kind="megatron", args=args,
            resources=Resources(nodes=nodes, nproc_per_node=nproc), spec_file=fname, location=case_loc,
            env={str(k): _env_str(v) for k, v in env.items()}, timeout=parse_duration(timeout),
            tags=("megatron", test_type), skip=skip,
            golden={"dir": str(golden_root), "name": golden_name, "environment": ctx.environment},
            compare={"select": metrics, "deterministic": not nondet}, platform=ctx.platform, key_locations=locs,
        )
        kind = ctx.plugins.kind("megatron")
        try:
            kind.validate(case)
        except CaseError as exc:
            raise _spec_error(case, exc) from None
        return [case]


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
