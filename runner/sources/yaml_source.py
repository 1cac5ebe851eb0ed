"""The built-in ``yaml`` case source: the runner's own spec files (``runner.spec.loader``)."""
from __future__ import annotations

from pathlib import Path

from runner.records import Case
from runner.sources import CaseSource, SourceContext
from runner.spec.loader import SPEC_SUFFIXES, SpecLoader


class YamlSource(CaseSource):
    id = "yaml"
    description = "the runner's spec files (cases:, defaults:, matrix, profiles)"
    priority = 0

    def claims(self, file: Path) -> bool:
        return file.suffix in SPEC_SUFFIXES

    def collect(self, file: Path, ctx: SourceContext) -> list[Case]:
        return SpecLoader(ctx.plugins, ctx.platform, root=ctx.root).load_file(file)
