"""Fixed-length LM samples over an indexed dataset, in Megatron GPTDataset's order."""
from __future__ import annotations

import numpy as np
import torch

from workloads.gpt.data.indexed import DataError, IndexedDataset, index_path


def require_at_least(name: str, value: int, minimum: int) -> None:
    """``ValueError`` naming ``name`` unless ``value >= minimum``."""
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


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
        require_at_least("seq_length", seq_length, 1)
        require_at_least("num_samples", num_samples, 1)
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
