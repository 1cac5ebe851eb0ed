"""The seeded synthetic corpus: documents from a small Markov chain, so the LM loss visibly
falls during a short run, written in the indexed format with identical bytes for a given seed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runner.results import write_bytes_atomic
from workloads.gpt.data.indexed import data_path, encode_indexed, index_path

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
    idx, body = encode_indexed(docs, dtype)
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
