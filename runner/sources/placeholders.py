"""Megatron's ``${NAME}`` placeholders in command lines (checkpoint, data, TensorBoard paths),
filled per launch in the rank, where the launch's own results dir is known."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: the names the runner fills: what Megatron's harness exports
KNOWN = ("TENSORBOARD_PATH", "CHECKPOINT_SAVE_PATH", "CHECKPOINT_LOAD_PATH", "DATA_PATH", "DATA_CACHE_PATH")


def names_in(values: Sequence[Any]) -> list[str]:
    return [m.group(1) for v in values for m in PLACEHOLDER.finditer(str(v))]


def fill(values: Sequence[Any], mapping: Mapping[str, str]) -> list[str]:
    """Every ``${NAME}`` replaced; a name without a value is a ValueError naming it."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in mapping:
            raise ValueError(f"placeholder ${{{name}}} has no value here (known: {', '.join(sorted(mapping))})")
        return str(mapping[name])

    return [PLACEHOLDER.sub(repl, str(v)) for v in values]


def launch_paths(ctx: Any, *, load_from: str | None = None, frozen: str | None = None,
                 data_path: str | None = None) -> dict[str, str]:
    """The per-launch values: TensorBoard and checkpoint folders inside this launch's results
    dir; run 2 of a resume test loads run 1's checkpoints; a frozen-resume loads ``frozen``."""
    rdir: Path = ctx.results_dir
    save = rdir / "checkpoints"
    if load_from:
        load = ctx.sibling_dir(load_from) / "checkpoints"
    elif frozen:
        load = Path(frozen)
    else:
        load = save
    out = {"TENSORBOARD_PATH": str(rdir / "tensorboard"), "CHECKPOINT_SAVE_PATH": str(save),
           "CHECKPOINT_LOAD_PATH": str(load), "DATA_CACHE_PATH": str(rdir / "data-cache")}
    if data_path:
        out["DATA_PATH"] = data_path
    return out
