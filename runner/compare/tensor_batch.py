"""Many tensor pairs at once: dtype and shape of every pair, then the pairs that may differ.

The small tensors of one dtype are concatenated per side and compared in one call (bytes, or
``torch.isclose`` in ``close`` mode), in batches of at most ``BATCH_BYTES``; only a batch that
differs is looked at pair by pair. Large tensors are compared one by one, without a copy.
Tensor attributes are read in one list comprehension each, dtype properties once per dtype.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from runner.compare.tensor_mismatch import TensorMismatch
from runner.compare.tensor_values import same_bytes

#: tensors up to this many bytes are compared in one batch per dtype
SMALL_BYTES = 1 << 16
#: at most this many bytes per side are concatenated for one batch
BATCH_BYTES = 1 << 26
#: a batch that differs is split in halves down to this many pairs
_LEAF = 4


def suspects(te: Sequence[Any], ta: Sequence[Any], *, bitwise: bool, rtol: float, atol: float, torch: Any,
             key_of: Callable[[int], str], out: list[TensorMismatch]) -> list[int]:
    """Positions into ``te``/``ta`` of the pairs that may differ (each to be looked at with
    ``tensor_difference``); the pairs whose dtype or shape differs go into ``out`` instead."""
    dtypes, ok = _same_dtype_and_shape(te, ta, key_of, out)
    nbytes = [t.nbytes for t in te]
    kinds = set(dtypes)
    by_value = {d for d in kinds if not bitwise and _close_dtype(d)}
    found: list[int] = []
    small: dict[Any, Sequence[int]] = {}
    if ok is None and len(kinds) == 1 and max(nbytes) <= SMALL_BYTES:   # the common case: no loop per pair
        small = {dtypes[0]: range(len(te))}
    else:
        groups: dict[Any, list[int]] = {}
        for i in range(len(te)) if ok is None else ok:
            if nbytes[i] > SMALL_BYTES:
                if dtypes[i] in by_value or not same_bytes(te[i], ta[i], torch):
                    found.append(i)                        # close mode: tensor_difference compares
            else:
                group = groups.get(dtypes[i])
                if group is None:
                    group = groups[dtypes[i]] = []
                group.append(i)
        small = dict(groups)                               # (typed as read-only sequences)
    for dtype, idx in small.items():
        for chunk in _chunks(idx, nbytes):
            found.extend(_differing(te, ta, chunk, dtype in by_value, rtol, atol, torch))
    return found


def _same_dtype_and_shape(te: Sequence[Any], ta: Sequence[Any], key_of: Callable[[int], str],
                          out: list[TensorMismatch]) -> tuple[list[Any], list[int] | None]:
    """The dtypes of ``te`` and the positions whose dtype and shape match (None: all of them)."""
    de, da = [t.dtype for t in te], [t.dtype for t in ta]
    se, sa = [t.shape for t in te], [t.shape for t in ta]
    if de == da and se == sa:
        return de, None
    ok = []
    for i in range(len(te)):
        if de[i] != da[i]:
            out.append(TensorMismatch(key_of(i), "dtype", expected=str(de[i]), actual=str(da[i])))
        elif se[i] != sa[i]:
            out.append(TensorMismatch(key_of(i), "shape", expected=list(se[i]), actual=list(sa[i])))
        else:
            ok.append(i)
    return de, ok


def _close_dtype(dtype: Any) -> bool:
    """The dtype is compared by value in ``close`` mode (as ``tensor_values.close_applies``)."""
    return bool(dtype.is_floating_point or dtype.is_complex) and dtype.itemsize > 1


def _chunks(idx: Sequence[int], nbytes: list[int]) -> list[Sequence[int]]:
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
    return list(chunks)


def _differing(te: Sequence[Any], ta: Sequence[Any], idx: Sequence[int], close: bool, rtol: float, atol: float,
               torch: Any) -> Sequence[int]:
    """The positions in ``idx`` whose pairs may differ: none when the batch is equal, else the
    halves searched in turn (a few differing pairs among thousands cost a few dozen calls)."""
    whole = isinstance(idx, range) and len(idx) == len(te)    # every pair: no lists to build
    es = te if whole else [te[i] for i in idx]
    as_ = ta if whole else [ta[i] for i in idx]
    if _batch_equal(es, as_, close, rtol, atol, torch):
        return ()
    if len(idx) <= _LEAF:
        return idx                       # tensor_difference looks at each
    half = len(idx) // 2
    return [*_differing(te, ta, idx[:half], close, rtol, atol, torch),
            *_differing(te, ta, idx[half:], close, rtol, atol, torch)]


def _batch_equal(es: Sequence[Any], as_: Sequence[Any], close: bool, rtol: float, atol: float, torch: Any) -> bool:
    """The two lists (same dtypes and shapes) concatenated and compared in one call; False
    when they cannot be concatenated (e.g. on different devices), so each pair is looked at."""
    try:
        ce, ca = _cat(es, torch), _cat(as_, torch)
    except RuntimeError:
        return False
    if close:
        return bool(torch.isclose(ce, ca, rtol=rtol, atol=atol, equal_nan=True).all())
    return same_bytes(ce, ca, torch)


def _cat(ts: Sequence[Any], torch: Any) -> Any:
    try:
        return torch.cat(ts)           # 1-D tensors (or matching trailing dims): no reshape per tensor
    except RuntimeError:               # scalars, mixed ranks: flatten each first
        return torch.cat([t.reshape(-1) for t in ts])
