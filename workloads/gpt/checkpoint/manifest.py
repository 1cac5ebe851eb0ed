"""The layout record and integrity manifest of a checkpoint (``runner_layout.json``): the
parallel layout it was written with, and the size and sha256 of every file, so a resumed run
with another layout, or a truncated or corrupted file, fails with one readable line before
DCP reads anything."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch.distributed as dist

from workloads.gpt.checkpoint.collective import all_gather, dist_on
from workloads.gpt.checkpoint.errors import CheckpointError
from workloads.gpt.checkpoint.marker import LAYOUT_FILE, write_text_atomic

FORMAT = "torch_dist"
_LAYOUT_KEY_RE = re.compile(r"(?:^|[./])pp(\d+)\.dp(\d+)(?:[./]|$)")
_SHAPE_KEYS = ("tp", "pp", "vp", "dp", "world_size")


def layout_record(keys: list[str], layout: Mapping[str, Any] | None, group: Any) -> dict[str, Any]:
    """World size, and pp/dp inferred from the ``.pp{p}.dp{d}.`` keys of every rank (the
    optimizer's shard keys), overridden/extended by an explicit ``layout`` (collective)."""
    local = sorted({(int(m.group(1)), int(m.group(2))) for k in keys for m in [_LAYOUT_KEY_RE.search(k)] if m})
    record: dict[str, Any] = {"world_size": dist.get_world_size() if dist_on() else 1}
    pairs = {tuple(p) for per_rank in all_gather(local, group) for p in per_rank}
    if pairs:
        record["pp"] = max(p for p, _ in pairs) + 1
        record["dp"] = max(d for _, d in pairs) + 1
    if layout:
        record.update({str(k): v for k, v in layout.items()})
    normalized: dict[str, Any] = json.loads(json.dumps(record, sort_keys=True, default=str))
    return normalized


def _describe_layout(rec: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={rec[k]}" for k in _SHAPE_KEYS if k in rec) or "an unknown layout"


def layout_mismatch(path: Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """One line saying how the saved layout differs from this run's (``None``: it does not)."""
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if not diff:
        return None
    if set(_SHAPE_KEYS) & set(diff):
        return f"{path}: checkpoint was written with {_describe_layout(saved)}, this run has {_describe_layout(current)}"
    k = diff[0]
    return f"{path}: checkpoint layout record differs in {k!r}: saved {saved.get(k)!r}, this run {current.get(k)!r}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(path: Path, iteration: int, layout: Mapping[str, Any]) -> None:
    """Record the layout and every file's size and sha256 in ``path/runner_layout.json``."""
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(path.iterdir())
        if p.is_file() and p.name != LAYOUT_FILE and not p.name.startswith(f".{LAYOUT_FILE}")
    }
    if ".metadata" not in files:
        raise CheckpointError(f"{path}: DCP wrote no .metadata; the save did not complete")
    record = {"format": FORMAT, "iteration": iteration, "layout": dict(layout), "files": files}
    write_text_atomic(path / LAYOUT_FILE, json.dumps(record, indent=1, sort_keys=True))


def verify_manifest(path: Path, verify_hashes: bool) -> tuple[str | None, dict[str, Any]]:
    """(error, layout) after checking every file the manifest lists (rank 0 runs this)."""
    manifest = path / LAYOUT_FILE
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
        files, layout = record["files"], record["layout"]
    except FileNotFoundError:
        return f"{manifest}: missing; the checkpoint in {path} is incomplete (save did not finish)", {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{manifest}: unreadable layout record ({type(e).__name__}: {e})", {}
    for name, info in sorted(files.items()):
        f = path / name
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            return f"{f}: checkpoint file is missing", layout
        if size != info["size"]:
            return f"{f}: truncated or overwritten checkpoint file ({size} bytes, {info['size']} were written)", layout
        if verify_hashes and _sha256(f) != info["sha256"]:
            return f"{f}: corrupt checkpoint file (sha256 differs from the one recorded at save time)", layout
    return None, layout
