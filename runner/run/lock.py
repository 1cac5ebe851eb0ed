"""One runner per results root: an exclusive lock file, ``<root>/.runner/lock``.

The lock is an ``flock`` on that file, held for the whole session; the holder's PID and
start time are written inside so a second runner can name it. The kernel drops an flock
when its process dies, so a lock left by a killed runner is simply taken over. Where the
filesystem has no flock (some network filesystems), the PID inside decides: a lock whose
holder is not alive any more is taken over.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
from pathlib import Path

LOCK_FILE = Path(".runner") / "lock"


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _holder(text: str) -> tuple[int, str] | None:
    parts = text.split()
    if not parts or not parts[0].isdigit():
        return None
    return int(parts[0]), (parts[1] if len(parts) > 1 else "")


def _alive(pid: int, started: str) -> bool:
    now = _start_time(pid)
    return bool(now) and (not started or now == started)


class ResultsLock:
    def __init__(self) -> None:
        self.fd: int | None = None
        self.path: Path | None = None

    def acquire(self, root: Path) -> int | None:
        """Take the lock of ``root``; None on success, else the holder's PID (0: unknown)."""
        if self.fd is not None and self.path == root / LOCK_FILE:
            return None
        path = root / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                held = _holder(os.pread(fd, 64, 0).decode("ascii", "replace"))
                os.close(fd)
                return held[0] if held else 0
            # no flock here: fall back to the PID written inside
            held = _holder(os.pread(fd, 64, 0).decode("ascii", "replace"))
            if held and held[0] != os.getpid() and _alive(*held):
                os.close(fd)
                return held[0]
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {_start_time(os.getpid())}\n".encode(), 0)
        self.release()
        self.fd, self.path = fd, path
        return None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = self.path = None


def root_tag(results_root: str | os.PathLike[str]) -> str:
    """A short, stable tag of a results root (12 hex digits) for job comments and labels."""
    return hashlib.sha1(str(Path(results_root).resolve()).encode()).hexdigest()[:12]


def owner_tag() -> str:
    """This process as ``<pid>.<start time>.<host>``: which runner submitted a job."""
    return f"{os.getpid()}.{_start_time(os.getpid())}.{socket.gethostname()}"


def owner_alive(tag: str) -> bool:
    """Is the runner an ``owner_tag`` names still alive? (Only knowable on its own host.)"""
    pid, _, rest = tag.partition(".")
    started, _, host = rest.partition(".")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return _alive(int(pid), started)
