"""``torch_dist`` checkpoints: torch.distributed.checkpoint (DCP) with Megatron's directory
layout, a latest-iteration marker, a layout record and an integrity manifest.

Layout (Megatron's names)::

    ckpt_dir/
      latest_checkpointed_iteration.txt     the iteration number, written last, atomically
      iter_0000050/
        .metadata, __0_0.distcp, ...        DCP: every rank writes its own shards
        runner_layout.json                  layout record + size/sha256 of every file

Why: the marker is only moved once every rank's shards are on disk (and the manifest
written), so a crash mid-save never leaves the marker pointing at half a checkpoint; the
manifest turns a truncated or corrupted file into a clear error naming it, before DCP
reads anything; the layout record turns "resumed with a different pp/dp" into one readable
line instead of a key error deep inside DCP.

``state`` is a (nested) dict of tensors and plain values (int, float, bool, str, None,
lists/tuples of those, dicts, bytes). Plain values are stored as small uint8 tensors (JSON
or raw bytes) rather than pickles, so loading them never unpickles anything. Keys unique
per rank hold per-rank things (``rng.rank3``, optimizer shards); identical keys on every
rank hold replicated things (DCP writes them once).

All functions except ``set_latest_iteration``/``discard_iteration``/``rng_state``/
``set_rng_state`` are collective: every rank calls them in the same order. They run their
collectives on a dedicated gloo group so the async save's background thread never shares
a communicator with training (and works with NCCL training on GPUs).

Importing this package does not import ``torch.distributed.checkpoint``: DCP's DTensor code
imports sympy (seconds per rank, far more on a loaded machine), so only ``save_checkpoint``,
``load_checkpoint`` and ``import_dcp`` (which the training loop calls before its first step
when the launch saves or loads) import it, and a launch that neither saves nor loads never
pays it.

Modules: ``marker`` (directory names, the marker), ``state_codec`` (nested state to DCP's
flat dict), ``collective`` (the checkpoint gloo group, cross-rank agreement on errors),
``manifest`` (layout record, integrity manifest), ``save``, ``load``, ``rng``.
"""
from __future__ import annotations

from workloads.gpt.checkpoint.errors import CheckpointError
from workloads.gpt.checkpoint.load import load_checkpoint
from workloads.gpt.checkpoint.manifest import FORMAT
from workloads.gpt.checkpoint.marker import (
    LAYOUT_FILE,
    MARKER_FILE,
    iteration_dir,
    read_latest_iteration,
    set_latest_iteration,
)
from workloads.gpt.checkpoint.rng import rng_state, set_rng_state
from workloads.gpt.checkpoint.save import (
    SaveRequest,
    discard_iteration,
    finalize_pending_saves,
    import_dcp,
    save_checkpoint,
)

__all__ = [
    "FORMAT",
    "LAYOUT_FILE",
    "MARKER_FILE",
    "CheckpointError",
    "SaveRequest",
    "discard_iteration",
    "finalize_pending_saves",
    "import_dcp",
    "iteration_dir",
    "load_checkpoint",
    "read_latest_iteration",
    "rng_state",
    "save_checkpoint",
    "set_latest_iteration",
    "set_rng_state",
]
