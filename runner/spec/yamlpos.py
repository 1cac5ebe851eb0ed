"""Safe YAML loading that remembers where every key and value was written.

``load_with_positions(text, filename)`` returns ``(data, positions)`` where ``positions``
maps a key path tuple (``("cases", 0, "args", "topk")``) to a Location. Duplicate mapping
keys, which PyYAML silently overwrites, are errors here.
"""
from __future__ import annotations

from typing import Any

import yaml

from runner.errors import SpecError
from runner.records import Location

Path_ = tuple  # a key path: tuple of str | int


class _Constructor(yaml.constructor.SafeConstructor):
    pass


def _loc(filename: str, mark: yaml.Mark) -> Location:
    return Location(filename, mark.line + 1, mark.column + 1)


def load_with_positions(text: str, filename: str) -> tuple[Any, dict[Path_, Location]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        msg = exc.problem or str(exc)
        if exc.context:
            msg = f"{exc.context}, {msg}" if exc.problem else exc.context
        raise SpecError(f"malformed YAML: {msg}", file=filename,
                        line=mark.line + 1 if mark else None, col=mark.column + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"malformed YAML: {exc}", file=filename) from None
    positions: dict[Path_, Location] = {}
    if node is None:
        return None, positions
    constructor = _Constructor()

    def build(n: yaml.Node, path: Path_) -> Any:
        positions.setdefault(path, _loc(filename, n.start_mark))
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise SpecError("YAML merge keys ('<<') are not supported", file=filename,
                                    line=key_node.start_mark.line + 1, col=key_node.start_mark.column + 1)
                key = constructor.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)):
                    raise SpecError("mapping keys must be scalars", file=filename,
                                    line=key_node.start_mark.line + 1, col=key_node.start_mark.column + 1)
                if isinstance(key, (int, float, bool)) and not isinstance(key, str):
                    key = str(key) if not isinstance(key, bool) else str(key).lower()
                if key in out:
                    first = positions.get(path + (key,))
                    raise SpecError(f"duplicate key '{key}'" + (f" (first at line {first.line})" if first else ""),
                                    file=filename, line=key_node.start_mark.line + 1,
                                    col=key_node.start_mark.column + 1, key=_dotted(path + (key,)))
                positions[path + (key,)] = _loc(filename, key_node.start_mark)
                out[key] = build(value_node, path + (key,))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(n.value)]
        try:
            return constructor.construct_object(n, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise SpecError(f"cannot read value: {exc.problem}", file=filename, line=n.start_mark.line + 1,
                            col=n.start_mark.column + 1, key=_dotted(path)) from None

    return build(node, ()), positions


def _dotted(path: Path_) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


dotted = _dotted
