"""Megatron's indexed dataset format: reading and writing an ``.idx``/``.bin`` pair, the
files ``tools/preprocess_data.py`` of Megatron-LM writes.

Index file layout (MMIDIDX, version 1, little endian), as Megatron's ``_IndexWriter``:

    b"MMIDIDX\\x00\\x00"   9 bytes magic
    uint64               version (1)
    uint8                dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
                         6 float64, 7 float32, 8 uint16)
    uint64               sequence count N
    uint64               document-index count D (= documents + 1)
    int32[N]             sequence lengths (tokens)
    int64[N]             sequence byte offsets into the .bin file
    int64[D]             document index: sequence index where each document starts,
                         starting at 0 and ending at N

The ``.bin`` file is the concatenation of every sequence's tokens in that dtype.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from runner.results import write_bytes_atomic

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, doc-index count

DTYPE_CODES: dict[int, type] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class DataError(ValueError):
    """A dataset file is missing, truncated or not in the indexed format (names the file)."""


def index_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.idx")


def data_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.bin")


def encode_indexed(documents: Iterable[Sequence[int] | np.ndarray], dtype: Any) -> tuple[bytes, bytes]:
    """Return (idx bytes, bin bytes) for ``documents`` (one sequence per document)."""
    np_dtype = np.dtype(dtype)
    if np_dtype not in _CODE_OF:
        raise ValueError(f"unsupported token dtype {np_dtype}; use one of {sorted(str(np.dtype(d)) for d in DTYPE_CODES.values())}")
    arrays: list[np.ndarray] = []
    for doc in documents:
        arr = np.asarray(doc)
        if arr.ndim != 1:
            raise ValueError(f"document {len(arrays)} is not 1-D (shape {arr.shape})")
        if arr.size and np.issubdtype(arr.dtype, np.integer) and np.issubdtype(np_dtype, np.integer):
            info = np.iinfo(np_dtype)
            if int(arr.min()) < info.min or int(arr.max()) > info.max:
                raise ValueError(f"document {len(arrays)} has token ids outside {np_dtype}")
        arrays.append(arr.astype(np_dtype, copy=False))
    sizes = np.array([a.size for a in arrays], dtype=np.int32)
    pointers = np.zeros(len(arrays), dtype=np.int64)
    if len(arrays) > 1:
        pointers[1:] = np.cumsum(sizes[:-1].astype(np.int64)) * np_dtype.itemsize
    doc_idx = np.arange(len(arrays) + 1, dtype=np.int64)
    header = _HEADER.pack(INDEX_MAGIC, INDEX_VERSION, _CODE_OF[np_dtype], len(arrays), len(doc_idx))
    idx = header + sizes.tobytes(order="C") + pointers.tobytes(order="C") + doc_idx.tobytes(order="C")
    body = b"".join(a.tobytes(order="C") for a in arrays)
    return idx, body


def write_indexed_dataset(
    prefix: str | Path, documents: Iterable[Sequence[int] | np.ndarray], dtype: Any = np.int32
) -> None:
    """Write ``prefix.idx`` + ``prefix.bin`` in Megatron's MMIDIDX v1 layout.

    Each document becomes one sequence (Megatron's layout without sentence splitting).
    Both files are written under temporary names and renamed into place (``.bin`` first),
    so a reader never sees a half-written file.
    """
    idx, body = encode_indexed(documents, dtype)
    write_bytes_atomic(data_path(prefix), body)
    write_bytes_atomic(index_path(prefix), idx)


class IndexedDataset:
    """Read-only view of an ``.idx``/``.bin`` pair (memory-mapped).

    ``len(ds)`` is the number of sequences, which is Megatron's ``len(IndexedDataset)``; for
    data written by ``write_indexed_dataset`` (and Megatron's preprocessing without
    sentence splitting) every document is one sequence, so it is also the document count.
    """

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(prefix)
        idx_file, bin_file = index_path(prefix), data_path(prefix)
        for f in (idx_file, bin_file):
            if not f.is_file():
                raise DataError(f"{f}: indexed dataset file is missing")
        raw = idx_file.read_bytes()
        if len(raw) < _HEADER.size:
            raise DataError(f"{idx_file}: truncated index ({len(raw)} bytes, header needs {_HEADER.size})")
        magic, version, code, n_seq, n_doc = _HEADER.unpack_from(raw, 0)
        if magic != INDEX_MAGIC:
            raise DataError(f"{idx_file}: bad magic {magic!r}, not a Megatron MMIDIDX index")
        if version != INDEX_VERSION:
            raise DataError(f"{idx_file}: unsupported index version {version} (expected {INDEX_VERSION})")
        if code not in DTYPE_CODES:
            raise DataError(f"{idx_file}: unknown token dtype code {code}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        need = _HEADER.size + 4 * n_seq + 8 * n_seq + 8 * n_doc
        # Megatron's multimodal variant appends one int8 mode per sequence.
        if len(raw) not in (need, need + n_seq):
            raise DataError(
                f"{idx_file}: truncated or corrupt index ({len(raw)} bytes, header says {need} for "
                f"{n_seq} sequences and {n_doc} document entries)"
            )
        off = _HEADER.size
        self._sizes = np.frombuffer(raw, dtype=np.int32, count=n_seq, offset=off)
        off += 4 * n_seq
        self._pointers = np.frombuffer(raw, dtype=np.int64, count=n_seq, offset=off)
        off += 8 * n_seq
        self._doc_idx = np.frombuffer(raw, dtype=np.int64, count=n_doc, offset=off)
        if n_seq and (self._sizes < 0).any():
            raise DataError(f"{idx_file}: negative sequence length in index")
        total_bytes = int(self._sizes.astype(np.int64).sum()) * self.dtype.itemsize
        bin_size = bin_file.stat().st_size
        if bin_size < total_bytes:
            raise DataError(f"{bin_file}: truncated data file ({bin_size} bytes, index needs {total_bytes})")
        if n_seq:
            ends = self._pointers + self._sizes.astype(np.int64) * self.dtype.itemsize
            if (self._pointers < 0).any() or int(ends.max()) > bin_size:
                raise DataError(f"{idx_file}: sequence pointers run past the end of {bin_file}")
        if n_doc and (self._doc_idx[0] != 0 or self._doc_idx[-1] != n_seq or (np.diff(self._doc_idx) < 0).any()):
            raise DataError(f"{idx_file}: document index is not a non-decreasing 0..{n_seq} range")
        self._bin = np.memmap(bin_file, dtype=np.uint8, mode="r") if bin_size else np.zeros(0, np.uint8)

    @property
    def sizes(self) -> np.ndarray:
        """Tokens per sequence (int32[N])."""
        return self._sizes

    @property
    def doc_idx(self) -> np.ndarray:
        """Sequence index where each document starts (int64[documents + 1])."""
        return self._doc_idx

    @property
    def num_documents(self) -> int:
        return max(len(self._doc_idx) - 1, 0)

    def __len__(self) -> int:
        return len(self._sizes)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``i`` (Megatron's ``get``)."""
        size = int(self._sizes[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"slice [{offset}, {offset + length}) outside sequence {i} of {size} tokens")
        start = int(self._pointers[i]) + offset * self.dtype.itemsize
        buf = self._bin[start : start + length * self.dtype.itemsize]
        return np.frombuffer(buf.tobytes(), dtype=self.dtype)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences in {self.prefix}")
        return self.get(i % n if n else i)
