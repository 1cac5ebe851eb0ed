"""The project's own suites through the real two-node Slurm cluster (issue acceptance):
`runner run specs/unit/ --backend slurm` as written (its cases in one warm pool allocation),
the a2a cases across both nodes, and the GPT ckpt-resume case across two nodes."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from test_slurm_e2e import ROOT, runner_env

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def run(cluster: Any, tmp_path: Path, *args: str, timeout: float = 1800) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "r.json"
    proc = subprocess.run(["python", "-m", "runner", "run", *args, "--backend", "slurm",
                           "--results-dir", str(tmp_path / "results"), "--json", str(report)],
                          env=runner_env(cluster), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc, (json.loads(report.read_text()) if report.is_file() else {})


def nodes_of(case: dict) -> dict[int, str]:
    out = {}
    for launch in case["launches"]:
        for f in (Path(launch["results_dir"]) / "done").glob("rank*.json"):
            out[int(f.stem[4:])] = json.loads(f.read_text())["node"]
    return out


def pids_of(case: dict) -> frozenset[int]:
    return frozenset(json.loads(f.read_text())["pid"] for launch in case["launches"]
                     for f in (Path(launch["results_dir"]) / "done").glob("rank*.json"))


def test_unit_specs_pass_on_slurm(slurm_cluster, tmp_path):
    proc, report = run(slurm_cluster, tmp_path, "specs/unit/")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    verdicts = {c["name"]: c["verdict"] for c in report["cases"]}
    assert len(verdicts) >= 18 and set(verdicts.values()) == {"PASSED"}, verdicts
    assert all(c["backend"] == "slurm" for c in report["cases"])
    # the cases share one shape (1 node x 4 processes): one warm pool allocation ran them all
    assert len({pids_of(c) for c in report["cases"]}) == 1
    assert len({n for c in report["cases"] for n in nodes_of(c).values()}) == 1
    pools = list((tmp_path / "results" / ".pools").glob("pool-*/run/logs/launcher-*.log"))
    assert len(pools) == 1, pools


def test_a2a_cases_spanning_both_nodes(slurm_cluster, tmp_path):
    """Expert parallelism across nodes: 4 ranks as 2 nodes x 2 processes."""
    spec = yaml.safe_load((ROOT / "specs/unit/a2a_overlap.yaml").read_text())
    spec["defaults"]["resources"] = {"nodes": 2, "nproc_per_node": 2}
    path = tmp_path / "a2a_two_nodes.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc, report = run(slurm_cluster, tmp_path, str(path), "-k",
                       "layer_1f1b_moe_float32 or chunk_1f1b_moe_shared_expert_bfloat16_layers2_1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert {c["name"]: c["verdict"] for c in report["cases"]} == {
        "layer_1f1b_moe_float32": "PASSED", "chunk_1f1b_moe_shared_expert_bfloat16_layers2_1": "PASSED"}
    for case in report["cases"]:
        nodes = nodes_of(case)
        assert sorted(nodes.values()) == ["n1", "n1", "n2", "n2"], nodes


def test_gpt_ckpt_resume_across_two_nodes(slurm_cluster, tmp_path):
    """Megatron's reference case (PP4 x VP x DP2, dist-opt, overlap, torch_dist, resume) with its
    8 ranks as 2 nodes x 4, against the same cpu golden as the one-node run: the layout of
    ranks over nodes must not change a single number."""
    spec = yaml.safe_load((ROOT / "specs/functional/gpt3.yaml").read_text())
    spec["defaults"]["resources"] = {"nodes": 2, "nproc_per_node": 4}
    path = tmp_path / "gpt_two_nodes.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    name = "gpt3_mcore_te_tp1_pp4_vp1_resume_torch_dist_dist_optimizer_overlap_grad_reduce_param_gather"
    proc, report = run(slurm_cluster, tmp_path, f"{path}::{name}", "--golden-dir", str(ROOT / "golden"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (case,) = report["cases"]
    assert case["verdict"] == "PASSED", case["detail"]
    assert [launch["name"] for launch in case["launches"]] == ["run1", "run2"]
    checks = {c["name"] for c in case["checks"]}
    assert "resume:lm loss:deterministic" in checks and "golden:lm loss:deterministic" in checks
    for launch in case["launches"]:
        nodes = nodes_of({"launches": [launch]})
        assert sorted(nodes.values()) == ["n1"] * 4 + ["n2"] * 4, nodes
