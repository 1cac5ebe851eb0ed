"""Golden files in Megatron-LM's format: find, load, write, and the fingerprint sidecar.

A golden file is ``golden/<case>/golden_values_{environment}_{platform}.json``; its top level
maps every metric name to ``{"start_step", "end_step", "step_interval", "values": {"<step>":
number | string}}``. Megatron's reader is a pydantic model with exactly that shape for *every*
top-level key, so the file holds metrics and nothing else.

What the runner adds lives next to it, in a sidecar that Megatron never reads: for
``golden_values_dev_cpu.json`` it is ``fingerprint_dev_cpu.json`` (``<name>.fingerprint.json``
for golden files named otherwise) — no ``golden_values_`` prefix, so neither Megatron's file
naming nor a ``golden_values_*`` glob picks it up. It holds ``{"precision": "full",
"fingerprint": {...platform...}}``. A golden with a sidecar is one of ours: values at full
float precision, so "exact" means bit-equal. A golden without one is Megatron's: its values
are rounded to 5 decimals and the run's values are rounded the same way before every check
(Megatron rounds what it reads from TensorBoard with ``round(value, 5)``).

Values: any string (Megatron writes ``"nan"``) reads as +inf, as in Megatron's comparison; a
JSON ``NaN`` stays NaN (it never equals anything, itself included).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from runner.errors import UsageError
from runner.records import Case
from runner.results import write_json_atomic

if TYPE_CHECKING:   # numpy is imported where a series is built: a run without goldens never loads it
    import numpy as np

MEGATRON_DECIMALS = 5
LEGACY_META_KEY = "__meta__"         # where older runner versions put the fingerprint (read, never written)
SIDECAR_PREFIX = "fingerprint_"


@dataclass(frozen=True, eq=False)
class GoldenSeries:
    """One metric: ``steps`` in the file's order and ``values`` (float64; strings -> +inf)."""

    start_step: int
    end_step: int
    step_interval: int
    steps: np.ndarray                    # int64
    values: np.ndarray                   # float64
    strings: frozenset[int] = frozenset()   # steps whose value was a string in the file

    @classmethod
    def from_mapping(cls, values: Mapping[int, float], start_step: int | None = None,
                     end_step: int | None = None, step_interval: int = 1) -> "GoldenSeries":
        import numpy as np

        steps = np.fromiter(values.keys(), dtype=np.int64, count=len(values))
        vals = np.fromiter(values.values(), dtype=np.float64, count=len(values))
        lo = int(steps.min()) if len(steps) else 1
        hi = int(steps.max()) if len(steps) else 0
        return cls(start_step if start_step is not None else lo, end_step if end_step is not None else hi,
                   step_interval, steps, vals)

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.steps.tolist(), self.values.tolist()))

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class GoldenFile:
    path: Path
    metrics: Mapping[str, GoldenSeries]
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def full_precision(self) -> bool:
        return self.meta.get("precision") == "full"

    @property
    def decimals(self) -> int | None:
        """None for our own full-precision files, 5 for Megatron's."""
        return None if self.full_precision else MEGATRON_DECIMALS

    def step_range(self) -> tuple[int, int]:
        starts = [s.start_step for s in self.metrics.values()]
        ends = [s.end_step for s in self.metrics.values()]
        return (min(starts), max(ends)) if starts else (0, 0)


# -- where ---------------------------------------------------------------------------------------
def golden_filename(environment: str, platform: str) -> str:
    return f"golden_values_{environment}_{platform}.json"


def sidecar_path(golden: str | Path) -> Path:
    golden = Path(golden)
    if golden.name.startswith("golden_values_"):
        return golden.with_name(SIDECAR_PREFIX + golden.name[len("golden_values_"):])
    return golden.with_name(golden.stem + ".fingerprint.json")


def find_golden(golden_root: Path, case_name: str, environment: str, platform: str) -> Path | None:
    """golden_root/<case>/golden_values_{env}_{platform}.json, else golden_values_{env}.json."""
    folder = Path(golden_root) / case_name
    for name in (golden_filename(environment, platform), f"golden_values_{environment}.json"):
        if (folder / name).is_file():
            return folder / name
    return None


