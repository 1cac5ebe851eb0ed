"""An explicit CPU compatibility layer for megatron-core (used only where CUDA is absent).

megatron-core calls CUDA unconditionally in the code paths these cases exercise: it creates
``torch.cuda.Stream``/``Event`` objects, reads ``torch.cuda.current_device()``, keeps its
model-parallel RNG tracker in the CUDA generator, and so on. On a CPU-only machine
:func:`cpu_compat` patches exactly those call sites for the duration of a ``with`` block and
undoes every patch on exit. Each patch names the megatron-core location it addresses.

Rules it keeps:
* it is active only when ``torch.cuda.is_available()`` is false; on a GPU nothing is patched;
* it is checked against the installed megatron-core version: a version it was not verified
  against raises :class:`UnsupportedMegatronVersion` (the cases turn that into SKIPPED) instead
  of being patched blindly;
* it never re-implements megatron-core: streams and events become no-ops (work runs in
  program order on the one CPU stream), device lookups answer "cpu", and two data-shape
  mismatches that only exist off-GPU are bridged.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterator

import torch

# Versions the patch list below was verified against (each patched call site exists in them).
VERIFIED_VERSIONS = ("0.16.1",)


class UnsupportedMegatronVersion(RuntimeError):
    """The installed megatron-core is not one the CPU layer was verified against."""


def megatron_version() -> str | None:
    try:
        return metadata.version("megatron-core")
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class CompatReport:
    version: str
    active: bool
    patches: tuple[str, ...]   # "<megatron-core location>: <what is patched>"

    def notes(self) -> list[str]:
        if not self.active:
            return [f"megatron-core {self.version}; CUDA available: nothing patched"]
        return [f"megatron-core {self.version}; CPU compatibility layer active ({len(self.patches)} patches); "
                "streams serialised on CPU (stream/event races need a GPU)"]


# -- CPU stand-ins for CUDA stream objects -------------------------------------------------
class CpuEvent:
    """A recorded point on the single CPU stream: everything before it has already run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.recorded = False

    def record(self, stream: Any = None) -> None:
        self.recorded = True

    def wait(self, stream: Any = None) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True


class CpuStream:
    """The CPU executes in program order, so every stream is the same serial stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        return None

    def wait_event(self, event: Any) -> None:
        return None

    def record_event(self, event: CpuEvent | None = None) -> CpuEvent:
        event = event or CpuEvent()
        event.record(self)
        return event

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True


_CURRENT_STREAM = CpuStream()


class _Patcher:
    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self.names: list[str] = []

    def setattr(self, where: str, obj: Any, attr: str, value: Any) -> None:
        had = attr in vars(obj) if isinstance(obj, type) else hasattr(obj, attr)
        old = vars(obj).get(attr) if isinstance(obj, type) else getattr(obj, attr, None)
        setattr(obj, attr, value)

        def undo() -> None:
            if had:
                setattr(obj, attr, old)
            else:
                delattr(obj, attr)

        self._undo.append(undo)
        self.names.append(where)

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


class _TorchView:
    """``torch`` as one megatron-core module sees it: unchanged except for a few names."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(torch, name)


def _on_cpu(device: Any) -> Any:
    return "cpu" if (device == "cuda" or (isinstance(device, torch.device) and device.type == "cuda")) else device


