"""The ``gpt`` case kind: validation, planning, and the ckpt-resume flow through the real CLI,
including the planted-bug negative controls and a perturbed golden.

The slow test runs a small ckpt-resume case (4 ranks: PP2 x VP2 x DP2, distributed optimizer
with overlap, async torch_dist saves, dropout on) with ``runner golden update``, then the same
case with each planted checkpoint bug (``args.inject_fault``) with ``runner run``: every one
must turn FAILED, naming ``lm loss`` and the first step that differs. Which step is known in
advance: a bug in what the *forward* of the first resumed step sees (RNG -> dropout masks, data
position -> the batch) shows at the first step after the resume point; a bug in what the
*update* uses (Adam state, lr) shows one step later.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from runner.errors import CaseError
from runner.records import Case, Launch, LaunchOutcome, Outcome, Resources
from workloads.gpt.kind import ARGS_SCHEMA, GPTKind, resume_iteration
from workloads.gpt.config import GPTConfig

ROOT = Path(__file__).resolve().parents[2]

SMALL_ARGS = dict(num_layers=4, hidden_size=32, num_attention_heads=4, seq_length=32, max_position_embeddings=32,
                  vocab_size=128, micro_batch_size=2, global_batch_size=8, train_iters=6, save_interval=3,
                  lr=0.003, min_lr=0.0003, lr_warmup_fraction=0.2, pipeline_model_parallel_size=2,
                  num_layers_per_virtual_pipeline_stage=1, overlap_grad_reduce=True, overlap_param_gather=True,
                  async_save=True, num_documents=300)


def _case(args: dict, world: int = 8, name: str = "c") -> Case:
    return Case(id=f"spec.yaml::{name}", name=name, kind="gpt", args=args,
                resources=Resources(nodes=1, nproc_per_node=world), spec_file="spec.yaml")


# -- validation and planning (no processes) ----------------------------------------------------
def test_kind_module_imports_without_torch() -> None:
    import subprocess

    code = "import sys, workloads.gpt.kind; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("args,world,key,words", [
    (dict(num_layers=6, pipeline_model_parallel_size=4), 8, "args.num_layers", "not divisible"),
    (dict(num_layers=8, pipeline_model_parallel_size=4, num_layers_per_virtual_pipeline_stage=3), 8,
     "args.num_layers_per_virtual_pipeline_stage", "pp * layers_per_virtual_stage"),
    (dict(global_batch_size=12, micro_batch_size=4, pipeline_model_parallel_size=4), 8,
     "args.global_batch_size", "micro_batch_size * dp"),
    (dict(pipeline_model_parallel_size=4), 6, "args.pipeline_model_parallel_size", "tp * pp * dp"),
    (dict(tensor_model_parallel_size=2), 8, "args.tensor_model_parallel_size", "not implemented"),
    (dict(test_type="ckpt-resume"), 2, "args.save_interval", "needs save_interval"),
    (dict(test_type="ckpt-resume", save_interval=15, train_iters=20), 2, "args.save_interval", "first half"),
    (dict(test_type="ckpt-resume", save_interval=5, deterministic_mode=False), 2, "args.deterministic_mode",
     "exactly"),
    (dict(inject_fault="rng_not_saved"), 2, "args.inject_fault", "ckpt-resume"),
])
def test_validate_rejects_with_the_key(args, world, key, words) -> None:
    with pytest.raises(CaseError) as exc:
        GPTKind().validate(_case(args, world))
    assert exc.value.key == key
    assert words in str(exc.value)


def test_schema_covers_megatron_args_and_rejects_unknown() -> None:
    import jsonschema

    props = ARGS_SCHEMA["properties"]
    for name in ("num_layers", "hidden_size", "num_attention_heads", "seq_length", "max_position_embeddings",
                 "micro_batch_size", "global_batch_size", "train_iters", "lr", "min_lr", "lr_decay_style",
                 "lr_warmup_fraction", "weight_decay", "clip_grad", "bf16", "tensor_model_parallel_size",
                 "pipeline_model_parallel_size", "num_layers_per_virtual_pipeline_stage",
                 "use_distributed_optimizer", "overlap_grad_reduce", "overlap_param_gather", "save_interval",
                 "ckpt_format", "async_save", "deterministic_mode", "seed", "vocab_size", "test_type",
                 "inject_fault", "data"):
        assert name in props, name
    validator = jsonschema.Draft202012Validator(ARGS_SCHEMA)
    assert list(validator.iter_errors({"num_layers": 4, "test_type": "ckpt-resume"})) == []
    assert list(validator.iter_errors({"num_layer": 4}))
    assert list(validator.iter_errors({"test_type": "frozen-resume"}))
    assert list(validator.iter_errors({"inject_fault": "nope"}))


def test_plan_regular_and_ckpt_resume() -> None:
    kind = GPTKind()
    (main,) = kind.plan(_case({"test_type": "regular"}))
    assert (main.name, main.entry) == ("main", "workloads.gpt.worker:run")
    args = dict(test_type="ckpt-resume", train_iters=100, save_interval=50)
    run1, run2 = kind.plan(_case(args))
    # the generic resume flow: run 2 is wrapped so the runner rewinds run 1's checkpoints first
    assert (run1.name, run1.entry) == ("run1", "workloads.gpt.worker:run")
    assert (run2.name, run2.entry) == ("run2", "runner.resume.worker:run")
    assert run2.args["load_from"] == "run1" and "load_from" not in run1.args and "resume" not in run1.args
    assert run2.args["resume"] == {"entry": "workloads.gpt.worker:run", "from": "run1", "subdir": "checkpoints",
                                   "layout": "megatron", "train_iters": 100}
    assert resume_iteration(GPTConfig(train_iters=20, save_interval=3)) == 9
    assert kind.expected_steps(_case(args)) == (1, 100)


def test_megatron_reference_config_validates() -> None:
    """The gpu profile's values (Megatron's model_config.yaml) make a valid 8-rank case."""
    args = dict(num_layers=12, hidden_size=512, num_attention_heads=8, seq_length=1024, max_position_embeddings=1024,
                micro_batch_size=4, global_batch_size=32, train_iters=100, lr=0.00015, min_lr=1e-5,
                lr_decay_iters=320000, lr_warmup_fraction=0.01, weight_decay=0.01, clip_grad=1.0, bf16=True,
                pipeline_model_parallel_size=4, num_layers_per_virtual_pipeline_stage=1, save_interval=50,
                use_distributed_optimizer=True, overlap_grad_reduce=True, overlap_param_gather=True,
                async_save=True, test_type="ckpt-resume", vocab_size=50304)
    GPTKind().validate(_case(args, 8))
    cfg = GPTConfig.from_args(args)
    assert (cfg.vp, cfg.dp(8), cfg.num_microbatches(8)) == (3, 2, 4)


# -- through the CLI ----------------------------------------------------------------------------
SPEC = """
defaults:
  kind: gpt
  timeout: 240
  resources: {{nodes: 1, nproc_per_node: 4}}
  args: {args}
  compare:
    metrics:
      iteration-time: {{skip: true}}
