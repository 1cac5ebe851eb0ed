"""What the commands share: plugins and project config loaded once, the session's Options
from the command line and the config, the session, and its backend."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from runner.errors import UsageError

if TYPE_CHECKING:
    from runner.config import ProjectConfig
    from runner.plugins import PluginManager
    from runner.run.session import Options, Session


def load_plugins(cli_plugins: Sequence[str]) -> "tuple[ProjectConfig, PluginManager]":
    from runner.config import load_config
    from runner.plugins import PluginManager

    config = load_config()
    plugins = PluginManager()
    plugins.load(list(config.get("plugins", []) or []) + list(cli_plugins))
    return config, plugins


def loaded(ns: argparse.Namespace) -> "tuple[ProjectConfig, PluginManager]":
    """The config and plugins, loaded once per command line (``main`` may have loaded them
    before parsing, for plugins' options)."""
    cached = getattr(ns, "_loaded", None)
    if cached is None:
        cached = ns._loaded = load_plugins(ns.plugins)
    return cached


def _paths(ns: argparse.Namespace, config: "ProjectConfig") -> list[str]:
    paths = list(getattr(ns, "paths", []) or []) or list(config.get("paths", []) or [])
    if paths:
        return paths
    if not Path("specs").is_dir():
        raise UsageError("no PATH given and no specs/ directory here")
    return ["specs"]


def _backend_opts(ns: argparse.Namespace, config: "ProjectConfig", backend: str) -> dict[str, str]:
    """The config's ``[tool.runner.backends.<id>]`` table; ``--backend-opt KEY=VALUE`` wins."""
    opts = config.backend_options(backend)
    for item in getattr(ns, "backend_opt", []) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--backend-opt {item!r}: expected KEY=VALUE")
        opts[key.strip()] = value
    return opts


def _jobs(ns: argparse.Namespace, config: "ProjectConfig") -> int | None:
    jobs = getattr(ns, "jobs", None)
    if jobs is None:
        jobs = config.get("jobs")
    if jobs is not None and int(jobs) < 1:
        raise UsageError("--jobs must be at least 1")
    return int(jobs) if jobs is not None else None


def _source_overrides(ns: argparse.Namespace) -> dict[str, dict[str, Any]]:
    megatron = {"overlay": getattr(ns, "overlay", None), "entry": getattr(ns, "megatron_entry", None)}
    return {"megatron": {k: v for k, v in megatron.items() if v}}


def options(ns: argparse.Namespace, config: "ProjectConfig") -> "Options":
    from runner.run.session import Options

    backend = getattr(ns, "backend", None) or config.get("backend", "local")
    return Options(
        paths=_paths(ns, config), keyword=getattr(ns, "keyword", None), backend=backend,
        backend_opts=_backend_opts(ns, config, backend),
        platform=getattr(ns, "platform", None), dry_run=getattr(ns, "dry_run", False),
        jobs=_jobs(ns, config), results_dir=getattr(ns, "results_dir", None),
        json_path=getattr(ns, "json_path", None), junit_path=getattr(ns, "junit_path", None),
        exitfirst=getattr(ns, "exitfirst", False), golden_dir=getattr(ns, "golden_dir", None),
        environment=getattr(ns, "environment", None) or config.get("environment", "dev"),
        plugins=list(ns.plugins), verbose=getattr(ns, "verbose", 0),
        reuse=getattr(ns, "reuse", True),
        extra={k: v for k, v in vars(ns).items() if not k.startswith("_")},
        source_overrides=_source_overrides(ns),
    )


def make_session(ns: argparse.Namespace) -> "Session":
    from runner.run.session import Session

    config, plugins = loaded(ns)
    session = Session(options(ns, config), plugins, config)
    plugins.hook.runner_configure(session=session)
    return session


def make_backend(session: "Session") -> Any:
    """The session's backend; its options are checked against its schema when it is made."""
    opts = session.options
    return session.plugins.backends.get(opts.backend).cls(opts.backend_opts)