def _redirect_device(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def wrapper(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
        return fn(*args, device=_on_cpu(device), **kwargs)

    return wrapper


def _cuda_type_names(original: Callable[..., Any], callers: frozenset[str]) -> Callable[..., Any]:
    """``Tensor.type()`` answering ``torch.cuda.<T>Tensor`` for CPU tensors, only for calls
    made from the ``callers`` modules (every other caller sees the real type string)."""

    def type_(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if args or kwargs or sys._getframe(1).f_globals.get("__name__") not in callers:
            return result
        if isinstance(result, str) and result.startswith("torch.") and not result.startswith("torch.cuda."):
            return "torch.cuda." + result[len("torch."):]
        return result

    return type_


def _apply(p: _Patcher) -> None:
    import megatron.core.models.common.model_chunk_schedule_plan as chunk_plan
    import megatron.core.optimizer.clip_grads as clip_grads
    import megatron.core.optimizer.optimizer as mp_optimizer
    import megatron.core.utils as core_utils
    import megatron.core.pipeline_parallel.schedules as schedules
    import megatron.core.pipeline_parallel.utils as pp_utils
    import megatron.core.tensor_parallel.random as tp_random
    import megatron.core.transformer.moe.moe_utils as moe_utils
    import megatron.core.transformer.moe.token_dispatcher as token_dispatcher
    import megatron.core.transformer.utils as tf_utils

    cuda = torch.cuda
    # Streams and events: no-ops on the one serial CPU stream.
    p.setattr("pipeline_parallel/utils.py set_streams, moe/token_dispatcher.py MoEAlltoAllTokenDispatcher.__init__: "
              "torch.cuda.Stream", cuda, "Stream", CpuStream)
    p.setattr("models/common/model_chunk_schedule_plan.py TransformerModelChunkSchedulePlan.__init__: torch.cuda.Event",
              cuda, "Event", CpuEvent)
    p.setattr("model_chunk_schedule_plan.py record_current_stream/wait_current_stream, token_dispatcher.py "
              "_maybe_dtoh_and_synchronize: torch.cuda.current_stream", cuda, "current_stream", lambda device=None: _CURRENT_STREAM)
    p.setattr("pipeline_parallel/utils.py ScheduleNode._forward/_backward: torch.cuda.stream",
              cuda, "stream", lambda stream=None: contextlib.nullcontext())
    p.setattr("pipeline_parallel/utils.py ScheduleNode._forward/_backward: Tensor.record_stream",
              torch.Tensor, "record_stream", lambda self, stream: None)
    p.setattr("pipeline_parallel/p2p_communication.py _communicate, dist_checkpointing/strategies/"
              "filesystem_async.py preload_tensors: torch.cuda.synchronize",
              cuda, "synchronize", lambda device=None: None)
    # nvtx ranges fail on CPU builds of torch.
    p.setattr("model_chunk_schedule_plan.py TransformerModelChunkSchedulePlan.run, utils.py ScheduleNode: "
              "torch.cuda.nvtx.range_push", cuda.nvtx, "range_push", lambda msg: 0)
    p.setattr("model_chunk_schedule_plan.py, utils.py: torch.cuda.nvtx.range_pop", cuda.nvtx, "range_pop", lambda: 0)
    p.setattr("models/gpt/fine_grained_callables.py: torch.cuda.nvtx.range", cuda.nvtx, "range",
              lambda msg, *a, **k: contextlib.nullcontext())
    # Device lookups.
    p.setattr("utils.py GlobalMemoryBuffer.get_tensor, distributed/*: torch.cuda.current_device",
              cuda, "current_device", lambda: "cpu")
    # Tensors created with device="cuda" are created on the CPU (per module, only these factories).
    for where, module, names in (
        ("pipeline_parallel/schedules.py forward_backward_*: total_num_tokens", schedules, ("zeros",)),
        ("optimizer/optimizer.py MixedPrecisionOptimizer.__init__: _dummy_overflow_buf", mp_optimizer, ("tensor",)),
        ("optimizer/clip_grads.py get_grad_norm_fp32, clip_grad_by_total_norm_fp32, count_zeros_fp32",
         clip_grads, ("zeros", "tensor")),
        ("utils.py local_multi_tensor_l2_norm", core_utils, ("tensor",)),
        ("transformer/utils.py get_default_causal_mask", tf_utils, ("ones",)),
    ):
        p.setattr(f"{where}: torch.{'/'.join(names)}(..., device='cuda')", module, "torch",
                  _TorchView({n: _redirect_device(getattr(torch, n)) for n in names}))
    # The model-parallel RNG tracker keeps its states in a stand-in for the CUDA generator.
    gen = torch.Generator().manual_seed(0)
    p.setattr("tensor_parallel/random.py CudaRNGStatesTracker.add: torch.cuda.get_rng_state",
              cuda, "get_rng_state", lambda device="cuda": gen.get_state())
    p.setattr("tensor_parallel/random.py CudaRNGStatesTracker.add: torch.cuda.manual_seed",
              cuda, "manual_seed", lambda seed: gen.manual_seed(int(seed)))
    p.setattr("tensor_parallel/random.py _get_cuda_rng_state", tp_random, "_get_cuda_rng_state",
              lambda device="cuda", clone=False, graph_safe=False: gen.get_state())
    p.setattr("tensor_parallel/random.py _set_cuda_rng_state", tp_random, "_set_cuda_rng_state",
              lambda new_state, device=-1, graph_safe=False: gen.set_state(new_state))
    # Without Transformer Engine, 0.16.1 references te_general_gemm without defining it.
    if not hasattr(moe_utils, "te_general_gemm"):
        p.setattr("transformer/moe/moe_utils.py router_gating_linear: undefined te_general_gemm without TE",
                  moe_utils, "te_general_gemm", None)
    # Split sizes reach the host only for CUDA tensors; on CPU they stay tensors, which
    # all_to_all_single rejects as split sizes.
    original_move = moe_utils.maybe_move_tensor_to_cpu

    def move_to_cpu(tensor: Any, as_numpy: bool = False, record_stream: bool = False) -> Any:
        if as_numpy and torch.is_tensor(tensor) and not tensor.is_cuda:
            return tensor.numpy()
        return original_move(tensor, as_numpy=as_numpy, record_stream=record_stream)

    p.setattr("transformer/moe/token_dispatcher.py _maybe_dtoh_and_synchronize: split sizes as tensors",
              token_dispatcher, "maybe_move_tensor_to_cpu", move_to_cpu)
    # Class- and module-level stream state: CPU streams while active, restored on exit.
    p.setattr("token_dispatcher.py MoEAlltoAllTokenDispatcher.cuda_dtoh_stream (class level; restored on exit)",
              token_dispatcher.MoEAlltoAllTokenDispatcher, "cuda_dtoh_stream", _CURRENT_STREAM)
    p.setattr("pipeline_parallel/utils.py _COMP_STREAM (reset on exit)", pp_utils, "_COMP_STREAM", None)
    p.setattr("pipeline_parallel/utils.py _COMM_STREAM (reset on exit)", pp_utils, "_COMM_STREAM", None)
    # The distributed optimizer accepts parameters only by their CUDA type strings.
    p.setattr("optimizer/distrib_optimizer.py _build_model_and_main_param_groups, optimizer/clip_grads.py "
              "clip_grad_by_total_norm_fp32: param.type() == 'torch.cuda.*Tensor'", torch.Tensor, "type",
              _cuda_type_names(torch.Tensor.type, frozenset({"megatron.core.optimizer.distrib_optimizer",
                                                             "megatron.core.optimizer.clip_grads"})))
    del chunk_plan


@contextlib.contextmanager
def cpu_compat() -> Iterator[CompatReport]:
    """Patch megatron-core for CPU while the block runs (nothing on a GPU); yields what it did."""
    version = megatron_version()
    if version is None:
        raise UnsupportedMegatronVersion("megatron-core is not installed")
    if torch.cuda.is_available():
        yield CompatReport(version, False, ())
        return
    if version not in VERIFIED_VERSIONS:
        raise UnsupportedMegatronVersion(
            f"megatron-core {version}: the CPU compatibility layer is verified only for "
            f"{', '.join(VERIFIED_VERSIONS)}; not patching an unknown version")
    patcher = _Patcher()
    try:
        _apply(patcher)
        yield CompatReport(version, True, tuple(patcher.names))
    finally:
        patcher.restore()
