"""Function references of the ``equivalence`` kind: ``"pkg.mod:fn"`` or ``"path/file.py:fn"``.

At collection a reference is *located* without importing anything (no torch, no user code
runs): a module is found on ``sys.path`` by the import system's path finder, a file relative
to the spec file, and the function is looked up in the source's syntax tree — so a typo is a
usage error naming the spec's line before any process starts. In the rank, ``load`` imports
it for real (a file is loaded under a private module name, freshly for every case).
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.machinery
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RefError(ValueError):
    """A reference that is malformed or does not resolve (message without the key)."""


@dataclass(frozen=True)
class FunctionRef:
    text: str                 # as written in the spec
    function: str
    module: str | None = None  # "pkg.mod" form
    file: str | None = None    # absolute path, "file.py:fn" form

    @property
    def is_file(self) -> bool:
        return self.file is not None

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "function": self.function, "module": self.module, "file": self.file}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FunctionRef":
        return cls(str(data["text"]), str(data["function"]), data.get("module"), data.get("file"))


def parse_ref(text: str, spec_file: str) -> FunctionRef:
    """Parse ``text``; a file path is made absolute relative to the spec file's folder."""
    target, sep, func = text.rpartition(":")
    if not sep or not target or not func:
        raise RefError(f"'{text}' is not 'pkg.module:function' or 'path/file.py:function'")
    if not _NAME.match(func):
        raise RefError(f"'{func}' in '{text}' is not a function name")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_absolute():
            path = Path(spec_file).resolve().parent / path
        return FunctionRef(text, func, file=str(path.resolve()))
    if not _MODULE.match(target):
        raise RefError(f"'{target}' in '{text}' is not a module name (or a path ending in .py)")
    return FunctionRef(text, func, module=target)


def module_source(module: str) -> Path | None:
    """The source file of ``module`` found on sys.path without importing it (None when the
    module exists but has no Python source, e.g. an extension). Raises RefError when absent."""
    parts = module.split(".")
    search: list[str] | None = None
    spec = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        spec = importlib.machinery.PathFinder.find_spec(name, search)
        if spec is None:
            loaded = sys.modules.get(name)
            if loaded is None:
                raise RefError(f"no module named '{name}' (on the import path of this interpreter)")
            spec = loaded.__spec__
            if spec is None:
                return None
        search = list(spec.submodule_search_locations or [])
        if i < len(parts) - 1 and not search:
            raise RefError(f"'{name}' is not a package, so '{module}' cannot be found")
    assert spec is not None
    origin = spec.origin
    if not origin or not origin.endswith(".py"):
        return None
    return Path(origin)


def defined_names(source: Path) -> dict[str, int]:
    """Top-level names a Python file defines (functions, classes, assignments, imports) -> line."""
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    except SyntaxError as exc:
        raise RefError(f"{source}:{exc.lineno}: syntax error: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RefError(f"cannot read {source}: {exc}") from None
    names: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.setdefault(node.name, node.lineno)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    names.setdefault(t.id, node.lineno)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.setdefault((alias.asname or alias.name).split(".")[0], node.lineno)
    return names


@dataclass(frozen=True)
class Located:
    ref: FunctionRef
    source: Path | None       # None: no Python source to look into
    line: int | None


def locate(ref: FunctionRef) -> Located:
    """Check that the file/module exists and defines the function; where it is."""
    if ref.file is not None:
        file = Path(ref.file)
        if not file.is_file():
            raise RefError(f"no such file: {ref.file}")
        source: Path | None = file
    else:
        assert ref.module is not None
        source = module_source(ref.module)
    if source is None:
        return Located(ref, None, None)
    names = defined_names(source)
    if ref.function not in names:
        from runner.errors import did_you_mean

        raise RefError(f"{source} defines no '{ref.function}'{did_you_mean(ref.function, names)}")
    return Located(ref, source, names[ref.function])


def load(ref: FunctionRef) -> Callable[..., Any]:
    """Import the referenced function (in the rank)."""
    if ref.module is not None:
        module = importlib.import_module(ref.module)
    else:
        assert ref.file is not None
        path = Path(ref.file)
        name = f"_runner_equivalence_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module          # dataclasses and pickling look the module up
        folder = str(path.parent)
        sys.path.insert(0, folder)          # the file may import its siblings
        try:
            spec.loader.exec_module(module)
        finally:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass
    fn = getattr(module, ref.function, None)
    if not callable(fn):
        raise ImportError(f"{ref.text}: '{ref.function}' is not a callable in {module.__name__}")
    return fn