cases:
  - name: resume_clean
  - name: resume_{{fault}}
    matrix: {{fault: [rng_not_saved, data_position_not_saved, optimizer_state_not_saved, lr_scheduler_not_restored]}}
    args: {{inject_fault: "{{fault}}"}}
    golden: {{name: resume_clean}}
"""

#: the first step after the resume point (3) that each planted bug changes
FIRST_BAD_STEP = {"rng_not_saved": 4, "data_position_not_saved": 4, "optimizer_state_not_saved": 5,
                  "lr_scheduler_not_restored": 5}


def test_validate_cli_names_case_and_key(runner_project) -> None:
    bad = dict(SMALL_ARGS, num_layers=5, test_type="ckpt-resume")
    runner_project.write("specs/bad.yaml", f"""
        cases:
          - name: bad_layers
            kind: gpt
            resources: {{nproc_per_node: 4}}
            args: {json.dumps(bad)}
    """)
    result = runner_project.run("validate", "specs", python_path=[str(ROOT)])
    assert result.exit_code == 4, result
    out = result.stdout + result.stderr
    assert "bad_layers" in out and "args.num_layers" in out, out


@pytest.mark.slow
def test_ckpt_resume_passes_and_every_planted_bug_fails(runner_project) -> None:
    args = dict(SMALL_ARGS, test_type="ckpt-resume")
    runner_project.write("specs/gpt_small.yaml", SPEC.format(args=json.dumps(args)))
    pp = [str(ROOT)]

    # 1. golden update on the clean case: run1 + run2 run, the resume checks pass, golden written
    upd = runner_project.run("golden", "update", "specs", "-k", "resume_clean", "-j", "1", python_path=pp,
                             timeout=600)
    assert upd.exit_code == 0, upd
    assert upd.verdicts == {"resume_clean": "PASSED"}, upd
    clean = upd.case("resume_clean")
    resume_checks = {c["name"]: c for c in clean["checks"] if c["name"].startswith("resume:")}
    assert set(resume_checks) == {f"resume:{m}:{c}" for m in ("lm loss", "num-zeros")
                                  for c in ("deterministic", "approximate")}
    assert all(c["passed"] and not c["skipped"] for c in resume_checks.values())
    golden = runner_project.path / "golden" / "resume_clean" / "golden_values_dev_cpu.json"
    assert golden.is_file()

    # 2. every planted bug: FAILED, naming lm loss and the first step that differs
    run = runner_project.run("run", "specs", "-k", "not resume_clean", "-j", "1", python_path=pp, timeout=900)
    assert run.exit_code == 1, run
    for fault, step in FIRST_BAD_STEP.items():
        case = run.case(f"resume_{fault}")
        assert case["verdict"] == "FAILED", (fault, case)
        failed = [c for c in case["checks"] if not c["passed"]]
        # run 1 is not affected by what is saved: only the resume comparison fails
        assert failed and all(c["name"].startswith("resume:") for c in failed), (fault, failed)
        loss = next(c for c in failed if c["name"] == "resume:lm loss:deterministic")
        assert f"first at step {step}:" in loss["detail"], (fault, loss["detail"])
        assert "lm loss" in case["detail"], (fault, case["detail"])

    # 3. a perturbed golden fails the golden check, naming the step (compare on the clean results)
    data = json.loads(golden.read_text())
    data["lm loss"]["values"]["2"] = data["lm loss"]["values"]["2"] + 1e-4
    golden.write_text(json.dumps(data))
    from runner.compare.stage import compare_case
    from runner.plan.kind import CompareContext

    launches = [Launch.from_json(json.loads(Path(la["results_dir"], "launch.json").read_text()))
                for la in clean["launches"]]
    outcomes = [LaunchOutcome(la, Outcome.COMPLETED) for la in launches]
    case = Case(id="x::resume_clean", name="resume_clean", kind="gpt", args=args,
                resources=Resources(1, 4), spec_file=str(runner_project.path / "specs" / "gpt_small.yaml"),
                compare={"metrics": {"iteration-time": {"skip": True}}})
    ctx = CompareContext(golden_root=runner_project.path / "golden", platform="cpu")
    checks = compare_case(GPTKind(), case, outcomes, ctx)   # the kind's checks and the comparison stage's
    failed = [c for c in checks if not c.passed]
    assert [c.name for c in failed] == ["golden:lm loss:deterministic"], failed
    assert "step 2:" in failed[0].detail


def test_direct_launch_results_only_when_every_rank_completed(tmp_path: Path) -> None:
    from workloads.gpt.direct import completed_results, direct_launch

    launch = direct_launch(tmp_path / "main", {"train_iters": 2}, nproc=2, timeout=60, case_id="test::gpt_direct")
    assert (launch.entry, launch.kind, launch.world_size, launch.job_name) == (
        "workloads.gpt.worker:run", "gpt", 2, "test-gpt-direct")
    assert completed_results(LaunchOutcome(launch, Outcome.COMPLETED), tmp_path / "main").path == tmp_path / "main"
    with pytest.raises(RuntimeError, match="main: workers failed: rank 1 exited 3"):
        completed_results(LaunchOutcome(launch, Outcome.ERROR, detail="rank 1 exited 3"), tmp_path / "main")
