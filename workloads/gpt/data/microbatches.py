"""This data-parallel rank's micro-batches, in Megatron's pretraining sampler order."""
from __future__ import annotations

from typing import Any

import torch

from workloads.gpt.data.samples import GPTSamples, require_at_least


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
        require_at_least("consumed_samples", consumed_samples, 0)
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
        require_at_least("consumed_samples", consumed, 0)
        self.consumed_samples = consumed
