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


#: compiled fast validators by schema identity (schemas are module-level constants: the suite
#: schema, each kind's ``args_schema``); the schema object is kept so its id stays unique
_FAST: dict[int, tuple[Mapping[str, Any], Any]] = {}


def _fast_valid(schema: Mapping[str, Any], data: Any) -> bool:
    """True when a compiled validator (jsonschema-rs, when installed) accepts ``data``.

    Collection validates every expanded case twice; the pure-Python validator costs ~0.5 ms a
    call, the compiled one under 1 µs. Only "valid" is trusted: anything else goes through
    ``jsonschema`` for the message, and its word wins.
    """
    hit = _FAST.get(id(schema))
    if hit is None or hit[0] is not schema:
        try:
            import jsonschema_rs
        except ImportError:
            return False
        try:
            compiled = jsonschema_rs.validator_for(dict(schema))
        except Exception:  # noqa: BLE001 - a schema it cannot compile: the slow path decides
            compiled = None
        hit = _FAST[id(schema)] = (schema, compiled)
    if hit[1] is None:
        return False
    try:
        # a spec file before expansion with placeholders in it: the slow path decides which
        # placeholders are exempt (only where a scalar may stand)
        return bool(hit[1].is_valid(data))
    except Exception:  # noqa: BLE001 - data it cannot convert (e.g. a non-JSON value)
        return False


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


_SCALAR_TYPES = frozenset({"string", "integer", "number", "boolean", "null"})


def _admits_scalar(schema: Any) -> bool:
    """Could some scalar satisfy ``schema``? (False where only a mapping or a list will do.)"""
    if not isinstance(schema, Mapping):
        return True
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return any(t in _SCALAR_TYPES for t in types)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return any(_admits_scalar(s) for s in schema[key])
    return True


def _exempt(error) -> bool:
    """A whole "{axis}" placeholder is checked after expansion, but only where a scalar may stand."""
    if not _is_placeholder(error.instance):
        return False
    if error.validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return any(t in _SCALAR_TYPES for t in types)
    return _admits_scalar(error.schema)


def validate(data: Any, schema: Mapping[str, Any], *, file: str, positions: Mapping[tuple, Location],
             prefix: tuple = (), what: str = "", allow_placeholders: bool = False) -> None:
    """Raise SpecError for the first (deepest, earliest) schema violation.

    With ``allow_placeholders`` a value that is exactly a matrix placeholder (``"{axis}"``)
    passes; the expanded case is validated again once the axis value is known.
    """
    if _fast_valid(schema, data):
        return
    errors = list(_validator(schema).iter_errors(data))
    if allow_placeholders:
        errors = [e for e in errors if not _exempt(e)]
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
