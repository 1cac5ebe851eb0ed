"""The calling rank's RNG states as values a checkpoint can hold (not collective)."""
from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch

from workloads.gpt.checkpoint.errors import CheckpointError


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
