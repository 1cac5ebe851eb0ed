"""Where the tests find the repository and the shared Megatron-LM test cases."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
SHARED = Path(os.environ.get("RUNNER_SHARED_DIR", REPO.parent / "shared"))
MEGATRON_CASES = SHARED / "megatron" / "test_cases" / "gpt"