def golden_path_for(case: Case, golden_root: Path, environment: str) -> Path:
    """Where this case's golden file is (explicit ``golden.file`` or the default name)."""
    golden = case.golden or {}
    explicit = golden.get("file")
    if explicit:
        p = Path(explicit)
        return p if p.is_absolute() else Path(case.spec_file).parent / p
    root = Path(golden["dir"]) if golden.get("dir") else Path(golden_root)
    if golden.get("dir") and not root.is_absolute():
        root = Path(case.spec_file).parent / root
    name = golden.get("name", case.name)
    env = golden.get("environment", environment)
    return find_golden(root, name, env, case.platform) or root / name / golden_filename(env, case.platform)


# -- load ----------------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> Any:
    from runner.spec.bounded import load_json_file   # size, depth, UTF-8 and number bounds, positioned

    return load_json_file(path, what=what.removesuffix(" file"))


def _int_field(series: Mapping[str, Any], key: str, default: int, where: str) -> int:
    val = series.get(key, default)
    if not isinstance(val, int) or isinstance(val, bool):
        raise UsageError(f"{where}: '{key}' must be an integer, got {val!r}")
    return val


def parse_series(name: str, series: Any, where: str) -> GoldenSeries:
    if not isinstance(series, dict) or not isinstance(series.get("values"), dict):
        raise UsageError(f"{where}: metric '{name}': expected {{start_step, end_step, step_interval, "
                         f"values: {{step: value}}}}")
    import numpy as np

    raw = series["values"]
    steps = np.empty(len(raw), dtype=np.int64)
    vals = np.empty(len(raw), dtype=np.float64)
    strings = set()
    for i, (key, value) in enumerate(raw.items()):
        try:
            steps[i] = int(key)
        except ValueError:
            raise UsageError(f"{where}: metric '{name}': step keys must be integers, got {key!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UsageError(f"{where}: metric '{name}': step {key}: expected a number or a string, got {value!r}")
        if isinstance(value, str):
            strings.add(int(steps[i]))
            vals[i] = math.inf
        else:
            vals[i] = float(value)
    lo = int(steps.min()) if len(steps) else 1
    hi = int(steps.max()) if len(steps) else 0
    interval = _int_field(series, "step_interval", 1, f"{where}: metric '{name}'")
    if interval < 1:
        raise UsageError(f"{where}: metric '{name}': 'step_interval' must be >= 1")
    return GoldenSeries(_int_field(series, "start_step", lo, f"{where}: metric '{name}'"),
                        _int_field(series, "end_step", hi, f"{where}: metric '{name}'"),
                        interval, steps, vals, frozenset(strings))


def load_golden(path: str | Path) -> GoldenFile:
    path = Path(path)
    data = _read_json(path, "golden file")
    if not isinstance(data, dict):
        raise UsageError(f"{path}: golden file must hold an object of metrics, got {type(data).__name__}")
    meta: dict[str, Any] = {}
    legacy = data.get(LEGACY_META_KEY)
    if isinstance(legacy, dict):
        meta = dict(legacy)
    metrics = {name: parse_series(name, series, str(path))
               for name, series in data.items() if name != LEGACY_META_KEY}
    if not metrics:
        raise UsageError(f"{path}: golden file holds no metrics")
    side = sidecar_path(path)
    if side.is_file():
        sidecar = _read_json(side, "golden fingerprint file")
        if not isinstance(sidecar, dict):
            raise UsageError(f"{side}: expected an object with 'precision' and 'fingerprint'")
        meta = dict(sidecar)
    return GoldenFile(path, metrics, meta)


# -- write ---------------------------------------------------------------------------------------
def write_golden(path: str | Path, metrics: Mapping[str, Mapping[int, float]], fingerprint: Mapping[str, Any],
                 *, step_interval: int = 1) -> Path:
    """Write a golden file (metrics only: Megatron's reader loads it) and its fingerprint
    sidecar, each atomically (temporary file + rename): never half a file."""
    path = Path(path)
    out: dict[str, Any] = {}
    for name in sorted(metrics):
        series = metrics[name]
        steps = sorted(int(s) for s in series)
        if not steps:
            continue
        kept = [s for s in steps if (s - steps[0]) % step_interval == 0]
        out[name] = {
            "start_step": steps[0],
            "end_step": steps[-1],
            "step_interval": step_interval,
            "values": {str(s): _json_value(series[s]) for s in kept},
        }
    write_json_atomic(path, out)
    write_json_atomic(sidecar_path(path), {"precision": "full", "fingerprint": dict(fingerprint)})
    return path


def _json_value(v: float) -> float | int | str:
    if math.isnan(v) or math.isinf(v):
        return "nan"           # Megatron's spelling; read back as +inf
    return int(v) if float(v).is_integer() and abs(v) < 2**53 else float(v)
