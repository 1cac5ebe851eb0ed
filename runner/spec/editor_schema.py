"""``runner schema``: one JSON Schema for editors — the suite schema plus every registered
kind's ``args`` schema, so an editor (the YAML language server) completes and checks spec files.

Each case (and a file's ``defaults``) whose ``kind`` names a kind gets that kind's ``args``
schema. Editors see one case at a time, so the editor schema is a little looser than the
runner: ``{axis}`` placeholders are allowed where a number, a boolean or an enum value is
expected (the matrix fills them in), and ``args`` keys required by a kind are not required in the editor (they may
come from ``defaults``). The runner itself validates the expanded cases strictly.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any, Mapping

from runner.errors import UsageError
from runner.spec.schema import suite_schema

SCHEMA_ID = "https://dist-spec-runner.invalid/spec.schema.json"
PLACEHOLDER = {"type": "string", "pattern": r"\{[A-Za-z_][A-Za-z0-9_]*\}",
               "description": "a {axis} placeholder filled in from the matrix"}
_DROP = ("$schema", "$id")


def _loosen(node: Any, *, top: bool = False) -> Any:
    """Copy of an args schema with placeholders allowed for non-string types and, at the top,
    no ``required`` (keys may come from the file's defaults)."""
    if isinstance(node, list):
        return [_loosen(n) for n in node]
    if not isinstance(node, Mapping):
        return node
    out = {k: _loosen(v) for k, v in node.items() if k not in _DROP and not (top and k == "required")}
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        if isinstance(node.get(key), Mapping):
            out[key] = {name: _loosen(sub) for name, sub in node[key].items()}
    types = node.get("type")
    kinds = set(types if isinstance(types, list) else [types]) if types else set()
    if kinds and "string" not in kinds and kinds & {"integer", "number", "boolean"}:
        return {"anyOf": [out, PLACEHOLDER]}
    if "enum" in node and not kinds:
        return {"anyOf": [out, PLACEHOLDER]}
    return out


def editor_schema(plugins: Any) -> dict[str, Any]:
    base = suite_schema()
    schema = _loosen(copy.deepcopy(base))
    schema = {"$schema": base.get("$schema", "https://json-schema.org/draft/2020-12/schema"), **schema}
    schema["$id"] = SCHEMA_ID
    schema["title"] = "runner spec file (suite and the args of every case kind)"
    defs = schema.setdefault("$defs", {})
    kinds = plugins.kinds.items()
    rules = []
    for reg in kinds:
        name = f"args_{reg.id}"
        args_schema = dict(getattr(reg.cls, "args_schema", {}) or {"type": "object"})
        defs[name] = {**_loosen(args_schema, top=True),
                      "description": getattr(reg.cls, "description", "") or f"args of kind '{reg.id}'"}
        rules.append({"if": {"properties": {"kind": {"const": reg.id}}, "required": ["kind"]},
                      "then": {"properties": {"args": {"$ref": f"#/$defs/{name}"}}}})
    kind_prop = {"enum": [r.id for r in kinds],
                 "description": "the case kind: " + ", ".join(f"{r.id} ({r.plugin})" for r in kinds)}
    for target in ("case", "overridable"):
        if target in defs:
            defs[target].setdefault("properties", {})["kind"] = dict(kind_prop)
            defs[target]["allOf"] = list(defs[target].get("allOf", [])) + rules
    return schema


def cmd_schema(ns: argparse.Namespace, plugins: Any) -> int:
    text = json.dumps(editor_schema(plugins), indent=2) + "\n"
    if ns.output:
        from runner.results import write_bytes_atomic

        path = Path(ns.output)
        try:
            write_bytes_atomic(path, text.encode())
            path.chmod(0o644)
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        print(f"wrote {path} ({len(plugins.kinds.ids())} case kinds)")
    else:
        print(text, end="")
    return 0
