"""The results directory of one launch: layout, writers used by ranks, readers used by the runner.

Layout (everything below ``<results_dir>``)::

    launch.json                 the Launch record the workers read back
    logs/rank{R}.log            stdout+stderr of rank R (the worker redirects its fds here)
    logs/launcher*.log          what the launcher itself printed (torchrun agents, sbatch, pods)
    done/rank{R}.json           completion record of rank R: {"status": "ok"|"error", ...}
    metrics/rank{R}.jsonl       per-step metrics: {"step": N, "<metric>": value, ...}
    tensorboard/                TensorBoard event files (optional)
    captures/{name}/rank{R}.pt  tensor captures: a flat dict[str, Tensor] per rank
    info/rank{R}.json           free-form facts a rank records (timings, fingerprints)

This record, not the scheduler's accounting, decides pass/fail. Readers here do not import
torch unless a capture is loaded.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from runner.errors import UsageError


def write_bytes_atomic(path: Path, payload: bytes, *, durable: bool = True) -> None:
    """Write via a temporary file in the same folder, fsync, rename: readers never see half a file.

    ``durable=False`` skips the fsync (tens of milliseconds on a busy disk): for records that
    only matter while this machine is up (a completion record the runner reads at once, a
    launch's ownership record), the rename alone keeps readers from seeing half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 2, durable: bool = True) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=indent, allow_nan=True) + "\n").encode(), durable=durable)


class MetricsError(UsageError):
    """A metrics file the ranks wrote cannot be read: the case is an ERROR naming file and line."""


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetricsError(f"{path}: not valid UTF-8 at byte {exc.start}") from None
    except OSError as exc:
        raise MetricsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return text.splitlines()


class ResultsDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # -- layout -------------------------------------------------------------------------
    def log_file(self, rank: int) -> Path:
        return self.path / "logs" / f"rank{rank}.log"

    def done_file(self, rank: int) -> Path:
        return self.path / "done" / f"rank{rank}.json"

    def metrics_file(self, rank: int) -> Path:
        return self.path / "metrics" / f"rank{rank}.jsonl"

    def capture_file(self, name: str, rank: int) -> Path:
        return self.path / "captures" / name / f"rank{rank}.pt"

    def info_file(self, rank: int) -> Path:
        return self.path / "info" / f"rank{rank}.json"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    # -- readers ------------------------------------------------------------------------
    def completion_records(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        done = self.path / "done"
        if not done.is_dir():
            return out
        for f in done.glob("rank*.json"):
            try:
                rank = int(f.stem[4:])
                out[rank] = json.loads(f.read_text())
            except (ValueError, json.JSONDecodeError):
                continue
        return out

    def metrics(self) -> dict[str, dict[int, float]]:
        """Merge every rank's metrics: metric -> step -> value (lowest rank wins a clash)."""
        out: dict[str, dict[int, float]] = {}
        mdir = self.path / "metrics"
        if not mdir.is_dir():
            return out
        files = sorted(mdir.glob("rank*.jsonl"), key=lambda p: int(p.stem[4:]))
        for f in files:
            for lineno, line in enumerate(_read_lines(f), 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, ValueError) as exc:
                    raise MetricsError(f"{f}:{lineno}: malformed metrics line ({exc}): {line[:80]!r}") from None
                step = rec.get("step") if isinstance(rec, dict) else None
                if not isinstance(step, int) or isinstance(step, bool):
                    raise MetricsError(f"{f}:{lineno}: a metrics line must be an object with an integer "
                                       f"'step': {line[:80]!r}")
                for key, value in rec.items():
                    if key == "step":
                        continue
                    if value is None:
                        value = math.nan
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        out.setdefault(key, {}).setdefault(step, float(value))
        return out

    def info(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        idir = self.path / "info"
        if not idir.is_dir():
            return out
        for f in idir.glob("rank*.json"):
            try:
                out[int(f.stem[4:])] = json.loads(f.read_text())
            except (ValueError, json.JSONDecodeError):
                continue
        return out

    def capture_names(self) -> list[str]:
        """The captures the launch wrote (folder names under ``captures/``), sorted."""
        cdir = self.path / "captures"
        return sorted(p.name for p in cdir.iterdir() if p.is_dir()) if cdir.is_dir() else []

    def capture_ranks(self, name: str) -> list[int]:
        cdir = self.path / "captures" / name
        if not cdir.is_dir():
            return []
        return sorted(int(p.stem[4:]) for p in cdir.glob("rank*.pt"))

    def load_capture(self, name: str, rank: int) -> dict[str, Any]:
        import torch  # only when captures are compared

        return torch.load(self.capture_file(name, rank), map_location="cpu", weights_only=True)

    def log_tail(self, rank: int, lines: int = 20) -> str:
        return tail(self.log_file(rank), lines)

    def iter_logs(self) -> Iterator[Path]:
        ldir = self.path / "logs"
        if ldir.is_dir():
            yield from sorted(ldir.glob("*.log"))


def tail(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def describe_exit(code: int | None) -> str:
    """An exit status in words: 'exit code 7', 'killed by SIGSEGV (signal 11)', 'killed by SIGKILL
    (signal 9; possibly OOM-killed)'. Negative codes are Popen's signals; 129..159 are a shell's."""
    import signal

    if code is None:
        return "no exit code"
    signum = -code if code < 0 else (code - 128 if 128 < code < 160 else None)
    if signum is None:
        return f"exit code {code}"
    try:
        name = signal.Signals(signum).name
    except ValueError:
        return f"exit code {code}"
    text = f"killed by {name} (signal {signum}" + (f", exit code {code}" if code > 0 else "")
    if signum == signal.SIGKILL:
        text += "; possibly OOM-killed"
    return text + ")"


def json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, allow_nan=True, separators=(",", ":"))
