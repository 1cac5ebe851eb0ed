"""Writing checkpoints (collective): sync and async DCP saves, completed by writing the
manifest and then the marker on rank 0; and discarding one."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch.distributed as dist

from workloads.gpt.checkpoint.collective import agree, ckpt_group, dist_on, is_rank0
from workloads.gpt.checkpoint.errors import CheckpointError, one_line
from workloads.gpt.checkpoint.manifest import layout_record, write_manifest
from workloads.gpt.checkpoint.marker import MARKER_FILE, complete_iterations, iteration_dir, write_text_atomic
from workloads.gpt.checkpoint.state_codec import to_dcp


def import_dcp() -> None:
    """Import ``torch.distributed.checkpoint`` now. A launch that saves or loads calls this
    before training, so the import (seconds: DTensor pulls in sympy) happens once, before
    the first timed step, and every step runs with the same modules loaded as in the runs the
    goldens were recorded with."""
    import torch.distributed.checkpoint  # noqa: F401


@dataclass
class SaveRequest:
    """A started save. ``wait()`` blocks until this rank's part is on disk; on rank 0 it then
    writes the manifest and moves the marker (every rank's shards are on disk by then: DCP's
    coordinator writes ``.metadata`` only after all ranks reported their writes)."""

    path: Path
    ckpt_dir: Path
    iteration: int
    layout: dict[str, Any]
    _future: Any = None
    _done: bool = field(default=False)

    def wait(self) -> None:
        if self._done:
            return
        try:
            if self._future is not None:
                try:
                    self._future.result()
                except Exception as e:  # noqa: BLE001 - DCP raises many types; wrap them all
                    raise CheckpointError(f"{self.path}: async save failed: {type(e).__name__}: {one_line(e)}") from e
            if is_rank0():
                write_manifest(self.path, self.iteration, self.layout)
                write_text_atomic(self.ckpt_dir / MARKER_FILE, str(self.iteration))
        finally:
            self._done = True
            if self in _PENDING:
                _PENDING.remove(self)

    @property
    def done(self) -> bool:
        return self._done


_PENDING: list[SaveRequest] = []


def finalize_pending_saves(barrier: bool = True) -> None:
    """Wait for every async save still in flight (and, by default, barrier so that the
    marker is in place on return on every rank)."""
    while _PENDING:
        _PENDING[0].wait()
    if barrier and dist_on():
        dist.barrier(group=ckpt_group())


def save_checkpoint(
    ckpt_dir: str | Path,
    iteration: int,
    state: Mapping[str, Any],
    *,
    async_save: bool = False,
    layout: Mapping[str, Any] | None = None,
) -> SaveRequest:
    """Write ``state`` to ``ckpt_dir/iter_{iteration:07d}`` with DCP (collective).

    Sync: returns after every rank's shards, the manifest and the marker are on disk.
    Async: tensors are staged to host memory before returning (training may modify them);
    the write runs in the background; ``wait()``/``finalize_pending_saves()`` complete it
    (the next save/load does too). ``layout`` adds to the layout record (e.g. ``tp``,
    ``vp``, a config fingerprint); pp/dp are inferred from the optimizer's shard keys.
    """
    import torch.distributed.checkpoint as dcp  # seconds of imports (sympy): only where a save runs

    finalize_pending_saves(barrier=False)
    ckpt_dir = Path(ckpt_dir)
    path = iteration_dir(ckpt_dir, iteration)
    group = ckpt_group()
    flat, _plain = to_dcp(state)
    record = layout_record(list(flat), layout, group)
    error = None
    if is_rank0():
        try:
            if path.exists():
                shutil.rmtree(path)  # a stale or partial save of the same iteration
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            error = f"{path}: cannot create checkpoint directory: {e}"
    agree(error, group)
    request = SaveRequest(path=path, ckpt_dir=ckpt_dir, iteration=int(iteration), layout=record)
    try:
        if async_save:
            response = dcp.async_save(flat, checkpoint_id=str(path), process_group=group, no_dist=group is None)
            request._future = getattr(response, "upload_completion", response)
            _PENDING.append(request)
            return request
        dcp.save(flat, checkpoint_id=str(path), process_group=group, no_dist=group is None)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - wrap whatever DCP raises
        raise CheckpointError(f"{path}: save failed: {type(e).__name__}: {one_line(e)}") from e
    request.wait()
    if group is not None:
        dist.barrier(group=group)
    return request


def discard_iteration(ckpt_dir: str | Path, iteration: int) -> None:
    """Remove ``iter_{iteration}`` (rank 0 removes, others return). Moves the marker back to
    the newest remaining checkpoint if it pointed at the discarded one."""
    finalize_pending_saves(barrier=False)
    if not is_rank0():
        return
    target = iteration_dir(ckpt_dir, iteration)
    shutil.rmtree(target, ignore_errors=True)
    marker = Path(ckpt_dir) / MARKER_FILE
    try:
        pointed = int(marker.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return
    if pointed == int(iteration):
        left = complete_iterations(ckpt_dir)
        if left:
            write_text_atomic(marker, str(left[-1]))
        else:
            marker.unlink(missing_ok=True)
