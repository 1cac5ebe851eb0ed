"""Deterministic mode, shared by the built-in workloads.

``deterministic(seed)`` is a context manager that seeds every RNG (python, torch CPU, every
CUDA device), turns on deterministic algorithms, sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8``,
``NCCL_ALGO=Ring`` and disables non-deterministic cuDNN/TF32 paths — and restores all of
it on exit, so a test that enters it leaves the process as it found it.

``torch.use_deterministic_algorithms`` imports ``torch._inductor.config`` only to set its
``deterministic`` flag, which pulls in dynamo and sympy: 1 s on an idle core, 10-30 s on a
loaded machine, in every rank. ``set_deterministic_algorithms`` does the same without that
import: it sets the flag on the inductor config when that is already loaded, and otherwise
``TORCHINDUCTOR_DETERMINISTIC=1`` (what the config reads when it is imported later, e.g. by
``torch.compile`` inside the block), so compiled code is deterministic too.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
from typing import Iterator

DETERMINISTIC_ENV = {
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "NCCL_ALGO": "Ring",
    "NVTE_ALLOW_NONDETERMINISTIC_ALGO": "0",
}


_INDUCTOR_CONFIG = "torch._inductor.config"
_INDUCTOR_ENV = "TORCHINDUCTOR_DETERMINISTIC"


def set_deterministic_algorithms(mode: bool, *, warn_only: bool = False) -> None:
    """``torch.use_deterministic_algorithms`` without importing the inductor (see above)."""
    import torch

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:   # a torch without the private setter: the public call
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
        return
    config = sys.modules.get(_INDUCTOR_CONFIG)
    if config is not None:
        setattr(config, "deterministic", mode)   # a plain module attribute mypy has no type for
    setter(mode, warn_only=warn_only)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA devices too
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass


@contextlib.contextmanager
def deterministic(seed: int = 1234, *, warn_only: bool = False) -> Iterator[None]:
    import torch

    saved_env = {k: os.environ.get(k) for k in (*DETERMINISTIC_ENV, _INDUCTOR_ENV)}
    config = sys.modules.get(_INDUCTOR_CONFIG)
    saved_inductor = getattr(config, "deterministic", None)
    saved_algos = torch.are_deterministic_algorithms_enabled()
    saved_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    saved_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    saved_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    saved_rng = torch.get_rng_state()
    saved_cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    saved_py_rng = random.getstate()
    try:
        os.environ.update(DETERMINISTIC_ENV)
        os.environ[_INDUCTOR_ENV] = "1"
        set_deterministic_algorithms(True, warn_only=warn_only)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        seed_everything(seed)
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        set_deterministic_algorithms(saved_algos, warn_only=saved_warn)
        config = sys.modules.get(_INDUCTOR_CONFIG)
        if config is not None:   # loaded before the block, or inside it (it read the env then)
            setattr(config, "deterministic", bool(saved_inductor) if saved_inductor is not None else saved_algos)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved_cudnn
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_tf32
        torch.set_rng_state(saved_rng)
        if saved_cuda_rng is not None:
            torch.cuda.set_rng_state_all(saved_cuda_rng)
        random.setstate(saved_py_rng)
