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


def collect_cases(paths: Iterable[str], ctx: SourceContext) -> list[Case]:
    from runner.spec.loader import find_spec_files

    sources = sorted((r.cls() for r in ctx.plugins.sources.items()), key=lambda s: -s.priority)
    cases: list[Case] = []
    seen: dict[str, Case] = {}
    for file, name_filter in find_spec_files(paths):
        source = next((s for s in sources if s.claims(file)), None)
        if source is None:
            continue
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
