"""Case sources: what turns files into cases. A registry (``runner_register_sources``).

Each PATH on the command line is expanded (a directory: every ``*.yaml``/``*.yml`` below it,
hidden folders left out); each file goes to the first source, by descending ``priority``,
that ``claims`` it. Built-ins: ``megatron`` (a Megatron-LM ``model_config.yaml``) and
``yaml`` (the runner's own spec files, every other YAML file).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

from runner.errors import SpecError, UsageError, did_you_mean
from runner.records import Case
from runner.spec.path_args import expand_path_arg


@dataclass(frozen=True)
class SourceContext:
    """What a source may use: the plugins (kinds), the platform, the project root and its
    settings (``[tool.runner.<source id>]`` merged with command-line overrides)."""

    plugins: Any
    platform: str
    root: Path
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    environment: str = "dev"
    allow_missing_golden: bool = False

    def settings_for(self, source_id: str) -> Mapping[str, Any]:
        return self.settings.get(source_id, {}) or {}


class CaseSource(abc.ABC):
    id: ClassVar[str]
    description: ClassVar[str] = ""
    priority: ClassVar[int] = 0

    @abc.abstractmethod
    def claims(self, file: Path) -> bool:
        """Whether this source reads ``file``."""

    @abc.abstractmethod
    def collect(self, file: Path, ctx: SourceContext) -> list[Case]:
        """The cases of ``file``; errors are SpecErrors naming file:line:col and the key."""


def expand_paths(paths: Iterable[str], sources: list[CaseSource]) -> list[tuple[Path, str | None, CaseSource]]:
    """PATHS (files, directories, ``file::case``) -> (file, case-name filter, its source). In a
    directory every file some source claims, hidden folders left out; an explicit file no
    source claims is a usage error."""
    out: list[tuple[Path, str | None, CaseSource]] = []
    seen: set[tuple[Path, str | None]] = set()
    for raw in paths:
        is_dir, items = expand_path_arg(raw)
        for f, flt in items:
            source = next((s for s in sources if s.claims(f)), None)
            if source is None:
                if not is_dir:
                    raise UsageError(f"{f}: no case source reads this file (sources: "
                                     f"{', '.join(s.id for s in sources)})")
                continue
            key = (f.resolve(), flt)
            if key not in seen:
                seen.add(key)
                out.append((f, flt, source))
    return out


def collect_cases(paths: Iterable[str], ctx: SourceContext) -> list[Case]:
    sources = sorted((r.cls() for r in ctx.plugins.sources.items()), key=lambda s: -s.priority)
    cases: list[Case] = []
    seen: dict[str, Case] = {}
    for file, name_filter, source in expand_paths(paths, sources):
        found = source.collect(file, ctx)
        if name_filter:
            names = [c.name for c in found]
            found = [c for c in found if c.name == name_filter]
            if not found:
                raise UsageError(f"{file}: no case named '{name_filter}'{did_you_mean(name_filter, names)}")
        for case in found:
            if case.id in seen:
                first = seen[case.id]
                loc = case.location
                raise SpecError(f"duplicate case id '{case.id}' (first defined at {first.location})",
                                file=str(file), line=loc.line if loc else None, col=loc.col if loc else None,
                                key="name")
            seen[case.id] = case
            cases.append(case)
    return cases
