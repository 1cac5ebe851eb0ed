"""One difference between two captures, and the deepdiff path syntax its key uses."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TensorMismatch:
    key: str                     # deepdiff path, e.g. "root['grads']['layers.0.mlp.fc1.weight']"
    reason: str                  # values, dtype, shape, missing, extra, type, length, unhandled
    count: int = 0               # differing elements
    numel: int = 0
    max_abs_diff: float = 0.0
    index: tuple[int, ...] = ()  # where the max abs difference is
    expected: Any = None
    actual: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "reason": self.reason, "count": self.count, "numel": self.numel,
                "max_abs_diff": self.max_abs_diff, "index": list(self.index)}

    def describe(self) -> str:
        if self.reason == "values" and self.numel:
            return (f"{self.key}: {self.count}/{self.numel} elements differ, max abs diff "
                    f"{self.max_abs_diff:.6g} at index {list(self.index)} (expected {self.expected!r}, got {self.actual!r})")
        if self.reason == "values":
            return f"{self.key}: value differs (expected {self.expected!r}, got {self.actual!r})"
        if self.reason in ("dtype", "shape", "type"):
            return f"{self.key}: {self.reason} differs (expected {self.expected}, got {self.actual})"
        if self.reason == "length":
            return f"{self.key}: list length differs (expected {self.expected}, got {self.actual})"
        if self.reason == "missing":
            return f"{self.key}: missing in the actual capture"
        if self.reason == "extra":
            return f"{self.key}: not in the reference capture"
        return f"{self.key}: {self.reason} (expected {self.expected!r}, got {self.actual!r})"


def path_key(path: str) -> str:
    """"root['a']['b'][0]" -> "a.b.0" for messages."""
    parts = re.findall(r"\[(?:'([^']*)'|\"([^\"]*)\"|(\d+))\]", path)
    return ".".join(a or b or c for a, b, c in parts) or path
