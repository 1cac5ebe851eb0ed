"""Bounded readers for everything users hand the runner: spec files and golden files.

A file the runner reads must never crash it, hang it or make it eat the machine's memory.
These readers enforce, each with a one-line error naming ``file:line:col``:

- a size limit (``MAX_SPEC_BYTES`` / ``MAX_GOLDEN_BYTES``; ``RUNNER_MAX_INPUT_BYTES`` overrides
  both), checked before anything is parsed;
- strict UTF-8 (the position of the first bad byte is reported);
- a nesting-depth limit (``MAX_DEPTH``), checked before any recursive parser runs, so a
  10,000-deep file is an error, not a RecursionError;
- for JSON: integers are at most ``MAX_INT_DIGITS`` digits long (a 400-digit "number" is not
  a measured value, and Python cannot turn it into a float).

The YAML side (aliases, tags, expansion) lives in :mod:`runner.spec.yamlpos`; it uses
:func:`read_text` and :func:`position_of` from here.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from runner.errors import SpecError, UsageError

MAX_SPEC_BYTES = 1 * 1024 * 1024
MAX_GOLDEN_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_INT_DIGITS = 30
#: the longest file or folder name most filesystems accept (bytes)
MAX_NAME_BYTES = 255


def _limit(default: int) -> int:
    raw = os.environ.get("RUNNER_MAX_INPUT_BYTES")
    if raw and raw.isdigit():
        return int(raw)
    return default


def position_of(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of a character offset."""
    index = max(0, min(index, len(text)))
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


def _byte_position(data: bytes, index: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, index) + 1
    start = data.rfind(b"\n", 0, index) + 1
    col = len(data[start:index].decode("utf-8", "replace")) + 1
    return line, col


def read_text(path: str | os.PathLike[str], *, what: str = "spec", max_bytes: int | None = None) -> str:
    """The file's text: at most ``max_bytes`` bytes, valid UTF-8, else a positioned error."""
    path = Path(path)
    fname = str(path)
    limit = _limit(max_bytes if max_bytes is not None else (MAX_SPEC_BYTES if what == "spec" else MAX_GOLDEN_BYTES))
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise UsageError(f"{fname}: {what} file not found") from None
    except OSError as exc:
        raise UsageError(f"{fname}: cannot read {what} file: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise SpecError(f"{what} file is larger than the limit of {limit} bytes "
                        f"(RUNNER_MAX_INPUT_BYTES raises it)", file=fname, line=1, col=1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _byte_position(data, exc.start)
        raise SpecError(f"not valid UTF-8: byte 0x{data[exc.start]:02x} ({exc.reason})",
                        file=fname, line=line, col=col) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")
_LONG_INT = re.compile(r"(?<![\w.\"])-?\d{%d,}(?![\w.eE])" % (MAX_INT_DIGITS + 1))


def check_json_depth(text: str, fname: str, max_depth: int = MAX_DEPTH) -> None:
    """Raise a positioned error where brackets nest deeper than ``max_depth`` (strings ignored)."""
    # blank out strings with same-length filler so offsets stay valid
    masked = _JSON_STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', text)
    depth = 0
    for m in _JSON_BRACKET.finditer(masked):
        if m.group() in "[{":
            depth += 1
            if depth > max_depth:
                line, col = position_of(text, m.start())
                raise SpecError(f"nested deeper than {max_depth} levels", file=fname, line=line, col=col)
        else:
            depth -= 1


class _HugeInt(Exception):
    def __init__(self, digits: str) -> None:
        super().__init__(digits)
        self.digits = digits


def _parse_int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_INT_DIGITS:
        raise _HugeInt(s)
    return int(s)


def loads_json(text: str, fname: str, *, what: str = "golden") -> Any:
    """``json.loads`` with a depth limit, an integer-length limit and positioned errors."""
    check_json_depth(text, fname)
    try:
        return json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise SpecError(f"malformed {what} file: {exc.msg}", file=fname, line=exc.lineno, col=exc.colno) from None
    except _HugeInt as exc:
        m = _LONG_INT.search(_JSON_STRING.sub(lambda s: '"' + " " * (len(s.group()) - 2) + '"', text))
        line, col = position_of(text, m.start()) if m else (1, 1)
        raise SpecError(f"integer with {len(exc.digits.lstrip('-'))} digits (at most {MAX_INT_DIGITS} allowed)",
                        file=fname, line=line, col=col) from None
    except RecursionError:  # pragma: no cover - the depth check runs first
        raise SpecError(f"{what} file nests too deeply", file=fname, line=1, col=1) from None


def load_json_file(path: str | os.PathLike[str], *, what: str = "golden") -> Any:
    """Read and parse a JSON file through every bound above."""
    return loads_json(read_text(path, what=what), str(path), what=what)


def check_name_component(value: str, *, what: str) -> str | None:
    """Why ``value`` cannot be a single file/folder name inside a root (None: it can)."""
    if not value:
        return f"{what} is empty"
    if value in (".", "..") or any(ch in value for ch in "/\\\0"):
        return f"{what} {value!r} must be one folder name (no '/', '\\', NUL, '.' or '..')"
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"{what} is {len(value.encode('utf-8', 'surrogatepass'))} bytes long; at most {MAX_NAME_BYTES} bytes fit in a file name"
    return None
