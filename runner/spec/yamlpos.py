"""Safe YAML loading that remembers where every key and value was written.

``load_with_positions(text, filename)`` returns ``(data, positions)`` where ``positions``
maps a key path tuple (``("cases", 0, "args", "topk")``) to a Location. Duplicate mapping
keys, which PyYAML silently overwrites, are errors here.

Bounded: nesting deeper than ``MAX_DEPTH``, more than ``MAX_ALIASES`` alias uses, a document
that expands (through aliases) to more than ``MAX_NODES`` values, an alias that refers to
itself, and any tag outside YAML's plain core types (``!!python/object``, ``!custom``, on a
scalar, a list or a mapping) are positioned errors, found before memory or the stack run out.
"""
from __future__ import annotations

from typing import Any

import yaml

from runner.errors import SpecError
from runner.records import Location
from runner.spec.bounded import position_of

Path_ = tuple  # a key path: tuple of str | int


MAX_DEPTH = 64
MAX_ALIASES = 200
MAX_NODES = 200_000
#: the only tags a spec value may carry (what plain YAML resolves to)
ALLOWED_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq",
                                                             "map", "timestamp"))


class _Constructor(yaml.constructor.SafeConstructor):
    pass


# a date stays the string it was written as: every value must survive JSON (launch.json)
# (the stub types a constructor's first argument as a Loader; this one runs on a standalone _Constructor)
_Constructor.add_constructor("tag:yaml.org,2002:timestamp",
                             yaml.constructor.SafeConstructor.construct_yaml_str)  # type: ignore[type-var]


def _error(message: str, filename: str, mark: yaml.Mark | None, key: str | None = None) -> SpecError:
    return SpecError(message, file=filename, line=mark.line + 1 if mark else 1,
                     col=mark.column + 1 if mark else 1, key=key or None)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer stops at a depth and an alias-count limit."""

    def __init__(self, stream: str, filename: str) -> None:
        super().__init__(stream)
        self._filename = filename
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _error(f"more than {MAX_ALIASES} YAML aliases ('*name'); spell the values out",
                             self._filename, self.peek_event().start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _error(f"nested deeper than {MAX_DEPTH} levels", self._filename, self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _loc(filename: str, mark: yaml.Mark) -> Location:
    return Location(filename, mark.line + 1, mark.column + 1)


def _compose(text: str, filename: str) -> yaml.Node | None:
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text, filename)
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        msg = exc.problem or str(exc)
        if exc.context:
            msg = f"{exc.context}, {msg}" if exc.problem else exc.context
        raise _error(f"malformed YAML: {msg}", filename, mark) from None
    except yaml.reader.ReaderError as exc:
        line, col = position_of(text, exc.position)
        what = (f"character U+{exc.character:04X}" if isinstance(exc.character, int) else "byte")
        raise SpecError(f"malformed YAML: unacceptable {what}: {exc.reason}", file=filename,
                        line=line, col=col) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"malformed YAML: {exc}", file=filename, line=1, col=1) from None
    except RecursionError:  # pragma: no cover - the depth limit comes first
        raise SpecError("malformed YAML: nested too deeply", file=filename, line=1, col=1) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_with_positions(text: str, filename: str) -> tuple[Any, dict[Path_, Location]]:
    node = _compose(text, filename)
    positions: dict[Path_, Location] = {}
    if node is None:
        return None, positions
    constructor = _Constructor()
    built = 0
    active: set[int] = set()

    def check_tag(n: yaml.Node, path: Path_) -> None:
        if n.tag not in ALLOWED_TAGS:
            tag = n.tag.replace("tag:yaml.org,2002:", "!!", 1)
            raise _error(f"the YAML tag '{tag}' is not allowed (plain values, lists and mappings only)",
                         filename, n.start_mark, _dotted(path))

    def build(n: yaml.Node, path: Path_) -> Any:
        nonlocal built
        built += 1
        if built > MAX_NODES:
            raise _error(f"the document expands to more than {MAX_NODES} values (aliases used as a multiplier?)",
                         filename, n.start_mark, _dotted(path))
        if id(n) in active:
            raise _error("a YAML alias refers to the value that contains it", filename, n.start_mark, _dotted(path))
        check_tag(n, path)
        positions.setdefault(path, _loc(filename, n.start_mark))
        if isinstance(n, yaml.MappingNode):
            active.add(id(n))
            try:
                return build_mapping(n, path)
            finally:
                active.discard(id(n))
        if isinstance(n, yaml.SequenceNode):
            active.add(id(n))
            try:
                return [build(item, path + (i,)) for i, item in enumerate(n.value)]
            finally:
                active.discard(id(n))
        try:
            return constructor.construct_object(n, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise _error(f"cannot read value: {exc.problem}", filename, n.start_mark, _dotted(path)) from None
        except (ValueError, OverflowError) as exc:
            raise _error(f"cannot read value: {exc}", filename, n.start_mark, _dotted(path)) from None

    def build_mapping(n: yaml.MappingNode, path: Path_) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key_node, value_node in n.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _error("YAML merge keys ('<<') are not supported", filename, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                raise _error("mapping keys must be scalars", filename, key_node.start_mark)
            check_tag(key_node, path)
            try:
                key = constructor.construct_object(key_node, deep=True)
            except (yaml.constructor.ConstructorError, ValueError, OverflowError) as exc:
                raise _error(f"cannot read key: {getattr(exc, 'problem', None) or exc}", filename,
                             key_node.start_mark) from None
            if not isinstance(key, (str, int, float, bool)):
                raise _error("mapping keys must be strings or numbers", filename, key_node.start_mark)
            if isinstance(key, (int, float, bool)) and not isinstance(key, str):
                key = str(key) if not isinstance(key, bool) else str(key).lower()
            if key in out:
                first = positions.get(path + (key,))
                raise _error(f"duplicate key '{key}'" + (f" (first at line {first.line})" if first else ""),
                             filename, key_node.start_mark, _dotted(path + (key,)))
            positions[path + (key,)] = _loc(filename, key_node.start_mark)
            out[key] = build(value_node, path + (key,))
        return out

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
