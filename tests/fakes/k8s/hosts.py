"""Editing /etc/hosts so the pods' names resolve, and putting it back."""
from __future__ import annotations

import fcntl
from pathlib import Path


class HostsFile:
    """Adds marked ``127.0.0.1 name`` lines to a hosts file and takes them out again.

    Edits happen in place (the file may be a bind mount) under an flock. ``restore`` writes
    the original bytes back when the only difference is our lines."""

    def __init__(self, path: Path, tag: str) -> None:
        self.path = path
        self.marker = f"# k8s-standin {tag}"
        self.original = path.read_bytes()
        self.current: tuple[str, ...] = ()

    def _edit(self, names: tuple[str, ...]) -> None:
        with open(self.path, "r+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                text = fh.read().decode()
                kept = [ln for ln in text.splitlines(keepends=True) if not ln.rstrip("\n").endswith(self.marker)]
                body = "".join(kept)
                if names:
                    if body and not body.endswith("\n"):
                        body += "\n"
                    body += "".join(f"127.0.0.1 {n} {self.marker}\n" for n in names)
                elif body.rstrip("\n") == self.original.decode().rstrip("\n"):
                    body = self.original.decode()
                fh.seek(0)
                fh.write(body.encode())
                fh.truncate()
                fh.flush()
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        self.current = names

    def set(self, names: set[str]) -> None:
        wanted = tuple(sorted(names))
        if wanted != self.current:
            self._edit(wanted)

    def restore(self) -> None:
        self._edit(())
