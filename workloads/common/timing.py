"""Load-proof iteration timing: a calibration kernel timed in the same launch as each step.

Wall-clock iteration time measures the machine as much as the code: on a shared CPU host a
busy neighbour makes every step slower, and a golden median check with a 5 % tolerance fails
although nothing regressed. A fixed amount of work timed right next to each training step, in
the same processes and under the same contention, measures how fast the machine is *at that
moment*; the ratio ``iteration-time / calibration-time`` stays put when the machine is busy and
moves when the step itself does more work. The ``timing`` check (runner.compare.checks)
compares the median of that ratio over Megatron's steady window with the golden's.

``CalibrationKernel.time()`` runs ``repeats`` fp32 matmuls of ``size`` x ``size`` (the kind of
work a training step does, on the same intra-op threads) and returns the wall seconds. It owns
its tensors, draws no random numbers and touches no model state, so the training numerics
(and every other golden metric) are unchanged. A step calls it before and after itself and
records the sum as ``calibration-time`` (mean over ranks).

``double_compute(modules)`` is the planted slowdown for the project's own negative control:
every module's forward (and so its backward) runs twice; the second result is multiplied by
zero and added, so values, gradients and activation accounting are unchanged while the step
does about twice the layer compute.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

import torch


class CalibrationKernel:
    def __init__(self, size: int = 96, repeats: int = 6, device: torch.device | str = "cpu") -> None:
        self.a = torch.full((size, size), 1.0 / size, dtype=torch.float32, device=device)
        self.b = torch.eye(size, dtype=torch.float32, device=device)
        self.repeats = repeats
        self.device = torch.device(device)

    def time(self) -> float:
        with torch.no_grad():
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            x = self.a
            for _ in range(self.repeats):
                x = torch.mm(x, self.b)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return time.perf_counter() - t0


def _twice(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        again = module.forward(*args)
    return output + 0.0 * again


def double_compute(modules: Iterable[torch.nn.Module]) -> list[Any]:
    """Make every given module compute its forward (and backward) twice; returns the hook handles."""
    return [m.register_forward_hook(_twice) for m in modules]
