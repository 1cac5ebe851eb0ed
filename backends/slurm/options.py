"""The Slurm backend's options: what each one means, and their parsing into ``SlurmOptions``.

Value rules shared with the Kubernetes backend (numbers in range, one-line strings, the
warm-pool options) live in ``backends.option_values``.
"""
from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from backends.option_values import POOL_OPTION_HELP, number, one_line, pool_settings
from runner.errors import UsageError
from runner.run.pools import PoolSettings

OPTION_HELP: dict[str, str] = {
    "partition": "sbatch --partition",
    "account": "sbatch --account",
    "qos": "sbatch --qos",
    "time_margin": "seconds added to the case timeout for sbatch --time (default 60); "
                   "the runner cancels at the case timeout, Slurm's limit is the backstop",
    "python": "Python interpreter on the compute nodes, inside the container when container_image "
              "is set (default: the runner's own)",
    "container_image": "srun --container-image (pyxis/enroot)",
    "container_mounts": "srun --container-mounts (pyxis/enroot); mount the results dir at the same "
                        "path, e.g. /data:/data,/results:/results",
    "extra_sbatch": "extra sbatch flags, shell-split, e.g. \"--constraint=a100 --exclusive\"",
    "rdzv_port": "rendezvous port on the head node (default 0: a free port picked there)",
    "env_passthrough": "which of the runner's environment variables the job sees: "
                       "ALL (default), NONE, or NAME,NAME,... (sbatch --export)",
    **POOL_OPTION_HELP,
}

SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,:+@=-]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _multiline(value: str) -> bool:
    return "\n" in value or "\r" in value or "\0" in value


@dataclass(frozen=True)
class SlurmOptions:
    """Validated backend options (``--backend-opt key=value`` or the config file)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_margin: int = 60
    python: str = sys.executable
    container_image: str | None = None
    container_mounts: str | None = None
    extra_sbatch: tuple[str, ...] = ()
    rdzv_port: int = 0                      # 0: a free port picked on the head node
    env_passthrough: str = "ALL"            # sbatch --export: ALL, NONE or NAME,NAME,...
    pools: PoolSettings | None = PoolSettings()   # replaced by parse(); None: pools off

    @classmethod
    def parse(cls, opts: Mapping[str, str]) -> "SlurmOptions":
        values: dict[str, Any] = {}
        for key in ("partition", "account", "qos"):
            value = opts.get(key)
            if value is None or value == "":
                continue
            if not SLURM_NAME.match(value):
                raise UsageError(f"slurm backend: option '{key}': {value!r} is not a valid Slurm name "
                                 "(letters, digits and _ . , : + @ = - only)")
            values[key] = value
        for key, hi in (("time_margin", 7 * 24 * 3600), ("rdzv_port", 65535)):
            if key in opts:
                values[key] = int(number("slurm", key, opts[key], lo=0, hi=hi, integer=True))
        for key in ("python", "container_image", "container_mounts"):
            value = opts.get(key)
            if value is None or value == "":
                continue
            values[key] = one_line("slurm", key, value)
        values["pools"] = pool_settings("slurm", opts)
        if opts.get("extra_sbatch"):
            values["extra_sbatch"] = _extra_sbatch(opts["extra_sbatch"])
        if opts.get("env_passthrough"):
            values["env_passthrough"] = _env_passthrough(opts["env_passthrough"])
        return cls(**values)


def _extra_sbatch(raw: str) -> tuple[str, ...]:
    try:
        extra = tuple(shlex.split(raw))
    except ValueError as exc:
        raise UsageError(f"slurm backend: option 'extra_sbatch': {exc}") from None
    for arg in extra:
        if _multiline(arg):
            raise UsageError("slurm backend: option 'extra_sbatch': arguments must be one line")
        if not arg.startswith("-"):
            raise UsageError(f"slurm backend: option 'extra_sbatch': {arg!r} is not a flag "
                             "(write --flag=value)")
    return extra


def _env_passthrough(raw: str) -> str:
    raw = raw.strip()
    if raw.upper() in ("ALL", "NONE"):
        return raw.upper()
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if not ENV_NAME.match(n)]
    if bad or not names:
        raise UsageError(f"slurm backend: option 'env_passthrough': {bad[0] if bad else raw!r} is not "
                         "ALL, NONE or a comma-separated list of variable names")
    return ",".join(names)
