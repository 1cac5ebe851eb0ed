"""The megatron case source over Megatron-LM's own GPT functional cases (as they are, from
the shared folder beside the repository), and the built-in workload's Megatron command line."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from paths import MEGATRON_CASES

from runner.cli import main
from workloads.gpt.megatron_args import (MAPPED, PATHS, WITHOUT_EFFECT, MegatronArgError, UnsupportedArgs,
                                         model_args_to_argv, parse)

ROOT = Path(__file__).resolve().parents[2]
GPT = MEGATRON_CASES
CASES = GPT.parent
OVERLAY = ROOT / "specs" / "megatron" / "cpu-overlay.yaml"
needs_shared = pytest.mark.usefixtures("megatron_cases")     # fails, naming the folder, when it is missing


@needs_shared
def test_every_argument_of_the_shared_cases_is_known() -> None:
    known = set(MAPPED) | set(PATHS) | set(WITHOUT_EFFECT)
    for cfg in sorted(GPT.glob("*/model_config.yaml")):
        flags = set(yaml.safe_load(cfg.read_text())["MODEL_ARGS"])
        assert flags <= known, (cfg.parent.name, sorted(flags - known))


def test_megatron_command_line_maps_to_the_config() -> None:
    argv = model_args_to_argv({"--num-layers": 8, "--hidden-size": 64, "--num-attention-heads": 4,
                               "--seq-length": 64, "--max-position-embeddings": 64, "--micro-batch-size": 2,
                               "--global-batch-size": 16, "--train-iters": 20, "--lr": 0.003, "--min-lr": 1.0e-5,
                               "--weight-decay": "1e-2", "--lr-decay-style": "cosine", "--bf16": True,
                               "--use-distributed-optimizer": True, "--overlap-grad-reduce": False,
                               "--pipeline-model-parallel-size": 4, "--num-layers-per-virtual-pipeline-stage": 1,
                               "--save": "/c", "--load": "/c", "--save-interval": 10, "--tensorboard-dir": "/tb",
                               "--mock-data": True, "--vocab-size": 512, "--log-params-norm": True})
    assert "--overlap-grad-reduce" not in argv and argv[argv.index("--bf16") + 1].startswith("--")
    run = parse(argv)
    c = run.config
    assert (c["num_layers"], c["pipeline_model_parallel_size"], c["num_layers_per_virtual_pipeline_stage"]) == (8, 4, 1)
    assert (c["weight_decay"], c["min_lr"], c["bf16"], c["use_distributed_optimizer"]) == (0.01, 1e-5, True, True)
    assert "overlap_grad_reduce" not in c and c["deterministic_mode"] is False    # Megatron's defaults
    assert (run.save, run.load, run.tensorboard_dir, run.data) == ("/c", "/c", "/tb", "builtin")
    assert run.without_effect == ("--log-params-norm",)


def test_unsupported_arguments_are_listed_or_ignored_with_opt_in() -> None:
    base = ["--num-layers", "2", "--hidden-size", "8", "--num-attention-heads", "2", "--seq-length", "8",
            "--max-position-embeddings", "8", "--micro-batch-size", "1", "--global-batch-size", "2",
            "--train-iters", "2", "--lr", "0.1", "--mock-data", "--vocab-size", "64"]
    with pytest.raises(UnsupportedArgs) as exc:
        parse(base + ["--num-experts", "8", "--fp8-format", "hybrid"])
    assert exc.value.flags == ("--num-experts", "--fp8-format") and "--num-experts, --fp8-format" in str(exc.value)
    assert parse(base + ["--num-experts", "8"], unsupported="warn").ignored == ("--num-experts",)
    with pytest.raises(MegatronArgError, match="--num-layers: expected int"):
        parse(["--num-layers", "x"] + base[2:])


@needs_shared
def test_list_and_validate_show_every_case_with_its_test_type(capsys) -> None:
    for command in ("list", "validate"):
        assert main([command, str(CASES)]) == 0
        out = capsys.readouterr().out
        for cfg in GPT.glob("*/model_config.yaml"):
            test_type = yaml.safe_load(cfg.read_text())["TEST_TYPE"]
            line = next(ln for ln in out.splitlines() if f"::{cfg.parent.name} " in ln)
            assert test_type in line, (command, line)
    # with the CPU overlay nothing is skipped; on a GPU platform Megatron's own goldens are read
    assert main(["list", str(GPT), "--overlay", str(OVERLAY)]) == 0
    assert "SKIPPED" not in capsys.readouterr().out
    assert main(["validate", str(GPT), "--platform", "dgx_a100"]) == 0
    capsys.readouterr()
    # `runner show` takes the id `runner list` printed, wherever the case folder lies
    assert main(["list", str(GPT), "--overlay", str(OVERLAY)]) == 0
    case_id = capsys.readouterr().out.splitlines()[0].split()[0]
    assert main(["show", case_id, "--overlay", str(OVERLAY)]) == 0
    shown = capsys.readouterr().out
    assert f'"id": "{case_id}"' in shown and "# launch 'run1'" in shown


@needs_shared
def test_errors_in_a_model_config_name_file_line_col_and_key(tmp_path: Path, capsys) -> None:
    src = GPT / "gpt3_mcore_te_tp1_pp1_resume_torch_dist_dist_optimizer" / "model_config.yaml"
    case = tmp_path / "gpt" / "bad_case"
    case.mkdir(parents=True)
    text = src.read_text().replace("--num-layers: 12", "--num-layers: 7")
    (case / "model_config.yaml").write_text(text)
    # a CPU golden for the case, so it is validated rather than skipped
    golden = tmp_path / "golden" / "bad_case"
    golden.mkdir(parents=True)
    (golden / "golden_values_dev_cpu.json").write_bytes(
        (ROOT / "golden" / "megatron-cpu" / src.parent.name / "golden_values_dev_cpu.json").read_bytes())
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(OVERLAY.read_text().replace("golden_dir: ../../golden/megatron-cpu", "golden_dir: golden"))
    assert main(["validate", str(case), "--overlay", str(overlay)]) == 0   # the overlay's 8 layers win
    (case / "model_config.yaml").write_text(text.replace("MODEL_ARGS:\n", "MODEL_ARGS:\n  --num-experts: 8\n"))
    assert main(["validate", str(case), "--overlay", str(overlay)]) == 4
    err = capsys.readouterr().err.strip()
    line = next(i for i, ln in enumerate((case / "model_config.yaml").read_text().splitlines(), 1) if "--num-experts" in ln)
    assert re.search(rf"model_config.yaml:{line}:\d+: MODEL_ARGS.--num-experts: .*not supported", err), err
    assert len(err.splitlines()) == 1
    (case / "model_config.yaml").write_text(text.replace("MODEL_ARGS:", "MODEL_ARG:"))
    assert main(["validate", str(case)]) == 4
    assert "MODEL_ARG" in capsys.readouterr().err


@needs_shared
@pytest.mark.slow
def test_ckpt_resume_case_runs_on_cpu_with_the_overlay(tmp_path: Path) -> None:
    import json

    code = main(["run", str(GPT / "gpt3_mcore_te_tp1_pp1_resume_torch_dist_dist_optimizer"), "--overlay",
                 str(OVERLAY), "--golden-dir", str(ROOT / "golden"), "--results-dir", str(tmp_path / "r"),
                 "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    case = report["cases"][0]
    assert code == 0 and case["verdict"] == "PASSED", case
    names = {c["name"] for c in case["checks"] if c["passed"] and not c["skipped"]}
    assert {"golden:lm loss:deterministic", "golden:num-zeros:deterministic", "resume:lm loss:deterministic",
            "resume:num-zeros:deterministic"} <= names, names
    assert not any(c["name"].startswith("golden:iteration-time") for c in case["checks"])   # METRICS select


def _collect(folder: Path, **settings):
    from runner.plugins import PluginManager
    from runner.sources import SourceContext, collect_cases

    pm = PluginManager()
    pm.load()
    return collect_cases([str(folder)], SourceContext(pm, "cpu", folder, {"megatron": settings}))


MINIMAL = """\
ENV_VARS:
  NON_DETERMINSTIC_RESULTS: 1
