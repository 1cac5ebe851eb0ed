"""Loading checkpoints (collective): marker, manifest, layout, keys, shapes and dtypes are
checked, and every rank raises the same one-line ``CheckpointError``, before DCP loads."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from workloads.gpt.checkpoint.collective import agree, ckpt_group, is_rank0
from workloads.gpt.checkpoint.errors import CheckpointError, one_line
from workloads.gpt.checkpoint.manifest import layout_mismatch, layout_record, verify_manifest
from workloads.gpt.checkpoint.marker import MARKER_FILE, iteration_dir, read_latest_iteration
from workloads.gpt.checkpoint.save import finalize_pending_saves
from workloads.gpt.checkpoint.state_codec import decode_plain, set_nested, to_dcp


def _check_keys(path: Path, flat: Mapping[str, Any], plain: set[str], metadata: Any) -> tuple[str | None, dict[str, torch.Tensor]]:
    """Compare this rank's keys with the checkpoint's metadata; allocate plain-value buffers."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = metadata.state_dict_metadata
    buffers: dict[str, torch.Tensor] = {}
    for key, value in flat.items():
        if key not in md:
            return f"{path}: key {key!r} is not in the checkpoint ({len(md)} keys there)", buffers
        entry = md[key]
        if not isinstance(entry, TensorStorageMetadata):
            return f"{path}: key {key!r} is not a tensor in the checkpoint", buffers
        saved_shape, saved_dtype = tuple(entry.size), entry.properties.dtype
        if key in plain:
            if saved_dtype != torch.uint8 or len(saved_shape) != 1:
                return f"{path}: key {key!r} holds a tensor {list(saved_shape)} {saved_dtype}, this run expects a plain value", buffers
            buffers[key] = torch.empty(saved_shape, dtype=torch.uint8)
            continue
        if saved_shape != tuple(value.shape) or saved_dtype != value.dtype:
            return (
                f"{path}: key {key!r} has shape {list(saved_shape)} {saved_dtype} in the checkpoint, "
                f"this run expects {list(value.shape)} {value.dtype}"
            ), buffers
    return None, buffers


def load_checkpoint(
    ckpt_dir: str | Path,
    state: dict[str, Any],
    *,
    iteration: int | None = None,
    layout: Mapping[str, Any] | None = None,
    verify_hashes: bool = True,
) -> int:
    """Load the marker's (or ``iteration``'s) checkpoint into ``state`` in place; return the
    iteration (collective). Tensors are copied into the given tensors, plain values replaced.
    Every problem (no marker, missing iteration, missing/truncated/corrupt file, layout,
    key, shape or dtype mismatch, any DCP failure) is a one-line ``CheckpointError`` naming
    the path, raised on every rank."""
    import torch.distributed.checkpoint as dcp  # seconds of imports (sympy): only where a load runs

    finalize_pending_saves(barrier=False)
    ckpt_dir = Path(ckpt_dir)
    group = ckpt_group()
    error: str | None = None
    it = -1
    try:
        it = read_latest_iteration(ckpt_dir) if iteration is None else int(iteration)
    except CheckpointError as e:
        error = str(e)
    path = iteration_dir(ckpt_dir, it) if it >= 0 else ckpt_dir
    if error is None and not path.is_dir():
        error = f"{path}: checkpoint for iteration {it} is missing" + (
            f" (named by {ckpt_dir / MARKER_FILE})" if iteration is None else ""
        )
    agree(error, group)

    flat, plain = to_dcp(state)
    current = layout_record(list(flat), layout, group)
    error = None
    if is_rank0():
        error, saved_layout = verify_manifest(path, verify_hashes)
        if error is None:
            error = layout_mismatch(path, saved_layout, current)
    agree(error, group)

    buffers: dict[str, torch.Tensor] = {}
    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
        error, buffers = _check_keys(path, flat, plain, metadata)
    except Exception as e:  # noqa: BLE001 - unreadable metadata, whatever DCP raises
        error = f"{path}: unreadable checkpoint metadata: {type(e).__name__}: {one_line(e)}"
    agree(error, group)

    to_load = {k: (buffers[k] if k in plain else v) for k, v in flat.items()}
    try:
        dcp.load(to_load, checkpoint_id=str(path), process_group=group, no_dist=group is None)
        error = None
    except Exception as e:  # noqa: BLE001 - DCP raises CheckpointException and others; wrap all
        error = f"{path}: load failed: {type(e).__name__}: {one_line(e)}"
    agree(error, group)
    for key in plain:
        set_nested(state, key, decode_plain(key, to_load[key]))
    return it
