"""The generic ckpt-resume flow: the Megatron checkpoint layout, and a user's own training
script (specs/examples/resume_train.yaml) through the real CLI — passing, and failing on a
planted resume bug (the LR scheduler not saved) with the metric and the step named."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.resume.layouts import LayoutError, MegatronLayout
from runner.resume.plan import resume_iteration_for

ROOT = Path(__file__).resolve().parents[2]


def _ckpt(folder: Path, *its: int) -> None:
    for it in its:
        (folder / f"iter_{it:07d}").mkdir(parents=True)
        (folder / f"iter_{it:07d}" / "state.pt").write_text("x")
    (folder / MegatronLayout.MARKER).write_text(str(max(its)))


def test_megatron_layout_rewinds_to_the_half_way_checkpoint(tmp_path: Path) -> None:
    _ckpt(tmp_path, 5, 10, 15, 20)
    layout = MegatronLayout()
    assert layout.saved_iterations(tmp_path) == [5, 10, 15, 20]
    it = resume_iteration_for(layout.saved_iterations(tmp_path), 20)
    assert it == 10
    assert layout.rewind(tmp_path, it) == [15, 20]
    assert layout.saved_iterations(tmp_path) == [5, 10]
    assert (tmp_path / MegatronLayout.MARKER).read_text() == "10"
    assert resume_iteration_for([3, 6, 9, 12], 20) == 9 and resume_iteration_for([15], 20) is None


def test_rewind_to_a_missing_checkpoint_names_it(tmp_path: Path) -> None:
    _ckpt(tmp_path, 20)
    with pytest.raises(LayoutError, match="iter_0000010: no checkpoint to resume from"):
        MegatronLayout().rewind(tmp_path, 10)


def test_layouts_are_a_registry() -> None:
    from runner.plugins import PluginManager

    pm = PluginManager()
    pm.load()
    assert pm.layouts.get("megatron").cls is MegatronLayout
    assert {"yaml", "megatron"} <= set(pm.sources.ids())


SPEC = """
cases:
  - name: train_resume_{variant}
    kind: script
    timeout: 180
    resources: {{nodes: 1, nproc_per_node: 2}}
    env: {{ATEN_CPU_CAPABILITY: avx2, MKL_CBWR: AVX2, DNNL_MAX_CPU_ISA: AVX2}}
    golden: {{file: {golden}}}
    args:
      script: {script}
      argv: [--train-iters, "20", --save-interval, "5", --save, "${{CHECKPOINT_SAVE_PATH}}",
             --load, "${{CHECKPOINT_LOAD_PATH}}"{extra}]
      steps: [1, 20]
      test_type: ckpt-resume
"""


@pytest.mark.slow
def test_user_script_resume_passes_and_planted_lr_bug_fails(runner_project) -> None:
    script = ROOT / "specs" / "examples" / "scripts" / "train_resume.py"
    golden = ROOT / "golden" / "train_resume_ckpt" / "golden_values_dev_cpu.json"
    runner_project.write("specs/clean.yaml", SPEC.format(variant="clean", golden=golden, script=script, extra=""))
    runner_project.write("specs/bug.yaml", SPEC.format(variant="forgets_lr", golden=golden, script=script,
                                                       extra=', "--forget-lr-scheduler"'))
    result = runner_project.run("run", "specs", "-j", "1", python_path=[str(ROOT)], timeout=600)
    assert result.exit_code == 1, result
    assert result.verdicts == {"train_resume_clean": "PASSED", "train_resume_forgets_lr": "FAILED"}, result
    clean = result.case("train_resume_clean")
    names = {c["name"] for c in clean["checks"] if c["passed"] and not c["skipped"]}
    assert {"resume:lm loss:deterministic", "resume:num-zeros:deterministic"} <= names, names
    bug = result.case("train_resume_forgets_lr")
    failed = [c for c in bug["checks"] if not c["passed"]]
    # run 1 still matches the golden: only the resume comparison fails
    assert failed and all(c["name"].startswith("resume:") for c in failed), failed
    loss = next(c for c in failed if c["name"] == "resume:lm loss:deterministic")
    # resumed at 10 with the warmup restarted: step 11 still uses the lr the optimizer state
    # carries, the scheduler's step after it sets a warmup lr, so step 12's update is wrong and
    # the first loss that differs is step 13's
    assert "lm loss exact" in loss["detail"] and "first at step 13:" in loss["detail"], loss["detail"]
    assert "lm loss" in bug["detail"]


PLUGIN = '''
from pathlib import Path

from runner.hookspecs import hookimpl
from runner.records import Case, Location, Resources
from runner.resume.layouts import CheckpointLayout
from runner.sources import CaseSource


class JobList(CaseSource):
    """One case per line of a 'jobs.list' file: '<name> <script>'."""
    id = "joblist"
    priority = 20

    def claims(self, file):
        return file.name == "jobs.list"

    def collect(self, file, ctx):
        out = []
        for n, line in enumerate(file.read_text().splitlines(), 1):
            name, script = line.split()
            out.append(Case(id=f"{file.name}::{name}", name=name, kind="script", spec_file=str(file),
                            args={"script": str(file.parent / script), "metrics": "none"},
                            resources=Resources(), location=Location(str(file), n, 1), tags=("joblist",)))
        return out


class Flat(CheckpointLayout):
    id = "flat"
    def saved_iterations(self, folder):
        return sorted(int(p.stem[5:]) for p in Path(folder).glob("step_*.pt"))
    def rewind(self, folder, iteration):
        removed = [i for i in self.saved_iterations(folder) if i > iteration]
        for i in removed:
            (Path(folder) / f"step_{i}.pt").unlink()
        return removed


@hookimpl
def runner_register_sources(registry):
    registry.add(JobList)


@hookimpl
def runner_register_layouts(registry):
    registry.add(Flat)
'''


def test_a_plugin_adds_a_case_source_and_a_layout(runner_project) -> None:
    runner_project.write("myplugin.py", PLUGIN)
    runner_project.write("cases/jobs.list", "hello hello.py\nworld hello.py\n")
    runner_project.write("cases/hello.py", "print('hi')\n")
    result = runner_project.run("list", "cases", "-p", "myplugin", python_path=[str(runner_project.path)])
    assert result.exit_code == 0, result
    assert "jobs.list::hello  (script, 1x1) [joblist]" in result.stdout and "jobs.list::world" in result.stdout
    plugins = runner_project.run("plugins", "-p", "myplugin", python_path=[str(runner_project.path)])
    assert "joblist" in plugins.stdout and "flat" in plugins.stdout, plugins