MODEL_ARGS:
  --num-layers: 2
  --hidden-size: 8
  --num-attention-heads: 2
  --seq-length: 8
  --max-position-embeddings: 8
  --micro-batch-size: 1
  --global-batch-size: 2
  --train-iters: 4
  --lr: 0.1
  --mock-data: true
  --vocab-size: 64
  --tensorboard-dir: ${TENSORBOARD_PATH}
TEST_TYPE: THE_TYPE
METRICS: [lm loss, iteration-time]
"""


def test_mapping_of_test_type_metrics_and_nondeterminism(tmp_path: Path) -> None:
    for name, test_type in (("a_regular", "regular"), ("b_release", "release")):
        (tmp_path / "gpt" / name).mkdir(parents=True)
        (tmp_path / "gpt" / name / "model_config.yaml").write_text(MINIMAL.replace("THE_TYPE", test_type))
        golden = tmp_path / "golden" / name
        golden.mkdir(parents=True)
        (golden / "golden_values_dev_cpu.json").write_text(
            '{"lm loss": {"start_step": 1, "end_step": 4, "step_interval": 1, "values": {"1": 1, "2": 1, "3": 1, "4": 1}}}')
    overlay = tmp_path / "ov.yaml"
    overlay.write_text("overlay: megatron\ngolden_dir: golden\n")
    regular, release = _collect(tmp_path / "gpt", overlay=str(overlay))
    assert regular.skip is None and regular.kind == "megatron" and regular.tags == ("megatron", "regular")
    assert regular.compare == {"select": ["lm loss", "iteration-time"], "deterministic": False}
    assert regular.env["NON_DETERMINSTIC_RESULTS"] == "1" and regular.resources.world_size == 2   # CPU: tp*pp*2
    assert release.skip and "TEST_TYPE 'release'" in release.skip
    # without the overlay: no CPU golden in the case folders -> SKIPPED with the reason
    (case,) = [c for c in _collect(tmp_path / "gpt") if c.name == "a_regular"]
    assert case.skip and "no golden values for platform 'cpu'" in case.skip
