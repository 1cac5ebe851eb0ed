"""JSON Schema validation with messages that name file:line:col, the key path and what was expected."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

from runner.errors import SpecError, did_you_mean
from runner.records import Location
from runner.spec.yamlpos import dotted


@lru_cache(maxsize=None)
def suite_schema(checks: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The spec-file schema; ``checks``: the registered check names (the check registry's ids),
    which become the enum of ``compare.metrics.<name>.checks``."""
    schema = json.loads(resources.files("runner.spec").joinpath("suite.schema.json").read_text())
    if checks is not None:
        items = schema["$defs"]["metric_rule"]["properties"]["checks"]["items"]
        items.pop("type", None)
        items["enum"] = sorted(checks)
    return schema


def _validator(schema: Mapping[str, Any]):
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _allowed_keys(schema: Mapping[str, Any], root: Mapping[str, Any]) -> list[str]:
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref.startswith("#/$defs/"):
            schema = root.get("$defs", {}).get(ref.split("/")[-1], {})
    return sorted(schema.get("properties", {}))


def _expected(error) -> str:
    v, s = error.validator, error.schema
    if v == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"expected {' or '.join(types)}, got {_describe(error.instance)}"
    if v == "enum":
        return f"expected one of {', '.join(map(repr, error.validator_value))}, got {error.instance!r}"
    if v == "const":
        return f"expected {error.validator_value!r}, got {error.instance!r}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minLength", "minItems",
             "maxItems", "pattern", "required", "minProperties"):
        return error.message
    if v == "oneOf" or v == "anyOf":
        desc = s.get("description")
        return f"expected {desc}, got {error.instance!r}" if desc else f"{error.instance!r} is not valid here"
    return error.message


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_WHOLE_PLACEHOLDER = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")


def _is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and bool(_WHOLE_PLACEHOLDER.match(value))


def validate(data: Any, schema: Mapping[str, Any], *, file: str, positions: Mapping[tuple, Location],
             prefix: tuple = (), what: str = "", allow_placeholders: bool = False) -> None:
    """Raise SpecError for the first (deepest, earliest) schema violation.

    With ``allow_placeholders`` a value that is exactly a matrix placeholder (``"{axis}"``)
    passes; the expanded case is validated again once the axis value is known.
    """
    errors = list(_validator(schema).iter_errors(data))
    if allow_placeholders:
        errors = [e for e in errors if not _is_placeholder(e.instance)]
    if not errors:
        return

    def order(e):
        path = prefix + tuple(e.absolute_path)
        loc = positions.get(path)
        return (loc.line if loc else 10**9, loc.col if loc else 0, -len(path))

    error = sorted(errors, key=order)[0]
    # prefer the most specific sub-error of a oneOf/anyOf when there is one
    path = prefix + tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = _allowed_keys(error.schema, schema)
        extra = [k for k in error.instance if k not in allowed]
        key = extra[0] if extra else "?"
        kpath = path + (key,)
        loc = positions.get(kpath) or positions.get(path)
        allowed_txt = ", ".join(allowed) if allowed else "none"
        raise SpecError(f"unknown key '{key}'{did_you_mean(key, allowed)}{what}; allowed: {allowed_txt}",
                        file=file, line=loc.line if loc else None, col=loc.col if loc else None,
                        key=dotted(kpath))
    if error.validator == "required":
        loc = positions.get(path)
    else:
        loc = positions.get(path)
        # point at the value, not the key, when both are known
        loc = _value_location(positions, path) or loc
    raise SpecError(_expected(error) + what, file=file, line=loc.line if loc else None,
                    col=loc.col if loc else None, key=dotted(path) or "<top level>")


def _value_location(positions: Mapping[tuple, Location], path: tuple) -> Location | None:
    return positions.get(path)
