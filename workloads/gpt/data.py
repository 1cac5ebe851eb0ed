"""GPT training data: Megatron's indexed dataset format, a seeded synthetic corpus, and
Megatron's sample/micro-batch order.

Why this shape: users point the GPT workload at data they already preprocessed for
Megatron-LM (``tools/preprocess_data.py`` writes an ``.idx``/``.bin`` pair), so the reader
speaks that byte layout exactly. With no data at hand, ``build_synthetic_corpus`` writes a
corpus in the same format whose tokens follow a small seeded Markov chain, so the LM loss
visibly falls during a short run and the bytes are identical for a given seed.

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
import torch

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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _encode_indexed(documents: Iterable[Sequence[int] | np.ndarray], dtype: Any) -> tuple[bytes, bytes]:
    """Return (idx bytes, bin bytes) for ``documents`` (one sequence per document)."""
    np_dtype = np.dtype(dtype)
    if np_dtype not in _CODE_OF:
        raise ValueError(f"unsupported token dtype {np_dtype}; use one of {sorted(str(np.dtype(d)) for d in DTYPE_CODES.values())}")
    arrays = []
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
    idx, body = _encode_indexed(documents, dtype)
    write_bytes_atomic(data_path(prefix), body)
    write_bytes_atomic(index_path(prefix), idx)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Synthetic corpus
# --------------------------------------------------------------------------------------------
SYNTHETIC_SUCCESSORS = 4
SYNTHETIC_SUCCESSOR_PROBS = (0.55, 0.25, 0.12, 0.08)
SYNTHETIC_NOISE = 0.1
SYNTHETIC_DOC_LENGTH = (48, 320)


def eod_token(vocab_size: int) -> int:
    """End-of-document token id of the synthetic corpus (the last id, like GPT-2's 50256)."""
    return vocab_size - 1


def synthetic_documents(*, vocab_size: int, num_documents: int, seed: int) -> list[np.ndarray]:
    """Documents drawn from a seeded first-order Markov chain with uniform noise.

    Every token has ``SYNTHETIC_SUCCESSORS`` likely successors (probabilities
    ``SYNTHETIC_SUCCESSOR_PROBS``); with probability ``SYNTHETIC_NOISE`` the next token is
    uniform instead. The chain's entropy is far below ``log(vocab)``, so a model can learn
    it and the loss falls. Each document ends with the EOD token. Pure integer/float
    arithmetic on a seeded PCG64 stream: identical output for a given seed.
    """
    if vocab_size < 8:
        raise ValueError(f"vocab_size must be >= 8, got {vocab_size}")
    if num_documents < 1:
        raise ValueError(f"num_documents must be >= 1, got {num_documents}")
    rng = np.random.Generator(np.random.PCG64(seed))
    n_tok = vocab_size - 1  # ids 0..vocab-2 are text, vocab-1 is EOD
    successors = rng.integers(0, n_tok, size=(n_tok, SYNTHETIC_SUCCESSORS), dtype=np.int64)
    cum = np.cumsum(np.asarray(SYNTHETIC_SUCCESSOR_PROBS, dtype=np.float64))
    cum[-1] = 1.0
    lo, hi = SYNTHETIC_DOC_LENGTH
    lengths = rng.integers(lo, hi + 1, size=num_documents, dtype=np.int64)
    max_len = int(lengths.max())
    tokens = np.empty((num_documents, max_len), dtype=np.int64)
    tokens[:, 0] = rng.integers(0, n_tok, size=num_documents, dtype=np.int64)
    for t in range(1, max_len):
        u = rng.random(num_documents)
        pick = np.searchsorted(cum, rng.random(num_documents), side="right")
        nxt = successors[tokens[:, t - 1], np.minimum(pick, SYNTHETIC_SUCCESSORS - 1)]
        noise = rng.integers(0, n_tok, size=num_documents, dtype=np.int64)
        tokens[:, t] = np.where(u < SYNTHETIC_NOISE, noise, nxt)
    eod = eod_token(vocab_size)
    return [np.append(tokens[d, : lengths[d] - 1], eod) for d in range(num_documents)]


def build_synthetic_corpus(prefix: str | Path, *, vocab_size: int, num_documents: int, seed: int) -> Path:
    """Write (or reuse) the seeded synthetic corpus at ``prefix`` and return ``Path(prefix)``.

    Idempotent: if ``prefix.idx``/``prefix.bin`` already hold exactly these bytes nothing is
    written, so many ranks may call it on a shared path (writes are atomic renames of
    identical content).
    """
    prefix = Path(prefix)
    dtype = np.int32 if vocab_size > np.iinfo(np.uint16).max else np.uint16
    docs = synthetic_documents(vocab_size=vocab_size, num_documents=num_documents, seed=seed)
    idx, body = _encode_indexed(docs, dtype)
    idx_file, bin_file = index_path(prefix), data_path(prefix)
    try:
        same = (
            bin_file.stat().st_size == len(body)
            and idx_file.read_bytes() == idx
            and bin_file.read_bytes() == body
        )
    except OSError:
        same = False
    if not same:
        write_bytes_atomic(bin_file, body)
        write_bytes_atomic(idx_file, idx)
    return prefix


# --------------------------------------------------------------------------------------------
# GPT samples (Megatron GPTDataset semantics)
# --------------------------------------------------------------------------------------------
class GPTSamples:
    """Fixed-length LM samples over an indexed dataset, in Megatron GPTDataset's order.

    Megatron's construction, with ``numpy.random.RandomState(seed)``:
    1. epochs = the smallest number whose concatenated tokens give ``num_samples`` samples
       of ``seq_length + 1`` tokens (consecutive samples share one boundary token);
    2. document index = every sequence once per epoch, shuffled;
    3. the shuffled documents are concatenated and cut at multiples of ``seq_length``;
    4. the sample order is shuffled with the same random state.
    Sample ``i`` gives ``tokens = text[:-1]``, ``labels = text[1:]``, ``loss_mask`` all ones
    (Megatron's default, ``--eod-mask-loss`` off). (Megatron additionally keeps a final
    partial epoch separate when it is under 80% used; this reader shuffles all epochs
    together, which changes which documents land in the last samples only.)
    """

    def __init__(self, indexed: IndexedDataset, *, seq_length: int, seed: int, num_samples: int) -> None:
        if seq_length < 1:
            raise ValueError(f"seq_length must be >= 1, got {seq_length}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        sizes = indexed.sizes.astype(np.int64)
        tokens_per_epoch = int(sizes.sum())
        if tokens_per_epoch < 2:
            raise DataError(f"{index_path(indexed.prefix)}: dataset has {tokens_per_epoch} tokens, too few for samples")
        self.indexed = indexed
        self.seq_length = seq_length
        self.seed = seed
        self.num_samples = num_samples
        num_epochs = 0
        while True:
            num_epochs += 1
            if (num_epochs * tokens_per_epoch - 1) // seq_length >= num_samples:
                break
        self.num_epochs = num_epochs
        rng = np.random.RandomState(seed % (2**32))
        document_index = np.tile(np.arange(len(indexed), dtype=np.int32), num_epochs)
        rng.shuffle(document_index)
        self.document_index = document_index
        doc_sizes = sizes[document_index]
        self._doc_start = np.zeros(len(document_index) + 1, dtype=np.int64)
        np.cumsum(doc_sizes, out=self._doc_start[1:])
        total_samples = (int(self._doc_start[-1]) - 1) // seq_length
        shuffle = np.arange(total_samples, dtype=np.int64)
        rng.shuffle(shuffle)
        self.shuffle_index = shuffle

    def __len__(self) -> int:
        return self.num_samples

    def text(self, i: int) -> np.ndarray:
        """The ``seq_length + 1`` tokens of sample ``i`` (after the sample shuffle)."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} outside the {self.num_samples} samples this dataset was built for")
        j = int(self.shuffle_index[i])
        start = j * self.seq_length
        end = start + self.seq_length + 1
        pieces = []
        k = int(np.searchsorted(self._doc_start, start, side="right")) - 1
        pos = start
        while pos < end:
            doc_begin, doc_end = int(self._doc_start[k]), int(self._doc_start[k + 1])
            take = min(end, doc_end) - pos
            if take > 0:
                pieces.append(self.indexed.get(int(self.document_index[k]), pos - doc_begin, take))
                pos += take
            k += 1
        return np.concatenate(pieces).astype(np.int64, copy=False)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        text = torch.from_numpy(self.text(i))
        return {
            "tokens": text[:-1].clone(),
            "labels": text[1:].clone(),
            "loss_mask": torch.ones(self.seq_length, dtype=torch.float32),
        }


# --------------------------------------------------------------------------------------------
# Micro-batches (Megatron's pretraining sampler order)
# --------------------------------------------------------------------------------------------
class MicroBatchIterator:
    """This data-parallel rank's micro-batches, global batch by global batch.

    Megatron's ``MegatronPretrainingSampler``: samples are consumed in order from
    ``consumed_samples``; every micro-step takes ``micro_batch_size * dp_size`` consecutive
    samples and dp rank ``r`` takes the ``r``-th slice of ``micro_batch_size``; a global
    batch is ``num_microbatches`` such micro-steps. ``consumed_samples`` is the whole data
    position, which is what a checkpoint must save.
    """

    def __init__(
        self,
        samples: GPTSamples,
        *,
        micro_batch_size: int,
        global_batch_size: int,
        dp_rank: int,
        dp_size: int,
        consumed_samples: int = 0,
    ) -> None:
        if micro_batch_size < 1 or dp_size < 1:
            raise ValueError(f"micro_batch_size ({micro_batch_size}) and dp_size ({dp_size}) must be >= 1")
        if global_batch_size % (micro_batch_size * dp_size) != 0:
            raise ValueError(
                f"global_batch_size {global_batch_size} is not divisible by "
                f"micro_batch_size * dp_size = {micro_batch_size} * {dp_size}"
            )
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside 0..{dp_size - 1}")
        if consumed_samples < 0:
            raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")
        self.samples = samples
        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.consumed_samples = consumed_samples

    @property
    def num_microbatches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)

    def _batch(self, indices: range) -> dict[str, torch.Tensor]:
        items = [self.samples[i] for i in indices]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def next_global_batch(self) -> list[dict[str, torch.Tensor]]:
        """This rank's ``num_microbatches`` batch dicts (tensors ``[mbs, seq]``) of the next global batch."""
        if self.consumed_samples + self.global_batch_size > len(self.samples):
            raise IndexError(
                f"data exhausted: {self.consumed_samples} samples consumed, a global batch of "
                f"{self.global_batch_size} needs more than the {len(self.samples)} built"
            )
        step = self.micro_batch_size * self.dp_size
        out = []
        for m in range(self.num_microbatches):
            base = self.consumed_samples + m * step + self.dp_rank * self.micro_batch_size
            out.append(self._batch(range(base, base + self.micro_batch_size)))
        self.consumed_samples += self.global_batch_size
        return out

    def state_dict(self) -> dict[str, int]:
        return {"consumed_samples": int(self.consumed_samples)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        consumed = int(d["consumed_samples"])
        if consumed < 0:
            raise ValueError(f"consumed_samples must be >= 0, got {consumed}")
        self.consumed_samples = consumed
