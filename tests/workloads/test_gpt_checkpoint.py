"""torch_dist checkpoints (workloads/gpt/checkpoint.py) in real 2-process gloo runs."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.distributed as dist

from dist_helpers import spawn
from workloads.gpt.checkpoint import (
    LAYOUT_FILE,
    MARKER_FILE,
    CheckpointError,
    discard_iteration,
    finalize_pending_saves,
    iteration_dir,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_latest_iteration,
    set_rng_state,
)

pytestmark = pytest.mark.timeout(300)


def make_state(rank: int, seed: int, *, dp: int | None = None, pp: int | None = None) -> dict[str, Any]:
    """A state shaped like the GPT worker's: replicated model tensors, per-rank optimizer
    shards and RNG, plain scheduler/data values, bytes."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.Generator().manual_seed(seed + 1000)
    p = 0 if pp is None else rank if pp > 1 else 0
    d = rank if dp is None else rank % dp
    return {
        "model": {"layer.weight": torch.randn(4, 3, generator=shared), "layer.bias": torch.randn(3, generator=shared)},
        f"optimizer.pp{p}.dp{d}.bucket0.param": torch.randn(6, generator=g),
        f"optimizer.pp{p}.dp{d}.bucket0.exp_avg": torch.randn(6, generator=g),
        f"optimizer.pp{p}.dp{d}.step": seed,
        f"rng.rank{rank}": rng_state(),
        "scheduler": {"num_steps": seed * 10, "lr": 1.5e-4 / (seed + 1)},
        "data": {"consumed_samples": seed * 32},
        "blob": bytes([seed, 0, 255]),  # replicated key: identical on every rank
        "tag": None,
    }


