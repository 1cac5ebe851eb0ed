"""Many tensor pairs at once: dtype and shape of every pair, then the pairs that may differ.

Small tensors (up to ``SMALL_BYTES``) of one dtype and rank are packed per side into one
buffer and compared in one call (bytes, or ``torch.isclose`` in ``close`` mode), in batches
of at most ``BATCH_BYTES``; a batch that differs is split in halves until the pairs that
differ are found. Large tensors are compared one by one, without a copy. Tensor attributes
are read in one list comprehension each, dtype properties once per dtype, and no tensor is
reshaped one by one unless torch cannot pack a group otherwise.

**Fast path.** When every pair is small and of one dtype (a typical capture), each rank's
tensors are first packed per side as one nested tensor: one call copies the data and records
every shape in one sizes tensor, so no shape is read per tensor. Only when that finds no
difference does it decide; any difference, or a list that nested tensors cannot hold (fp8
and unsigned dtypes, a torch without them), goes the general way, which names what differs.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

from runner.compare.tensor_mismatch import TensorMismatch
from runner.compare.tensor_values import same_bytes

#: tensors up to this many bytes are compared in one batch per dtype and rank
SMALL_BYTES = 1 << 16
#: at most this many bytes per side are packed for one batch
BATCH_BYTES = 1 << 26
#: a batch that differs is split in halves down to this many pairs
_LEAF = 4
#: try the fast path (nested tensors) first; False: the general way only
NESTED_PACKING = True


def suspects(te: Sequence[Any], ta: Sequence[Any], *, bitwise: bool, rtol: float, atol: float, torch: Any,
             key_of: Callable[[int], str], out: list[TensorMismatch]) -> list[int]:
    """Positions into ``te``/``ta`` of the pairs that may differ (each to be looked at with
    ``tensor_difference``); the pairs whose dtype or shape differs go into ``out`` instead."""
    dtypes, other = [t.dtype for t in te], [t.dtype for t in ta]
    nbytes = [t.nbytes for t in te]
    kinds = set(dtypes)
    by_value = {d for d in kinds if not bitwise and _close_dtype(d)}
    if (NESTED_PACKING and dtypes == other and len(kinds) == 1 and max(nbytes) <= SMALL_BYTES
            and _nested_equal(te, ta, nbytes, dtypes[0] in by_value, rtol, atol, torch)):
        return []
    shapes, ok = _same_dtype_and_shape(dtypes, other, te, ta, key_of, out)
    found: list[int] = []
    groups: dict[tuple[Any, int], list[int]] = {}
    for i in ok:
        if nbytes[i] > SMALL_BYTES:
            if dtypes[i] in by_value or not same_bytes(te[i], ta[i], torch):
                found.append(i)                            # close mode: tensor_difference compares
        else:
            key = (dtypes[i], len(shapes[i]))
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            group.append(i)
    for (dtype, _), idx in groups.items():
        for chunk in _chunks(idx, nbytes):
            found.extend(_differing(te, ta, chunk, dtype in by_value, rtol, atol, torch))
    return found


def _same_dtype_and_shape(de: list[Any], da: list[Any], te: Sequence[Any], ta: Sequence[Any],
                          key_of: Callable[[int], str], out: list[TensorMismatch]) -> tuple[list[Any], Sequence[int]]:
    """The shapes of ``te`` and the positions whose dtype and shape match."""
    se, sa = [t.shape for t in te], [t.shape for t in ta]
    if de == da and se == sa:
        return se, range(len(te))
    ok = []
    for i in range(len(te)):
        if de[i] != da[i]:
            out.append(TensorMismatch(key_of(i), "dtype", expected=str(de[i]), actual=str(da[i])))
        elif se[i] != sa[i]:
            out.append(TensorMismatch(key_of(i), "shape", expected=list(se[i]), actual=list(sa[i])))
        else:
            ok.append(i)
    return se, ok


def _close_dtype(dtype: Any) -> bool:
    """The dtype is compared by value in ``close`` mode (as ``tensor_values.close_applies``)."""
    return bool(dtype.is_floating_point or dtype.is_complex) and dtype.itemsize > 1


def _chunks(idx: list[int], nbytes: list[int]) -> list[list[int]]:
    if sum(nbytes[i] for i in idx) <= BATCH_BYTES:
        return [idx]
    chunks: list[list[int]] = [[]]
    size = 0
    for i in idx:
        if size + nbytes[i] > BATCH_BYTES and chunks[-1]:
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += nbytes[i]
    return chunks


def _differing(te: Sequence[Any], ta: Sequence[Any], idx: list[int], close: bool, rtol: float, atol: float,
               torch: Any) -> list[int]:
    """The positions in ``idx`` whose pairs may differ: none when the batch is equal, else the
    halves searched in turn (a few differing pairs among thousands cost a few dozen calls)."""
    if _batch_equal([te[i] for i in idx], [ta[i] for i in idx], close, rtol, atol, torch):
        return []
    if len(idx) <= _LEAF:
        return idx                       # tensor_difference looks at each
    half = len(idx) // 2
    return (_differing(te, ta, idx[:half], close, rtol, atol, torch)
            + _differing(te, ta, idx[half:], close, rtol, atol, torch))


def _batch_equal(es: list[Any], as_: list[Any], close: bool, rtol: float, atol: float, torch: Any) -> bool:
    """Two lists of tensors (pairwise of one dtype and shape, all of one rank) packed and
    compared in one call; False when they cannot be packed (e.g. on different devices), so
    each pair is looked at."""
    try:
        ce, ca = _flat(es, torch), _flat(as_, torch)
    except RuntimeError:
        return False
    return _buffers_equal(ce, ca, close, rtol, atol, torch)


def _buffers_equal(ce: Any, ca: Any, close: bool, rtol: float, atol: float, torch: Any) -> bool:
    if close:
        return bool(torch.isclose(ce, ca, rtol=rtol, atol=atol, equal_nan=True).all())
    return same_bytes(ce, ca, torch)


def _flat(ts: list[Any], torch: Any) -> Any:
    """The data of tensors of one dtype and rank, one after the other, as one buffer."""
    try:
        return torch.cat(ts)           # 1-D tensors, or equal trailing dims
    except RuntimeError:
        pass
    packed = _pack(ts, torch)          # any shapes of one rank, scalars too
    if packed is not None:
        return packed[0]
    return torch.cat([t.reshape(-1) for t in ts])    # a dtype nested tensors do not hold


# -- the fast path ------------------------------------------------------------------------------
def _nested_equal(te: Sequence[Any], ta: Sequence[Any], nbytes: list[int], close: bool, rtol: float, atol: float,
                  torch: Any) -> bool:
    """Every shape and every byte (``close``: value) equal, each rank's tensors packed per
    side as one nested tensor; False when anything differs, a side holds more than
    ``BATCH_BYTES`` or cannot be packed (the general way then decides)."""
    size = sum(nbytes)
    if size > BATCH_BYTES:
        return False
    ranks = [t.dim() for t in te]
    kinds = set(ranks)
    if len(kinds) == 1:
        return _packed_equal(_as_list(te), _as_list(ta), size, close, rtol, atol, torch)
    for rank in kinds:
        idx = [i for i, r in enumerate(ranks) if r == rank]
        if not _packed_equal([te[i] for i in idx], [ta[i] for i in idx], sum(nbytes[i] for i in idx), close,
                             rtol, atol, torch):
            return False
    return True


def _as_list(ts: Sequence[Any]) -> list[Any]:
    return ts if isinstance(ts, list) else list(ts)


def _packed_equal(es: list[Any], as_: list[Any], size: int, close: bool, rtol: float, atol: float,
                  torch: Any) -> bool:
    packed_e = _pack(es, torch)
    packed_a = _pack(as_, torch) if packed_e is not None else None
    if packed_e is None or packed_a is None:
        return False
    (ve, sizes_e), (va, sizes_a) = packed_e, packed_a
    if ve.numel() * ve.element_size() != size or not torch.equal(sizes_e, sizes_a):
        return False                   # other shapes, or a buffer that is not exactly the data
    return _buffers_equal(ve, va, close, rtol, atol, torch)


def _pack(ts: list[Any], torch: Any) -> tuple[Any, Any] | None:
    """(the data as one flat buffer, the shapes as one [n, rank] tensor), or None.

    Calls what ``torch.nested.as_nested_tensor(list)`` calls, without its Python check that
    every item is a tensor (they are: the signature collected them by ``isinstance``)."""
    build = getattr(torch, "_nested_tensor_from_tensor_list", None)
    if build is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors")
            nested = build(ts)
        return nested.values(), nested._nested_tensor_size()
    except (RuntimeError, NotImplementedError, AttributeError, TypeError, ValueError):
        return None
