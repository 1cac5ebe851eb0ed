"""The plugin API from the outside: an installed package with an entry point adds a backend."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runner.errors import UsageError
from runner.plugins import PluginManager

PLUGIN_SRC = Path(__file__).parent / "plugins" / "runner-plainrun"

SPEC = """
cases:
  - name: hello
    kind: script
    resources: {nproc_per_node: 2}
    args: {script: hello.py, golden: false}
"""
HELLO = """
import torch.distributed as dist
dist.init_process_group("gloo")
dist.barrier()
print("hello from", dist.get_rank())
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """pip-install the example plugin package into a private target dir (a real install:
    dist-info with entry_points.txt), used through PYTHONPATH."""
    import shutil

    target = tmp_path_factory.mktemp("site")
    src = tmp_path_factory.mktemp("src") / "runner-plainrun"
    shutil.copytree(PLUGIN_SRC, src)          # setuptools builds in the source tree: keep ours clean
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)],
                   check=True, capture_output=True, text=True, cwd=src)
    assert list(target.glob("runner_plainrun-*.dist-info/entry_points.txt"))
    return target


def test_entry_point_backend_runs_a_case(runner_project, installed_plugin):
    runner_project.write("specs/s.yaml", SPEC)
    runner_project.write("specs/hello.py", HELLO)
    plugins = runner_project.run("plugins", python_path=[str(installed_plugin)])
    assert "plainrun" in plugins.stdout and "entry point (runner-plainrun)" in plugins.stdout, plugins
    dry = runner_project.run("run", "specs", "--backend", "plainrun", "--dry-run", python_path=[str(installed_plugin)])
    assert dry.exit_code == 0 and "PLAINRUN" in dry.stdout, dry
    r = runner_project.run("run", "specs", "--backend", "plainrun", "--backend-opt", "marker=xyz",
                           python_path=[str(installed_plugin)])
    assert r.exit_code == 0, r
    assert r.verdicts == {"hello": "PASSED"}
    assert r.case("hello")["backend"] == "plainrun"
    log = Path(r.case("hello")["launches"][0]["results_dir"]) / "logs" / "launcher.log"
    assert "plainrun marker=xyz" in log.read_text()
    # blocked by name: the backend disappears and using it is a usage error listing the known ids
    blocked = runner_project.run("run", "specs", "--backend", "plainrun", "-p", "no:plainrun",
                                 python_path=[str(installed_plugin)])
    assert blocked.exit_code == 4 and "unknown backend 'plainrun'" in blocked.stderr


def test_plugin_backend_adds_a_checked_option(runner_project, installed_plugin):
    """A plugin package declares a new backend option (name, help, value check) and the
    runner lists it, checks it once and passes it on -- from the command line and from the
    config file -- without any change to runner/."""
    runner_project.write("specs/s.yaml", SPEC)
    runner_project.write("specs/hello.py", HELLO)
    site = [str(installed_plugin)]
    plugins = runner_project.run("plugins", python_path=site)
    assert "nice" in plugins.stdout and "run torchrun under `nice -n N` (0..19)" in plugins.stdout, plugins
    dry = runner_project.run("run", "specs", "--backend", "plainrun", "--backend-opt", "nice=5", "--dry-run",
                             python_path=site)
    assert dry.exit_code == 0 and "PLAINRUN nice -n 5 " in dry.stdout, dry
    bad = runner_project.run("run", "specs", "--backend", "plainrun", "--backend-opt", "nice=high", "--dry-run",
                             python_path=site)
    assert bad.exit_code == 4, bad
    assert bad.stderr.strip().splitlines() == ["error: backend 'plainrun': option 'nice'='high': "
                                               "not an integer in 0..19"], bad.stderr
    unknown = runner_project.run("run", "specs", "--backend", "plainrun", "--backend-opt", "nicee=5", "--dry-run",
                                 python_path=site)
    assert unknown.exit_code == 4 and "unknown option 'nicee'" in unknown.stderr and "did you mean 'nice'" in unknown.stderr
    runner_project.write("runner.toml", "[backends.plainrun]\nnice = 7\n")
    configured = runner_project.run("run", "specs", "--backend", "plainrun", "--dry-run", python_path=site)
    assert configured.exit_code == 0 and "PLAINRUN nice -n 7 " in configured.stdout, configured


