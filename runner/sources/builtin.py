"""Registers the built-in case sources (``yaml``, ``megatron``) and the ``megatron`` kind."""
from __future__ import annotations

from runner.hookspecs import hookimpl


@hookimpl
def runner_register_sources(registry) -> None:
    from runner.sources.megatron import MegatronSource
    from runner.sources.yaml_source import YamlSource

    from runner.sources.overlay_source import OverlaySource

    registry.add(YamlSource)
    registry.add(MegatronSource)
    registry.add(OverlaySource)


@hookimpl
def runner_register_kinds(registry) -> None:
    from runner.sources.megatron_kind import MegatronKind

    registry.add(MegatronKind)
