"""The generic `script` kind: modules, argv, TensorBoard metrics, golden values."""
from __future__ import annotations

import json

import pytest

TB_SCRIPT = '''
import os, sys
from torch.utils.tensorboard import SummaryWriter
import torch.distributed as dist
dist.init_process_group("gloo")
if dist.get_rank() == 0:
    w = SummaryWriter(os.environ["RUNNER_TENSORBOARD_DIR"])
    for step in range(1, 6):
        w.add_scalar("lm loss", 4.0 / step + float(sys.argv[1]), step)
        w.add_scalar("num-zeros", 0.0, step)
    w.close()
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_tensorboard_metrics_and_module_entry(runner_project):
    runner_project.write("specs/tb.py", TB_SCRIPT)
    runner_project.write("pkg_under_test/__init__.py", "")
    runner_project.write("pkg_under_test/train.py", '''
import json, os, sys
assert sys.argv[1:] == ["--flag", "7", "true"], sys.argv
with open(os.environ["RUNNER_METRICS_FILE"], "w") as fh:
    fh.write(json.dumps({"step": 1, "lm loss": 2.5}) + "\\n")
''')
    runner_project.write("specs/s.yaml", """
        cases:
          - {name: tb, kind: script, resources: {nproc_per_node: 2}, args: {script: tb.py, argv: ["0.0"], metrics: tensorboard}}
          - {name: mod, kind: script, args: {module: pkg_under_test.train, argv: ["--flag", 7, true]}}
    """)
    golden = runner_project.path / "golden"
    (golden / "tb").mkdir(parents=True)
    (golden / "tb" / "golden_values_dev_cpu.json").write_text(json.dumps({
        "lm loss": {"start_step": 1, "end_step": 5, "step_interval": 1,
                    # a golden without a fingerprint sidecar is Megatron's: 5-decimal values
                    "values": {str(s): round(4.0 / s, 5) for s in range(1, 6)}}}))
    (golden / "mod").mkdir(parents=True)
    (golden / "mod" / "golden_values_dev_cpu.json").write_text(json.dumps({
        "lm loss": {"start_step": 1, "end_step": 1, "step_interval": 1, "values": {"1": 2.5}}}))
    r = runner_project.run("run", "specs", env={"PYTHONPATH": str(runner_project.path)})
    assert r.exit_code == 0, r
    assert r.verdicts == {"tb": "PASSED", "mod": "PASSED"}
    runner_project.write("specs/s.yaml", """
        cases:
          - {name: tb, kind: script, resources: {nproc_per_node: 2}, args: {script: tb.py, argv: ["0.5"], metrics: tensorboard}}
    """)
    r = runner_project.run("run", "specs")
    assert r.exit_code == 1 and r.verdicts == {"tb": "FAILED"}
    assert "lm loss exact: 5/5 steps differ; first at step 1" in r.case("tb")["detail"]
