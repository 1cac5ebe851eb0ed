"""What in-rank worker code sees: the WorkerContext.

A case kind's ``entry`` function (``"module:function"``) is called in every rank as
``function(ctx)``. It reads ``ctx.args``, does its work, and writes results through the
context (metrics, captures, info); ``runner.worker`` writes the completion record around it.
Importing this module does not import torch.
"""
from __future__ import annotations

import io
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Any, Mapping

from runner.records import Launch
from runner.results import ResultsDir, json_line, write_bytes_atomic, write_json_atomic


class WorkerContext:
    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.results = ResultsDir(launch.results_dir)
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.host = socket.gethostname()
        self._metrics_fh: IO[str] | None = None
        self._info: dict[str, Any] = {}
        self._tb_writer: Any = None     # a SummaryWriter once asked for

    # -- what the case says -------------------------------------------------------------
    @property
    def args(self) -> Mapping[str, Any]:
        return self.launch.args

    @property
    def case_id(self) -> str:
        return self.launch.case_id

    @property
    def results_dir(self) -> Path:
        return self.results.path

    def sibling_dir(self, launch_name: str) -> Path:
        """Results dir of another launch of the same case (e.g. run1's checkpoints for run2)."""
        return self.results.path.parent / launch_name

    # -- distributed setup ----------------------------------------------------------------
    @property
    def use_cuda(self) -> bool:
        import torch

        return self.launch.gpus_per_node > 0 and torch.cuda.is_available()

    @property
    def device(self):
        import torch

        if self.use_cuda:
            return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        return torch.device("cpu")

    def init_distributed(self, timeout_s: float | None = None):
        """Initialise the default process group: NCCL on GPU, gloo on CPU. Idempotent."""
        import datetime

        import torch
        import torch.distributed as dist

        if dist.is_initialized():
            return dist.group.WORLD
        if self.use_cuda:
            torch.cuda.set_device(self.device)
            backend = "nccl"
        else:
            backend = "gloo"
        kwargs: dict[str, Any] = {"backend": backend}
        if timeout_s is None:
            timeout_s = max(60.0, float(self.launch.timeout))
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
        if backend == "nccl":
            kwargs["device_id"] = self.device
        dist.init_process_group(**kwargs)
        return dist.group.WORLD

    # -- results ------------------------------------------------------------------------
    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append one step's metrics (Megatron names: 'lm loss', 'iteration-time', ...)."""
        if self._metrics_fh is None:
            path = self.results.metrics_file(self.rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._metrics_fh = open(path, "a", buffering=1)
        rec: dict[str, Any] = {"step": int(step)}
        rec.update({k: float(v) for k, v in metrics.items()})
        self._metrics_fh.write(json_line(rec) + "\n")
        if self._tb_writer is not None:
            for k, v in metrics.items():
                self._tb_writer.add_scalar(k, float(v), int(step))

    def tensorboard(self):
        """A SummaryWriter for this rank's events (needs the 'tensorboard' package); metrics
        logged afterwards through log_metrics are mirrored into it."""
        if self._tb_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb_writer = SummaryWriter(log_dir=str(self.results.tensorboard_dir / f"rank{self.rank}"))
        return self._tb_writer

    def save_capture(self, name: str, tensors: Mapping[str, Any]) -> Path:
        """Save a flat dict of tensors (CPU copies) for the comparator: captures/{name}/rank{R}.pt."""
        import torch

        path = self.results.capture_file(name, self.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        flat = {str(k): v.detach().to("cpu").clone() for k, v in tensors.items()}
        buf = io.BytesIO()
        torch.save(flat, buf)
        write_bytes_atomic(path, buf.getvalue())
        return path

    def record(self, key: str, value: Any) -> None:
        """Record a JSON-able fact (a timing, a fingerprint) in info/rank{R}.json."""
        self._info[key] = value
        write_json_atomic(self.results.info_file(self.rank), self._info)

    def close(self) -> None:
        if self._metrics_fh is not None:
            self._metrics_fh.close()
            self._metrics_fh = None
        if self._tb_writer is not None:
            self._tb_writer.flush()
            self._tb_writer.close()
            self._tb_writer = None


def now() -> float:
    return time.perf_counter()


def read_launch(path: str | os.PathLike[str]) -> Launch:
    return Launch.from_json(json.loads(Path(path).read_text()))
