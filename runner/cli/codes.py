"""Exit codes (pytest's) and how a run's results map to one."""
from __future__ import annotations

from typing import Sequence

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_TESTS = 0, 1, 2, 3, 4, 5


def exit_code(results: Sequence, *, interrupted: bool = False, forgiven: frozenset[str] | set[str] = frozenset()) -> int:
    """pytest's codes; ``forgiven``: case ids whose failure does not count (goldens rewritten)."""
    if interrupted:
        return EXIT_INTERRUPTED
    if not results:
        return EXIT_NO_TESTS
    if any(r.verdict.is_failure and r.case.id not in forgiven for r in results):
        return EXIT_FAILED
    return EXIT_OK
