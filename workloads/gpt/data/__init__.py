"""GPT training data: Megatron's indexed dataset format, a seeded synthetic corpus, and
Megatron's sample/micro-batch order.

Why this shape: users point the GPT workload at data they already preprocessed for
Megatron-LM (``tools/preprocess_data.py`` writes an ``.idx``/``.bin`` pair), so the reader
speaks that byte layout exactly. With no data at hand, ``build_synthetic_corpus`` writes a
corpus in the same format whose tokens follow a small seeded Markov chain, so the LM loss
visibly falls during a short run and the bytes are identical for a given seed.

Modules: ``indexed`` (the ``.idx``/``.bin`` format), ``synthetic`` (the seeded corpus),
``samples`` (GPTDataset's sample order), ``microbatches`` (the pretraining sampler).
"""
from __future__ import annotations

from workloads.gpt.data.indexed import (
    DTYPE_CODES,
    DataError,
    IndexedDataset,
    data_path,
    index_path,
    write_indexed_dataset,
)
from workloads.gpt.data.microbatches import MicroBatchIterator
from workloads.gpt.data.samples import GPTSamples
from workloads.gpt.data.synthetic import build_synthetic_corpus, eod_token, synthetic_documents

__all__ = [
    "DTYPE_CODES",
    "DataError",
    "GPTSamples",
    "IndexedDataset",
    "MicroBatchIterator",
    "build_synthetic_corpus",
    "data_path",
    "eod_token",
    "index_path",
    "synthetic_documents",
    "write_indexed_dataset",
]
