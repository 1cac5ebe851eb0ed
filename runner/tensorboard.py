"""Reading scalar metrics from TensorBoard event files (needs the 'tensorboard' package)."""
from __future__ import annotations

from pathlib import Path

from runner.errors import UsageError


def read_scalars(directory: Path) -> dict[str, dict[int, float]]:
    """metric -> step -> value over every event file under ``directory`` (first writer wins)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise UsageError("metrics: tensorboard needs the 'tensorboard' package "
                         "(pip install 'dist-spec-runner[tensorboard]')") from None
    out: dict[str, dict[int, float]] = {}
    if not directory.is_dir():
        return out
    runs = sorted({p.parent for p in directory.rglob("events.out.tfevents.*")})
    for run in runs:
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            series = out.setdefault(tag, {})
            for ev in acc.Scalars(tag):
                series.setdefault(int(ev.step), float(ev.value))
    return out
