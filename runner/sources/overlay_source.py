"""Megatron overlay files found while collecting a folder: read with --overlay, never cases."""
from __future__ import annotations

from pathlib import Path

from runner.records import Case
from runner.sources import CaseSource, SourceContext
from runner.sources.overlay import is_overlay


class OverlaySource(CaseSource):
    id = "megatron-overlay"
    description = "Megatron overlays (top-level 'overlay: megatron'): used with --overlay, hold no cases"
    priority = 5

    def claims(self, file: Path) -> bool:
        return file.suffix in (".yaml", ".yml") and is_overlay(file)

    def collect(self, file: Path, ctx: SourceContext) -> list[Case]:
        return []
