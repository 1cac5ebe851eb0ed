"""Plugin manager: discovery, registries for backends, case kinds and metric checks.

Discovery order: built-in hook implementations (``runner.builtin``), the ``runner``
entry-point group (the built-in backends and kinds are registered there, like any
third-party package), then ``-p module`` from the command line. ``-p no:NAME`` blocks an
entry point or module by name. A plugin that fails to import is recorded and reported by
name (``runner plugins`` shows it; using one of its ids is a usage error that says why).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, Iterable, TypeVar

import pluggy

from runner import hookspecs
from runner.errors import UsageError, did_you_mean

T = TypeVar("T")
ENTRY_POINT_GROUP = "runner"


@dataclass(frozen=True)
class Registered(Generic[T]):
    id: str
    cls: T
    plugin: str          # name of the plugin that registered it
    origin: str          # "builtin", "entry point <dist>", "-p"


class _Registry(Generic[T]):
    what = "item"

    def __init__(self, manager: "PluginManager") -> None:
        self._manager = manager
        self._items: dict[str, Registered[T]] = {}

    def add(self, cls: T) -> T:
        ident = getattr(cls, "id", None)
        if not isinstance(ident, str) or not ident:
            raise UsageError(f"plugin {self._manager.current_plugin!r}: {self.what} {cls!r} has no string 'id'")
        plugin, origin = self._manager.current_plugin, self._manager.current_origin
        if ident in self._items and self._items[ident].cls is not cls:
            other = self._items[ident]
            raise UsageError(f"{self.what} id '{ident}' registered twice: by plugin '{other.plugin}' and by '{plugin}'")
        self._items[ident] = Registered(ident, cls, plugin, origin)
        return cls

    def get(self, ident: str) -> Registered[T]:
        try:
            return self._items[ident]
        except KeyError:
            failed = self._manager.failed_for(ident)
            if failed:
                raise UsageError(f"{self.what} '{ident}' is unavailable: plugin '{failed[0]}' failed to load: {failed[1]}") from None
            known = ", ".join(sorted(self._items)) or "none"
            raise UsageError(f"unknown {self.what} '{ident}'{did_you_mean(ident, self._items)}; known: {known}") from None

    def ids(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[Registered[T]]:
        return [self._items[k] for k in sorted(self._items)]

    def __contains__(self, ident: object) -> bool:
        return ident in self._items


class BackendRegistry(_Registry[Any]):
    what = "backend"


class KindRegistry(_Registry[Any]):
    what = "case kind"


class CheckRegistry(_Registry[Any]):
    what = "check"

    def as_mapping(self) -> dict[str, Any]:
        """check id -> check class, for the comparison stage."""
        return {r.id: r.cls for r in self.items()}


class ReporterRegistry(_Registry[Any]):
    what = "reporter"


#: reporters that ship with the runner, registered as plugins by module name (so that
#: ``-p no:html`` or ``-p no:runner.report.html`` blocks one, as for any plugin)
BUILTIN_REPORTERS = {
    "terminal": "runner.report.terminal",
    "files": "runner.report.files",
    "html": "runner.report.html",
    "history": "runner.history.reporter",
}


class SourceRegistry(_Registry[Any]):
    what = "case source"


class LayoutRegistry(_Registry[Any]):
    what = "checkpoint layout"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    origin: str
    module: str
    error: str | None = None


class PluginManager:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.backends = BackendRegistry(self)
        self.kinds = KindRegistry(self)
        self.checks = CheckRegistry(self)
        self.reporters = ReporterRegistry(self)
        self.sources = SourceRegistry(self)
        self.layouts = LayoutRegistry(self)
        self.plugins: list[PluginInfo] = []
        self.current_plugin = "?"
        self.current_origin = "?"

    @property
    def hook(self):
        return self.pm.hook

    # -- loading ------------------------------------------------------------------------------
    def load(self, extra: Iterable[str] = (), *, entry_points: bool = True) -> None:
        extra = list(extra)
        blocked = {p[3:] for p in extra if p.startswith("no:")}
        wanted = [p for p in extra if not p.startswith("no:")]
        from runner import builtin

        from runner.compare import checks as builtin_checks

        self._register(builtin, "builtin", "builtin")
        self._register(builtin_checks, "checks", "builtin")
        for name, modname in BUILTIN_REPORTERS.items():
            if name not in blocked and modname not in blocked:
                self._register(importlib.import_module(modname), name, "builtin")
        if entry_points:
            for ep in sorted(_entry_points(), key=lambda e: (e.dist.name if e.dist else "", e.name)):
                if ep.name in blocked or ep.value.split(":")[0] in blocked:
                    continue
                dist = ep.dist.name if ep.dist else "?"
                origin = f"entry point ({dist})"
                try:
                    obj = ep.load()
                except Exception as exc:  # noqa: BLE001 - reported by name
                    self._failed(ep.name, origin, ep.value, exc)
                    continue
                self._register(obj, ep.name, origin)
        for name in wanted:
            if name in blocked:
                continue
            try:
                obj = importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001
                raise UsageError(f"-p {name}: plugin failed to load: {type(exc).__name__}: {exc}") from None
            self._register(obj, name, "-p")
        # registration hooks are historic: call them once, late plugins still get them
        self.current_plugin, self.current_origin = "?", "?"
        self.pm.hook.runner_register_backends.call_historic(kwargs={"registry": self.backends},
                                                             result_callback=None)
        self.pm.hook.runner_register_kinds.call_historic(kwargs={"registry": self.kinds})
        self.pm.hook.runner_register_checks.call_historic(kwargs={"registry": self.checks})
        self.pm.hook.runner_register_reporters.call_historic(kwargs={"registry": self.reporters})
        self.pm.hook.runner_register_sources.call_historic(kwargs={"registry": self.sources})
        self.pm.hook.runner_register_layouts.call_historic(kwargs={"registry": self.layouts})

    def _register(self, obj: Any, name: str, origin: str) -> None:
        if self.pm.is_registered(obj) or self.pm.has_plugin(name):
            return
        module = getattr(obj, "__name__", type(obj).__name__)
        self.plugins.append(PluginInfo(name, origin, module))
        self.pm.register(_Attributing(self, obj, name, origin), name=name)

    def _failed(self, name: str, origin: str, module: str, exc: BaseException) -> None:
        self.plugins.append(PluginInfo(name, origin, module, f"{type(exc).__name__}: {exc}"))

    def failed_for(self, ident: str) -> tuple[str, str] | None:
        for p in self.plugins:
            if p.error and (p.name == ident):
                return p.name, p.error
        return None

    # -- lookups ------------------------------------------------------------------------------
    def backend(self, ident: str, options: dict[str, str] | None = None):
        reg = self.backends.get(ident)
        return reg.cls(options or {})

    def kind(self, ident: str):
        return self.kinds.get(ident).cls()


class _Attributing:
    """Wraps a plugin module so registrations made from its hooks are attributed to it."""

    def __init__(self, manager: PluginManager, obj: Any, name: str, origin: str) -> None:
        self._manager, self._obj, self._name, self._origin = manager, obj, name, origin
        for attr in dir(obj):
            if not attr.startswith("runner_"):
                continue
            fn = getattr(obj, attr)
            if not callable(fn):
                continue
            setattr(self, attr, self._wrap(fn))

    def _wrap(self, fn):
        import functools

        manager, name, origin = self._manager, self._name, self._origin

        @functools.wraps(fn)
        def call(*args, **kwargs):
            prev = manager.current_plugin, manager.current_origin
            manager.current_plugin, manager.current_origin = name, origin
            try:
                return fn(*args, **kwargs)
            finally:
                manager.current_plugin, manager.current_origin = prev

        # keep pluggy's hookimpl options (tryfirst, wrapper, ...)
        opts = getattr(fn, hookspecs.PROJECT + "_impl", None)
        if opts is not None:
            setattr(call, hookspecs.PROJECT + "_impl", opts)
        return call


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
