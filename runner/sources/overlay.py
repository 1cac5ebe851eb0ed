"""A user-side overlay for Megatron cases (never an edit of Megatron's files).

```yaml
overlay: megatron                       # marks the file (spec collection leaves it alone)
golden_dir: ../../golden/megatron-cpu   # goldens for these cases (relative to this file)
timeout: 600
resources: {nproc_per_node: 8}          # default for every case
ENV_VARS: {NAME: value}                 # merged over each case's ENV_VARS (null removes)
MODEL_ARGS: {--flag: value}             # merged over each case's MODEL_ARGS (null removes)
cases:                                  # per case (folder name), the same keys
  <case name>: {MODEL_ARGS: {...}, ENV_VARS: {...}, resources: {...}, timeout: ...}
```
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from runner.errors import SpecError, UsageError
from runner.records import Location
from runner.spec.schema import validate
from runner.spec.yamlpos import load_with_positions

_SCALAR = {"type": ["string", "number", "boolean", "null"]}
_ENTRY: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "MODEL_ARGS": {"type": "object", "additionalProperties": {"anyOf": [_SCALAR, {"type": "array"}]}},
        "ENV_VARS": {"type": "object", "additionalProperties": _SCALAR},
        "resources": {"type": "object", "additionalProperties": False,
                      "properties": {"nodes": {"type": "integer", "minimum": 1},
                                     "nproc_per_node": {"type": "integer", "minimum": 1}}},
        "timeout": {"type": ["number", "string"]},
    },
}
MARKER = re.compile(r"^overlay:\s*megatron\s*(#.*)?$", re.MULTILINE)
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["overlay"],
          "properties": {**_ENTRY["properties"], "overlay": {"const": "megatron"}, "golden_dir": {"type": "string"},
                         "cases": {"type": "object", "additionalProperties": _ENTRY}}}


@dataclass(frozen=True)
class Overlay:
    path: Path
    data: Mapping[str, Any]
    positions: Mapping[tuple, Location] = field(default_factory=dict, repr=False)

    @property
    def golden_dir(self) -> Path | None:
        g = self.data.get("golden_dir")
        if not g:
            return None
        p = Path(g)
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def layers(self, case_name: str) -> list[tuple[Mapping[str, Any], tuple]]:
        """(mapping, key prefix in the overlay file): the global layer, then the case's."""
        out: list[tuple[Mapping[str, Any], tuple]] = [(self.data, ())]
        per = (self.data.get("cases") or {}).get(case_name)
        if per:
            out.append((per, ("cases", case_name)))
        return out

    def unknown_cases(self, names: set[str]) -> list[str]:
        return sorted(set(self.data.get("cases") or {}) - names)


def load_overlay(path: str | Path) -> Overlay:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"--overlay {p}: cannot read: {exc.strerror or exc}") from None
    data, positions = load_with_positions(text, str(p))
    if data is None:
        raise SpecError("empty overlay", file=str(p), line=1, col=1)
    validate(data, SCHEMA, file=str(p), positions=positions, what=" (megatron overlay)")
    return Overlay(p.resolve(), data, positions)


def is_overlay(file: Path) -> bool:
    """Whether a YAML file is an overlay (top-level ``overlay: megatron``), not a spec file."""
    try:
        with open(file, encoding="utf-8", errors="replace") as fh:
            head = fh.read(16384)
    except OSError:
        return False
    return bool(MARKER.search(head))
