"""Megatron's checkpoint directory names and the latest-iteration marker (no collectives:
rank 0 writes, the other ranks return)."""
from __future__ import annotations

from pathlib import Path

from runner.results import write_bytes_atomic
from workloads.gpt.checkpoint.collective import is_rank0
from workloads.gpt.checkpoint.errors import CheckpointError

MARKER_FILE = "latest_checkpointed_iteration.txt"
LAYOUT_FILE = "runner_layout.json"


def iteration_dir(ckpt_dir: str | Path, iteration: int | str) -> Path:
    """``ckpt_dir/iter_{iteration:07d}`` (Megatron's name; ``release`` for a release ckpt)."""
    if iteration == "release":
        return Path(ckpt_dir) / "release"
    return Path(ckpt_dir) / f"iter_{int(iteration):07d}"


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def read_latest_iteration(ckpt_dir: str | Path) -> int:
    """The iteration the marker names; ``CheckpointError`` if it is missing or malformed."""
    marker = Path(ckpt_dir) / MARKER_FILE
    try:
        text = marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CheckpointError(f"{marker}: no latest-iteration marker (no checkpoint saved in {ckpt_dir})") from None
    except OSError as e:
        raise CheckpointError(f"{marker}: cannot read marker: {e}") from None
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{marker}: marker holds {text[:40]!r}, not an iteration number") from None


def set_latest_iteration(ckpt_dir: str | Path, iteration: int) -> None:
    """Point the marker at ``iteration`` (atomic rewrite; rank 0 writes, others return)."""
    if not is_rank0():
        return
    target = iteration_dir(ckpt_dir, iteration)
    if not target.is_dir():
        raise CheckpointError(f"{target}: cannot point the marker at a missing checkpoint")
    write_text_atomic(Path(ckpt_dir) / MARKER_FILE, str(int(iteration)))


def complete_iterations(ckpt_dir: str | Path) -> list[int]:
    """The iterations in ``ckpt_dir`` whose save finished (their layout record exists), ascending."""
    return sorted(
        int(p.name[5:]) for p in Path(ckpt_dir).glob("iter_*") if p.name[5:].isdigit() and (p / LAYOUT_FILE).is_file()
    )
