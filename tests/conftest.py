from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RUNNER_SHARED_DIR", ROOT.parent / "shared"))
MEGATRON_CASES = SHARED / "megatron" / "test_cases" / "gpt"


@pytest.fixture
def megatron_cases() -> Path:
    if not MEGATRON_CASES.is_dir():
        pytest.fail(f"the shared Megatron test cases are missing: {MEGATRON_CASES}")
    return MEGATRON_CASES

# the real Slurm cluster fixture (slurm_cluster), shared by the Slurm tests
pytest_plugins = ["conftest_slurm"]
