"""Project configuration: ``[tool.runner]`` in pyproject.toml, or ``runner.toml``.

Keys (all optional)::

    [tool.runner]                 # or top level of runner.toml
    backend = "slurm"             # default backend id
    results_dir = "/shared/results"
    golden_dir = "golden"
    environment = "dev"           # Megatron's environment part of golden file names
    jobs = 4
    plugins = ["my_company.runner_plugin"]
    paths = ["specs"]             # what `runner run` collects when given no paths

    [tool.runner.megatron]        # Megatron-LM test cases (model_config.yaml)
    entry = "builtin"             # or "../Megatron-LM/pretrain_gpt.py", or "-m package.module"
    data_path = "/data"           # ${DATA_PATH}
    unsupported_args = "error"    # built-in entry: "warn" ignores unsupported arguments

    [tool.runner.backends.slurm]  # options of one backend (strings), same as --backend-opt
    partition = "gpu"
    account = "ml"

Command-line flags win over the file. The file is looked for in the current directory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from runner.errors import UsageError

import tomllib

KNOWN_KEYS = {"backend", "results_dir", "golden_dir", "environment", "jobs", "plugins", "paths", "backends",
              "megatron"}


@dataclass(frozen=True)
class ProjectConfig:
    root: Path
    source: Path | None = None
    values: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def backend_options(self, backend: str) -> dict[str, str]:
        opts = (self.values.get("backends") or {}).get(backend) or {}
        return {str(k): _opt_str(v) for k, v in opts.items()}


def _opt_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def load_config(cwd: Path | None = None) -> ProjectConfig:
    cwd = (cwd or Path.cwd()).resolve()
    for name in ("runner.toml", "pyproject.toml"):
        path = cwd / name
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path}: malformed TOML: {exc}") from None
        values = data if name == "runner.toml" else data.get("tool", {}).get("runner")
        if values is None:
            continue
        unknown = sorted(set(values) - KNOWN_KEYS)
        if unknown:
            from runner.errors import did_you_mean

            where = "" if name == "runner.toml" else "[tool.runner] "
            raise UsageError(f"{path}: {where}unknown key '{unknown[0]}'{did_you_mean(unknown[0], KNOWN_KEYS)}; "
                             f"allowed: {', '.join(sorted(KNOWN_KEYS))}")
        return ProjectConfig(cwd, path, values)
    return ProjectConfig(cwd)
