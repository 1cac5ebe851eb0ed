"""Command line: ``runner run|list|validate|show|plugins|golden|compare|schema|history``.

One module per command family (``run``, ``cases``: list/validate/show, ``plugins``,
``compare``), the parser in ``parser``, the session set-up they share in ``setup``. Exit
codes (pytest's) are in ``codes``; errors become exit codes in ``main.main`` and only there
(a UsageError is one line on stderr and exit 4). Nothing here imports torch: listing,
validating and dry runs stay fast.
"""
from __future__ import annotations

from runner.cli.codes import (EXIT_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_NO_TESTS, EXIT_OK, EXIT_USAGE,
                              exit_code)
from runner.cli.main import main
from runner.cli.parser import build_parser

__all__ = ["EXIT_FAILED", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_NO_TESTS", "EXIT_OK", "EXIT_USAGE",
           "build_parser", "exit_code", "main"]
