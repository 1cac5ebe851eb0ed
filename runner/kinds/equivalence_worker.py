"""In-rank entry of the ``equivalence`` kind: ``runner.kinds.equivalence_worker:run``.

In every rank: ``ctx.init_distributed()``; seed every RNG (deterministic mode when the case
asks for it); ``state = setup(ctx, params)``; snapshot modules, optimizers and RNG;
``reference(ctx, state)`` -> captures ``reference``; restore; ``candidate(ctx, state)`` ->
captures ``candidate``. What was restored, the parameter names ``expect`` needs, both wall
times and any ``runner.equivalence.Skip`` reason go to ``info/rank{R}.json``.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Iterator, Mapping

import torch

from runner.equivalence import Skip, gradient_names
from runner.kinds.equivalence_refs import FunctionRef, load
from runner.kinds.equivalence_state import restore, snapshot

ROLES = ("setup", "reference", "candidate")


class EquivalenceFunctionError(RuntimeError):
    """A case's function raised; the message names the function and the rank."""


class CaptureError(TypeError):
    """A function returned something that is not a capture."""


def normalise(value: Any, path: str = "") -> Any:
    """Captures as saved: tensors detached to CPU copies, tuples as lists, str keys only."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CaptureError(f"capture key {path + repr(k)} is not a string")
            out[k] = normalise(v, f"{path}{k}.")
        return out
    if isinstance(value, (list, tuple)):
        return [normalise(v, f"{path}{i}.") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CaptureError(f"capture '{path.rstrip('.') or '<root>'}' is a {type(value).__name__}; captures hold "
                       "tensors, mappings, lists and scalars")


def _save(ctx, name: str, captures: Any) -> None:
    path = ctx.results.capture_file(name, ctx.rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(captures, tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def _determinism(seed: int, deterministic: bool) -> Iterator[None]:
    from workloads.common.determinism import deterministic as deterministic_mode, seed_everything

    if deterministic:
        with deterministic_mode(seed):
            yield
    else:
        seed_everything(seed)
        yield


def _call(role: str, ref: FunctionRef, fn: Callable[..., Any], rank: int, *args: Any) -> Any:
    try:
        return fn(*args)
    except Skip:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the function and rank named
        raise EquivalenceFunctionError(f"{role} ({ref.text}) raised on rank {rank}: "
                                       f"{type(exc).__name__}: {exc}") from exc


def _captures(role: str, ref: FunctionRef, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise CaptureError(f"{role} ({ref.text}) returned {type(value).__name__}, not a mapping of captures")
    out = normalise(value)
    trace = out.get("trace")
    if trace is not None:
        import json

        if not isinstance(trace, list):
            raise CaptureError(f"{role} ({ref.text}): 'trace' must be a list")
        try:
            json.dumps(trace)
        except TypeError as exc:
            raise CaptureError(f"{role} ({ref.text}): 'trace' items must be JSON values: {exc}") from None
    return out


def run(ctx) -> None:
    args = ctx.args
    refs = {role: FunctionRef.from_json(args[role]) for role in ROLES}
    fault = args.get("inject_fault")
    ctx.init_distributed()
    fns = {role: load(ref) for role, ref in refs.items()}
    rank = ctx.rank
    try:
        with _determinism(int(args.get("seed", 1234)), bool(args.get("deterministic", True))):
            state = _call("setup", refs["setup"], fns["setup"], rank, ctx, dict(args.get("params") or {}))
            if args.get("expect", {}).get("grads") == "all_parameters":
                ctx.record("equivalence_parameters", gradient_names(state))
            snap = snapshot(state)
            t0 = time.perf_counter()
            ref_caps = _captures("reference", refs["reference"],
                                 _call("reference", refs["reference"], fns["reference"], rank, ctx, state))
            t1 = time.perf_counter()
            _save(ctx, "reference", ref_caps)
            restored = restore(snap, weights=fault != "skip_weight_restore", grads=fault != "skip_zero_grad",
                               rng=fault != "skip_rng_restore")
            ctx.record("equivalence_restored", restored.to_json())
            t2 = time.perf_counter()
            cand_caps = _captures("candidate", refs["candidate"],
                                  _call("candidate", refs["candidate"], fns["candidate"], rank, ctx, state))
            t3 = time.perf_counter()
            _save(ctx, "candidate", cand_caps)
    except Skip as skip:
        ctx.record("equivalence_skip", skip.reason)
        return
    ctx.record("equivalence_time_reference_s", t1 - t0)
    ctx.record("equivalence_time_candidate_s", t3 - t2)
