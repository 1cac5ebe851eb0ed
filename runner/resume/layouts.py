"""Checkpoint layouts: how a training script lays out its checkpoint folder, as far as the
resume test needs to know it (which iterations are saved; rewind to one of them).

A layout is a class with a static ``id`` and two methods, registered with the
``runner_register_layouts`` hook::

    class MyLayout(CheckpointLayout):
        id = "mine"
        def saved_iterations(self, folder): ...      # sorted iteration numbers
        def rewind(self, folder, iteration): ...     # drop later checkpoints, point the marker here

The module imports without torch: layouts work on files only.
"""
from __future__ import annotations

import abc
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

from runner.hookspecs import hookimpl


class LayoutError(RuntimeError):
    """The checkpoint folder cannot be rewound; the message is one line naming the path."""


class CheckpointLayout(abc.ABC):
    id: ClassVar[str]
    description: ClassVar[str] = ""

    @abc.abstractmethod
    def saved_iterations(self, folder: Path) -> list[int]:
        """The iterations with a checkpoint in ``folder``, ascending."""

    @abc.abstractmethod
    def rewind(self, folder: Path, iteration: int) -> list[int]:
        """Remove every checkpoint after ``iteration`` and make ``iteration`` the one a resumed
        run loads; returns the iterations removed."""


class MegatronLayout(CheckpointLayout):
    """Megatron-LM's layout: ``iter_{N:07d}/`` per saved iteration and
    ``latest_checkpointed_iteration.txt`` holding the iteration a run with ``--load`` resumes."""

    id = "megatron"
    description = "Megatron-LM: iter_XXXXXXX/ folders, latest_checkpointed_iteration.txt"
    MARKER = "latest_checkpointed_iteration.txt"
    _ITER = re.compile(r"^iter_(\d{7,})$")

    def iteration_dir(self, folder: Path, iteration: int) -> Path:
        return Path(folder) / f"iter_{int(iteration):07d}"

    def saved_iterations(self, folder: Path) -> list[int]:
        folder = Path(folder)
        if not folder.is_dir():
            return []
        out = []
        for p in folder.iterdir():
            m = self._ITER.match(p.name)
            if m and p.is_dir():
                out.append(int(m.group(1)))
        return sorted(out)

    def rewind(self, folder: Path, iteration: int) -> list[int]:
        folder = Path(folder)
        saved = self.saved_iterations(folder)
        if iteration not in saved:
            raise LayoutError(f"{self.iteration_dir(folder, iteration)}: no checkpoint to resume from "
                              f"(saved iterations: {saved or 'none'})")
        removed = [it for it in saved if it > iteration]
        for it in removed:
            shutil.rmtree(self.iteration_dir(folder, it))
        _write_text_atomic(folder / self.MARKER, str(int(iteration)))
        return removed


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@hookimpl
def runner_register_layouts(registry) -> None:
    registry.add(MegatronLayout)
