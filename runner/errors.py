"""Errors the CLI turns into one-line messages and exit codes."""
from __future__ import annotations

import difflib
from typing import Iterable


class UsageError(Exception):
    """A user mistake: bad spec, bad flag, unknown plugin id. Exit code 4.

    The message is shown as one line, without a traceback.
    """

    exit_code = 4


class SpecError(UsageError):
    """A problem at a known place in a spec file."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 col: int | None = None, key: str | None = None) -> None:
        self.file = file
        self.line = line
        self.col = col
        self.key = key
        self.bare_message = message
        where = file or "<spec>"
        if line is not None:
            where += f":{line}"
            if col is not None:
                where += f":{col}"
        prefix = f"{where}: "
        if key:
            prefix += f"{key}: "
        super().__init__(prefix + message)


class CaseError(UsageError):
    """A semantic problem with one case (raised by case kinds' validation).

    ``key`` is the dotted key path inside the case (e.g. ``args.topk``); the loader
    adds the file position of that key when it knows it.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.bare_message = message
        super().__init__(f"{key}: {message}")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
