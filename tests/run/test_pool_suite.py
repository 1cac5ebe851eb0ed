"""Verdicts are the same pooled and unpooled: the whole unit suite (specs/unit/) plus the
a2a_overlap planted faults, once in warm pools and once with ``--no-reuse``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workloads.moe.kind import FAULT_NAMES

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, name: str, *extra: str) -> dict[str, dict]:
    report = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, "-m", "runner", "run", "specs/unit/", str(tmp_path / "faults.yaml"),
                           "--results-dir", str(tmp_path / name), "--json", str(report), "--platform", "cpu",
                           *extra], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 1, proc.stdout[-5000:] + proc.stderr[-3000:]   # the faults fail
    return {c["id"]: c for c in json.loads(report.read_text())["cases"]}


def _first(detail: str) -> str:
    """A failed detail's first mismatch: rank, key, counts, index (up to the first '(+N more')."""
    return detail.split(" (+", 1)[0]


@pytest.mark.slow
@pytest.mark.timeout(3600)   # the unpooled run is 21 fresh 4-rank launches
def test_unit_suite_and_planted_faults_have_the_same_verdicts_pooled_and_unpooled(tmp_path: Path) -> None:
    (tmp_path / "faults.yaml").write_text(json.dumps({
        "defaults": {"kind": "a2a_overlap", "timeout": 300, "resources": {"nodes": 1, "nproc_per_node": 4},
                     "args": {"hidden": 64, "heads": 4, "seq_len": 32}},
        "cases": [{"name": "fault_{fault}", "matrix": {"fault": list(FAULT_NAMES)},
                   "args": {"variant": "moe", "inject_fault": "{fault}"}}],
    }))
    pooled = run(tmp_path, "pooled")
    unpooled = run(tmp_path, "unpooled", "--no-reuse")
    assert (tmp_path / "pooled" / ".pools").is_dir() and not (tmp_path / "unpooled" / ".pools").exists()
    assert len(pooled) == 18 + len(FAULT_NAMES)
    assert {i: c["verdict"] for i, c in pooled.items()} == {i: c["verdict"] for i, c in unpooled.items()}
    for case_id, case in pooled.items():
        if "fault_" in case_id:
            assert case["verdict"] == "FAILED", case
            # the same first tensor, rank and index named either way (how many more tensors a
            # skipped wait lets through poisoned depends on timing; that it fails does not)
            assert _first(case["detail"]) == _first(unpooled[case_id]["detail"]), (case, unpooled[case_id])
        else:
            assert case["verdict"] == "PASSED", case
