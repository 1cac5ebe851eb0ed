"""Where the tests find the repository and the shared Megatron-LM test cases."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
# the shared folder beside the clone (<repo>/../shared; in a git worktree one level deeper:
# <repo>/../../shared); RUNNER_SHARED_DIR overrides
SHARED = Path(os.environ["RUNNER_SHARED_DIR"]) if os.environ.get("RUNNER_SHARED_DIR") else next(
    (p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if (p / "megatron").is_dir()),
    REPO.parent / "shared")
MEGATRON_CASES = SHARED / "megatron" / "test_cases" / "gpt"
