from __future__ import annotations

from pathlib import Path

import pytest

from paths import MEGATRON_CASES


@pytest.fixture
def megatron_cases() -> Path:
    if not MEGATRON_CASES.is_dir():
        pytest.fail(f"the shared Megatron test cases are missing: {MEGATRON_CASES}")
    return MEGATRON_CASES

# the real Slurm cluster fixture (slurm_cluster), shared by the Slurm tests
pytest_plugins = ["conftest_slurm"]