def test_broken_plugin_is_reported_by_name(runner_project, tmp_path):
    site = tmp_path / "site"
    (site / "broken_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "broken_plugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (site / "broken_plugin-1.0.dist-info" / "entry_points.txt").write_text("[runner]\nbroken = broken_plugin\n")
    (site / "broken_plugin.py").write_text("raise ImportError('needs libfoo')\n")
    r = runner_project.run("plugins", python_path=[str(site)])
    assert r.exit_code == 3
    assert "broken" in r.stdout and "FAILED: ImportError: needs libfoo" in r.stdout
    runner_project.write("specs/s.yaml", SPEC.replace("kind: script", "kind: broken"))
    runner_project.write("specs/hello.py", HELLO)
    r = runner_project.run("validate", "specs", python_path=[str(site)])
    assert r.exit_code == 4 and "plugin 'broken' failed to load: ImportError: needs libfoo" in r.stderr


def test_p_flag_loads_a_module_and_reports_failure(runner_project, tmp_path):
    (tmp_path / "mykind_plugin.py").write_text(
        "from runner.hookspecs import hookimpl\n"
        "from runner.kinds.script import ScriptKind\n"
        "class Mine(ScriptKind):\n    id = 'mine'\n"
        "@hookimpl\ndef runner_register_kinds(registry):\n    registry.add(Mine)\n")
    r = runner_project.run("plugins", "-p", "mykind_plugin", python_path=[str(tmp_path)])
    assert r.exit_code == 0 and "mine" in r.stdout and "-p" in r.stdout, r
    r = runner_project.run("plugins", "-p", "no_such_plugin_mod")
    assert r.exit_code == 4 and "-p no_such_plugin_mod: plugin failed to load" in r.stderr


def test_duplicate_ids_are_an_error():
    from runner.run.backend import Backend

    class Dup(Backend):
        id = "local"

    pm = PluginManager()
    pm.load()
    with pytest.raises(UsageError, match="registered twice"):
        pm.backends.add(Dup)


def test_public_api_is_declared_and_typed():
    """What plugins import lives in `runner` itself; the package ships its type information."""
    import runner
    from runner.run.backend import Backend

    assert runner.__all__ == sorted(runner.__all__, key=lambda n: (n[0].islower(), n))
    for name in runner.__all__:
        assert getattr(runner, name) is not None, name
    assert runner.Backend is Backend and callable(runner.hookimpl)
    assert (Path(runner.__file__).parent / "py.typed").is_file()
def test_plugin_package_adds_a_reporter_and_an_option(runner_project, installed_plugin):
    """The example package adds a reporter (its own --plain-summary) and a plain option
    (--plain-tag, through runner_addoption) without any edit of runner/: plugins load before
    the command line is parsed."""
    runner_project.write("specs/s.yaml", SPEC)
    runner_project.write("specs/hello.py", HELLO)
    listed = runner_project.run("plugins", python_path=[str(installed_plugin)])
    assert "plain-summary" in listed.stdout and "reporter" in listed.stdout, listed
    out = runner_project.path / "summary.txt"
    r = runner_project.run("run", "specs", "--plain-summary", str(out), "--plain-tag", "blue",
                           python_path=[str(installed_plugin)])
    assert r.exit_code == 0, r
    assert out.read_text().splitlines() == ["tag=blue cases=1 streamed=1 exit=0", "PASSED specs/s.yaml::hello"]
    # without the package the options do not exist: a usage error, exit 4
    bare = runner_project.run("run", "specs", "--plain-summary", str(out))
    assert bare.exit_code == 4 and "unrecognized arguments: --plain-summary" in bare.stderr, bare
    # blocked by name, the reporter and its option go away with the plugin
    blocked = runner_project.run("run", "specs", "--plain-summary", str(out), "-p", "no:plainrun",
                                 python_path=[str(installed_plugin)])
    assert blocked.exit_code == 4 and "--plain-summary" in blocked.stderr, blocked
