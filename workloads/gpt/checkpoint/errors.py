"""The one error type of checkpoint I/O, and how a foreign exception becomes part of its
one-line message."""
from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or loaded; the message is one line naming the path."""


def one_line(e: BaseException) -> str:
    """``e``'s message on one line, at most 300 characters."""
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")
