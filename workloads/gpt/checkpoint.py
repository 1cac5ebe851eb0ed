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
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from runner.results import write_bytes_atomic

MARKER_FILE = "latest_checkpointed_iteration.txt"
LAYOUT_FILE = "runner_layout.json"
FORMAT = "torch_dist"
_KEY_SEP = "/"  # joins nested dict keys (keys themselves may contain dots)
_PLAIN_JSON, _PLAIN_BYTES = ord("J"), ord("B")
_LAYOUT_KEY_RE = re.compile(r"(?:^|[./])pp(\d+)\.dp(\d+)(?:[./]|$)")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or loaded; the message is one line naming the path."""


# --------------------------------------------------------------------------------------------
# paths and the marker
# --------------------------------------------------------------------------------------------
def iteration_dir(ckpt_dir: str | Path, iteration: int | str) -> Path:
    """``ckpt_dir/iter_{iteration:07d}`` (Megatron's name; ``release`` for a release ckpt)."""
    if iteration == "release":
        return Path(ckpt_dir) / "release"
    return Path(ckpt_dir) / f"iter_{int(iteration):07d}"


def _write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


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
    if not _is_rank0():
        return
    target = iteration_dir(ckpt_dir, iteration)
    if not target.is_dir():
        raise CheckpointError(f"{target}: cannot point the marker at a missing checkpoint")
    _write_text_atomic(Path(ckpt_dir) / MARKER_FILE, str(int(iteration)))


def discard_iteration(ckpt_dir: str | Path, iteration: int) -> None:
    """Remove ``iter_{iteration}`` (rank 0 removes, others return). Moves the marker back to
    the newest remaining checkpoint if it pointed at the discarded one."""
    finalize_pending_saves(barrier=False)
    if not _is_rank0():
        return
    target = iteration_dir(ckpt_dir, iteration)
    shutil.rmtree(target, ignore_errors=True)
    marker = Path(ckpt_dir) / MARKER_FILE
    try:
        pointed = int(marker.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return
    if pointed == int(iteration):
        left = sorted(
            int(p.name[5:]) for p in Path(ckpt_dir).glob("iter_*") if p.name[5:].isdigit() and (p / LAYOUT_FILE).is_file()
        )
        if left:
            _write_text_atomic(marker, str(left[-1]))
        else:
            marker.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# state flattening and plain-value encoding
# --------------------------------------------------------------------------------------------
def _flatten(state: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in state.items():
        if not isinstance(k, str):
            raise CheckpointError(f"state key {k!r} under {prefix or '<root>'} is not a string")
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            if not v:
                yield key, {}
            else:
                yield from _flatten(v, key + _KEY_SEP)
        else:
            yield key, v


def _encode_plain(key: str, value: Any) -> torch.Tensor:
    if isinstance(value, (bytes, bytearray, memoryview)):
        payload = bytes([_PLAIN_BYTES]) + bytes(value)
    else:
        try:
            payload = bytes([_PLAIN_JSON]) + json.dumps(value, allow_nan=True).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"state[{key!r}]: {type(value).__name__} cannot be checkpointed ({e})") from None
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8)


def _decode_plain(key: str, t: torch.Tensor) -> Any:
    raw = bytes(t.cpu().numpy().tobytes())
    if not raw:
        raise CheckpointError(f"state[{key!r}]: empty plain-value record")
    if raw[0] == _PLAIN_BYTES:
        return raw[1:]
    if raw[0] == _PLAIN_JSON:
        return json.loads(raw[1:].decode("utf-8"))
    raise CheckpointError(f"state[{key!r}]: unknown plain-value encoding {raw[0]}")


def _to_dcp(state: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Flat DCP dict (tensors as given, plain values encoded) and the set of plain keys."""
    flat: dict[str, Any] = {}
    plain: set[str] = set()
    for key, v in _flatten(state):
        if isinstance(v, torch.Tensor):
            flat[key] = v
        else:
            flat[key] = _encode_plain(key, v)
            plain.add(key)
    return flat, plain


def _set_nested(state: dict[str, Any], key: str, value: Any) -> None:
    # walk the caller's own structure (keys may contain the separator only at nesting points)
    node: Any = state
    parts = key.split(_KEY_SEP)
    i = 0
    while i < len(parts) - 1:
        # find the longest prefix of the remaining parts that is a key of node
        for j in range(len(parts) - 1, i, -1):
            candidate = _KEY_SEP.join(parts[i:j])
            if isinstance(node, Mapping) and candidate in node and isinstance(node[candidate], Mapping):
                node = node[candidate]
                i = j
                break
        else:
            break
    node[_KEY_SEP.join(parts[i:])] = value


# --------------------------------------------------------------------------------------------
# process group, layout record, manifest
# --------------------------------------------------------------------------------------------
_GROUP_CACHE: list[Any] = []  # [default group object, its checkpoint gloo group]


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _ckpt_group() -> Any:
    """A gloo group over all ranks, created once per default process group (collective)."""
    if not _dist_on():
        return None
    default = dist.group.WORLD
    if not _GROUP_CACHE or _GROUP_CACHE[0] is not default:
        # a new default group (first use, or after destroy/re-init): make a new gloo group
        _GROUP_CACHE[:] = [default, dist.new_group(backend="gloo")]
    return _GROUP_CACHE[1]


def _all_gather(obj: Any, group: Any) -> list[Any]:
    if group is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def _agree(error: str | None, group: Any) -> None:
    """Raise the same CheckpointError on every rank if any rank found one."""
    errors = [e for e in _all_gather(error, group) if e]
    if errors:
        raise CheckpointError(errors[0])


def _layout_record(keys: list[str], layout: Mapping[str, Any] | None, group: Any) -> dict[str, Any]:
    """World size, and pp/dp inferred from the ``.pp{p}.dp{d}.`` keys of every rank (the
    optimizer's shard keys), overridden/extended by an explicit ``layout``."""
    local = sorted({(int(m.group(1)), int(m.group(2))) for k in keys for m in [_LAYOUT_KEY_RE.search(k)] if m})
    record: dict[str, Any] = {"world_size": dist.get_world_size() if _dist_on() else 1}
    pairs = {tuple(p) for per_rank in _all_gather(local, group) for p in per_rank}
    if pairs:
        record["pp"] = max(p for p, _ in pairs) + 1
        record["dp"] = max(d for _, d in pairs) + 1
    if layout:
        record.update({str(k): v for k, v in layout.items()})
    return json.loads(json.dumps(record, sort_keys=True, default=str))


def _describe_layout(rec: Mapping[str, Any]) -> str:
    keys = [k for k in ("tp", "pp", "vp", "dp", "world_size") if k in rec]
    return " ".join(f"{k}={rec[k]}" for k in keys) or "an unknown layout"


def _layout_mismatch(path: Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if not diff:
        return None
    shape_keys = {"tp", "pp", "vp", "dp", "world_size"}
    if shape_keys & set(diff):
        return f"{path}: checkpoint was written with {_describe_layout(saved)}, this run has {_describe_layout(current)}"
    k = diff[0]
    return f"{path}: checkpoint layout record differs in {k!r}: saved {saved.get(k)!r}, this run {current.get(k)!r}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(path: Path, iteration: int, layout: Mapping[str, Any]) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(path.iterdir())
        if p.is_file() and p.name != LAYOUT_FILE and not p.name.startswith(f".{LAYOUT_FILE}")
    }
    if ".metadata" not in files:
        raise CheckpointError(f"{path}: DCP wrote no .metadata; the save did not complete")
    record = {"format": FORMAT, "iteration": iteration, "layout": dict(layout), "files": files}
    _write_text_atomic(path / LAYOUT_FILE, json.dumps(record, indent=1, sort_keys=True))


def _verify_manifest(path: Path, verify_hashes: bool) -> tuple[str | None, dict[str, Any]]:
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


# --------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------
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
                    raise CheckpointError(f"{self.path}: async save failed: {type(e).__name__}: {_one_line(e)}") from e
            if _is_rank0():
                _write_manifest(self.path, self.iteration, self.layout)
                _write_text_atomic(self.ckpt_dir / MARKER_FILE, str(self.iteration))
        finally:
            self._done = True
            if self in _PENDING:
                _PENDING.remove(self)

    @property
    def done(self) -> bool:
        return self._done


_PENDING: list[SaveRequest] = []


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def finalize_pending_saves(barrier: bool = True) -> None:
    """Wait for every async save still in flight (and, by default, barrier so that the
    marker is in place on return on every rank)."""
    while _PENDING:
        _PENDING[0].wait()
    if barrier and _dist_on():
        dist.barrier(group=_ckpt_group())


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
    finalize_pending_saves(barrier=False)
    ckpt_dir = Path(ckpt_dir)
    path = iteration_dir(ckpt_dir, iteration)
    group = _ckpt_group()
    flat, _plain = _to_dcp(state)
    record = _layout_record(list(flat), layout, group)
    error = None
    if _is_rank0():
        try:
            if path.exists():
                shutil.rmtree(path)  # a stale or partial save of the same iteration
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            error = f"{path}: cannot create checkpoint directory: {e}"
    _agree(error, group)
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
        raise CheckpointError(f"{path}: save failed: {type(e).__name__}: {_one_line(e)}") from e
    request.wait()
    if group is not None:
        dist.barrier(group=group)
    return request


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------
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
    finalize_pending_saves(barrier=False)
    ckpt_dir = Path(ckpt_dir)
    group = _ckpt_group()
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
    _agree(error, group)

    flat, plain = _to_dcp(state)
    current = _layout_record(list(flat), layout, group)
    error, saved_layout = (None, {})
    if _is_rank0():
        error, saved_layout = _verify_manifest(path, verify_hashes)
        if error is None:
            error = _layout_mismatch(path, saved_layout, current)
    _agree(error, group)

    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
        error, buffers = _check_keys(path, flat, plain, metadata)
    except Exception as e:  # noqa: BLE001 - unreadable metadata, whatever DCP raises
        error, buffers = f"{path}: unreadable checkpoint metadata: {type(e).__name__}: {_one_line(e)}", {}
    _agree(error, group)

    to_load = {k: (buffers[k] if k in plain else v) for k, v in flat.items()}
    try:
        dcp.load(to_load, checkpoint_id=str(path), process_group=group, no_dist=group is None)
        error = None
    except Exception as e:  # noqa: BLE001 - DCP raises CheckpointException and others; wrap all
        error = f"{path}: load failed: {type(e).__name__}: {_one_line(e)}"
    _agree(error, group)
    for key in plain:
        _set_nested(state, key, _decode_plain(key, to_load[key]))
    return it


# --------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The calling rank's RNG states (python ``random``, numpy, torch CPU, every CUDA
    device) as tensors and JSON-able values DCP can save."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    cuda = (
        torch.stack(torch.cuda.get_rng_state_all())
        if torch.cuda.is_available() and torch.cuda.device_count() > 0
        else torch.zeros((0, 0), dtype=torch.uint8)
    )
    return {
        "python": [version, list(internal), gauss],
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
        "numpy_meta": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch_cpu": torch.get_rng_state(),
        "cuda": cuda,
    }


def set_rng_state(d: Mapping[str, Any]) -> None:
    """Restore what ``rng_state()`` returned."""
    version, internal, gauss = d["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    np_name, np_pos, np_has_gauss, np_gauss = d["numpy_meta"]
    keys = d["numpy_keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((str(np_name), keys, int(np_pos), int(np_has_gauss), float(np_gauss)))
    torch.set_rng_state(d["torch_cpu"].cpu().to(torch.uint8))
    cuda = d["cuda"]
    if cuda.numel():
        if not torch.cuda.is_available() or torch.cuda.device_count() != cuda.shape[0]:
            raise CheckpointError(
                f"RNG state holds {cuda.shape[0]} CUDA device states, this process sees "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
            )
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda])
