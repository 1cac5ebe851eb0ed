"""`--dry-run` of the project's own suite on every built-in backend: what would be submitted
is valid (bash syntax for the sbatch scripts, the real Kubernetes schemas for the manifests),
and nothing starts."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from test_kubernetes_manifests import assert_valid

ROOT = Path(__file__).resolve().parents[2]


def dry_run(tmp_path: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "runner", "run", "specs/", "--dry-run",
                           "--results-dir", str(tmp_path / "results"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "results").exists()
    return proc.stdout


def test_slurm_dry_run_prints_valid_sbatch_scripts(tmp_path):
    out = dry_run(tmp_path, "--backend", "slurm")
    scripts = re.split(r"^# \S+ \[[^\]]+\] on slurm\n", out, flags=re.M)[1:]
    n_cases = len(subprocess.run([sys.executable, "-m", "runner", "list", "specs/"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip().splitlines()) - 2
    assert len(scripts) >= n_cases > 20          # ckpt-resume cases have two launches
    for script in scripts:
        assert script.startswith("#!/bin/bash") or script.startswith("#!/usr/bin/env bash"), script[:80]
        assert "#SBATCH --nodes=" in script and "torch.distributed.run" in script
        check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr + script


def test_kubernetes_dry_run_manifests_pass_the_schemas(tmp_path):
    out = dry_run(tmp_path, "--backend", "kubernetes", "--backend-opt", "image=registry.local/runner:1")
    objects = [d for d in yaml.safe_load_all(out) if d is not None]
    kinds = [o["kind"] for o in objects]
    assert kinds.count("Job") > 20 and kinds.count("Job") == kinds.count("Service")
    assert_valid(objects)