def assert_state_equal(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            assert_state_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b and type(a) is type(b), (path, a, b)


# ---------------------------------------------------------------------------------------------
def _round_trip_worker(rank: int, world: int, root: str) -> None:
    ckpt = Path(root) / "ckpt"
    random.seed(rank)
    np.random.seed(rank)
    torch.manual_seed(rank)
    saved = make_state(rank, 3)
    save_checkpoint(ckpt, 3, saved)
    # what the RNGs produce after the save point, to compare after restoring
    after = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    assert (ckpt / MARKER_FILE).read_text() == "3"
    names = {p.name for p in iteration_dir(ckpt, 3).iterdir()}
    assert {".metadata", LAYOUT_FILE, "__0_0.distcp", "__1_0.distcp"} <= names, names

    target = make_state(rank, 9)  # different values everywhere, same keys and shapes
    target[f"rng.rank{rank}"] = rng_state()
    target["data"]["consumed_samples"] = "garbage"
    assert load_checkpoint(ckpt, target) == 3
    expected = {k: v for k, v in saved.items()}
    assert_state_equal(expected, target)
    set_rng_state(target[f"rng.rank{rank}"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == after

    # async: the tensors are staged at save time; changing them afterwards changes nothing
    state = make_state(rank, 4)
    snapshot = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items() if k.startswith("optimizer")}
    req = save_checkpoint(ckpt, 4, state, async_save=True)
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            v.add_(100.0)
    state["model"]["layer.weight"].add_(100.0)
    req.wait()
    finalize_pending_saves()
    assert req.done and (ckpt / MARKER_FILE).read_text() == "4"
    target = make_state(rank, 9)
    assert load_checkpoint(ckpt, target) == 4
    for k, v in snapshot.items():
        assert_state_equal(v, target[k], k)
    assert torch.equal(target["model"]["layer.weight"], make_state(rank, 4)["model"]["layer.weight"])


def test_round_trip_sync_and_async(tmp_path: Path) -> None:
    spawn(_round_trip_worker, 2, tmp_path, str(tmp_path))


# ---------------------------------------------------------------------------------------------
def _marker_worker(rank: int, world: int, root: str) -> None:
    ckpt = Path(root) / "ckpt"
    for it in (50, 100):
        save_checkpoint(ckpt, it, make_state(rank, it), async_save=(it == 100))
    finalize_pending_saves()
    assert (ckpt / MARKER_FILE).read_text() == "100"
    # Megatron's ckpt-resume flow: discard the final checkpoint, point the marker half-way
    discard_iteration(ckpt, 100)
    set_latest_iteration(ckpt, 50)
    dist.barrier()
    assert not iteration_dir(ckpt, 100).exists()
    assert (ckpt / MARKER_FILE).read_text() == "50"
    target = make_state(rank, 7)
    assert load_checkpoint(ckpt, target) == 50
    assert target["scheduler"]["num_steps"] == 500
    assert target[f"optimizer.pp0.dp{rank}.step"] == 50
    with pytest.raises(CheckpointError, match="iter_0000100"):
        load_checkpoint(ckpt, make_state(rank, 7), iteration=100)
    if rank == 0:
        with pytest.raises(CheckpointError, match="iter_0000100"):
            set_latest_iteration(ckpt, 100)
    # discarding what the marker names moves the marker back to the newest remaining one
    save_checkpoint(ckpt, 60, make_state(rank, 60))
    discard_iteration(ckpt, 60)
    dist.barrier()
    assert (ckpt / MARKER_FILE).read_text() == "50"


def test_marker_semantics(tmp_path: Path) -> None:
    spawn(_marker_worker, 2, tmp_path, str(tmp_path))


# ---------------------------------------------------------------------------------------------
def _expect_error(fn: Callable[[], Any], *fragments: str) -> str:
    with pytest.raises(CheckpointError) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def _errors_worker(rank: int, world: int, root: str) -> None:
    base = Path(root)
    empty = base / "empty"
    # no marker
    _expect_error(lambda: load_checkpoint(empty, make_state(rank, 1)), str(empty / MARKER_FILE))
    # marker pointing at a missing iteration
    ckpt = base / "ckpt"
    save_checkpoint(ckpt, 1, make_state(rank, 1))
    if rank == 0:
        (ckpt / MARKER_FILE).write_text("7")
    dist.barrier()
    _expect_error(lambda: load_checkpoint(ckpt, make_state(rank, 1)), str(iteration_dir(ckpt, 7)), "missing")
    if rank == 0:
        (ckpt / MARKER_FILE).write_text("1")
    dist.barrier()
    # shape mismatch (on one rank only: both ranks must raise)
    bad = make_state(rank, 1)
    if rank == 1:
        bad["optimizer.pp0.dp1.bucket0.param"] = torch.zeros(7)
    _expect_error(lambda: load_checkpoint(ckpt, bad), str(iteration_dir(ckpt, 1)), "optimizer.pp0.dp1.bucket0.param", "[6]", "[7]")
    # dtype mismatch
    bad = make_state(rank, 1)
    bad["model"]["layer.bias"] = bad["model"]["layer.bias"].double()
    _expect_error(lambda: load_checkpoint(ckpt, bad), "model/layer.bias", "torch.float64")
    # a key the checkpoint does not have
    bad = make_state(rank, 1)
    bad["model"]["extra"] = torch.zeros(2)
    _expect_error(lambda: load_checkpoint(ckpt, bad), "model/extra", "not in the checkpoint")
    # layout: written with pp=1 dp=2, loaded by a run with pp=2 dp=1
    _expect_error(
        lambda: load_checkpoint(ckpt, make_state(rank, 1, dp=1, pp=2)),
        str(iteration_dir(ckpt, 1)), "written with pp=1 dp=2", "this run has pp=2 dp=1",
    )
    # explicit layout fingerprint differing
    save_checkpoint(ckpt, 2, make_state(rank, 2), layout={"tp": 1, "config": "abc"})
    _expect_error(lambda: load_checkpoint(ckpt, make_state(rank, 2), layout={"tp": 1, "config": "xyz"}), "'config'", "abc", "xyz")
    assert load_checkpoint(ckpt, make_state(rank, 5), layout={"tp": 1, "config": "abc"}) == 2
    # truncated shard file
    shard = iteration_dir(ckpt, 2) / "__1_0.distcp"
    dist.barrier()
    if rank == 0:
        shard.write_bytes(shard.read_bytes()[:-10])
    dist.barrier()
    _expect_error(lambda: load_checkpoint(ckpt, make_state(rank, 2), layout={"tp": 1, "config": "abc"}), str(shard), "truncated")
    # same-size corruption is caught by the recorded hash
    other = iteration_dir(ckpt, 1) / "__0_0.distcp"
    if rank == 0:
        raw = bytearray(other.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        other.write_bytes(bytes(raw))
    dist.barrier()
    _expect_error(lambda: load_checkpoint(ckpt, make_state(rank, 1), iteration=1), str(other), "corrupt")
    # a save that never finished (no manifest) is not loadable
    save_checkpoint(ckpt, 3, make_state(rank, 3))
    if rank == 0:
        (iteration_dir(ckpt, 3) / LAYOUT_FILE).unlink()
    dist.barrier()
    _expect_error(lambda: load_checkpoint(ckpt, make_state(rank, 3)), "incomplete")
    # everything still usable after the errors: collectives stayed in step
    save_checkpoint(ckpt, 4, make_state(rank, 4))
    assert load_checkpoint(ckpt, make_state(rank, 0)) == 4


def test_error_cases_raise_checkpoint_error_naming_the_path(tmp_path: Path) -> None:
    spawn(_errors_worker, 2, tmp_path, str(tmp_path))


def test_single_process_without_distributed(tmp_path: Path) -> None:
    state = {"w": torch.arange(5.0), "n": 3, "rng": rng_state()}
    save_checkpoint(tmp_path, 1, state)
    target = {"w": torch.zeros(5), "n": 0, "rng": rng_state()}
    assert load_checkpoint(tmp_path, target) == 1
    assert torch.equal(target["w"], state["w"]) and target["n"] == 3
    assert torch.equal(target["rng"]["torch_cpu"], state["rng"]["torch_cpu"])


def test_the_training_modules_import_neither_dcp_nor_sympy() -> None:
    """DCP's DTensor code imports sympy (seconds per rank): only a launch that saves or loads
    may pay it, through save_checkpoint/load_checkpoint/import_dcp."""
    import subprocess
    import sys

    code = ("import sys, workloads.gpt.worker, workloads.gpt.checkpoint, workloads.gpt.data, "
            "workloads.gpt.dist_optimizer\n"
            "print(int('torch.distributed.checkpoint' in sys.modules), int('sympy' in sys.modules))\n"
            "from workloads.gpt.checkpoint import import_dcp\nimport_dcp()\n"
            "print(int('torch.distributed.checkpoint' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=300).stdout.split()
    assert out == ["0", "0", "1"]
