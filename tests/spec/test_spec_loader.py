"""Spec loading: positions, schema errors, matrix, profiles, duplicate ids, kinds' validation."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.errors import SpecError, UsageError
from runner.plugins import PluginManager
from runner.spec.loader import SpecLoader, expand_matrix, parse_duration


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    pm = PluginManager()
    pm.load()
    return pm


def load(tmp_path: Path, plugins: PluginManager, text: str, platform: str = "cpu", name: str = "s.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    (tmp_path / "x.py").write_text("print('x')\n")
    return SpecLoader(plugins, platform, root=tmp_path).load_paths([str(p)])


def test_matrix_templates_keep_types_and_name(tmp_path, plugins):
    cases = load(tmp_path, plugins, """
        defaults: {kind: script, timeout: 2m, resources: {nodes: 1}}
        cases:
          - name: c_{n}_{mode}
            matrix:
              n: [1, 2]
              mode: [a, b]
              exclude: [{n: 2, mode: b}]
              include: [{n: 4, mode: z}]
            resources: {nproc_per_node: "{n}"}
            args: {script: x.py, argv: ["--mode", "{mode}", "--n={n}"], golden: false}
    """)
    names = [c.name for c in cases]
    assert names == ["c_1_a", "c_1_b", "c_2_a", "c_4_z"]
    c4 = cases[-1]
    assert c4.resources.nproc_per_node == 4 and c4.timeout == 120.0
    assert c4.args["argv"] == ["--mode", "z", "--n=4"]
    assert c4.id == "s.yaml::c_4_z"


def test_unknown_key_has_position_and_suggestion(tmp_path, plugins):
    with pytest.raises(SpecError) as err:
        load(tmp_path, plugins, """
            cases:
              - name: a
                kind: script
                timout: 10
                args: {script: x.py}
        """)
    msg = str(err.value)
    assert "s.yaml:4:5" in msg
    assert "unknown key 'timout'" in msg and "did you mean 'timeout'" in msg


def test_wrong_type_names_key_and_expectation(tmp_path, plugins):
    with pytest.raises(SpecError) as err:
        load(tmp_path, plugins, """
            cases:
              - name: a
                kind: script
                retries: many
                args: {script: x.py}
        """)
    msg = str(err.value)
    assert "s.yaml:4:5" in msg and "retries" in msg and "expected integer" in msg


def test_bad_matrix_value_caught_after_expansion(tmp_path, plugins):
    with pytest.raises(SpecError) as err:
        load(tmp_path, plugins, """
            cases:
              - name: a_{n}
                kind: script
                matrix: {n: [1, "two"]}
                resources: {nproc_per_node: "{n}"}
                args: {script: x.py, golden: false}
        """)
    assert "resources.nproc_per_node" in str(err.value) and "a_two" in str(err.value)


def test_unknown_placeholder(tmp_path, plugins):
    with pytest.raises(SpecError, match=r"unknown placeholder '\{varient\}'.*did you mean 'variant'"):
        load(tmp_path, plugins, """
            cases:
              - name: a_{varient}
                kind: script
                matrix: {variant: [x]}
                args: {script: x.py}
        """)


def test_malformed_yaml_position(tmp_path, plugins):
    with pytest.raises(SpecError) as err:
        load(tmp_path, plugins, "cases:\n  - name: [unclosed\n")
    assert "s.yaml:3:1" in str(err.value) or "s.yaml:2" in str(err.value)
    assert "malformed YAML" in str(err.value)


def test_duplicate_yaml_key(tmp_path, plugins):
    with pytest.raises(SpecError, match=r"s.yaml:3:5: cases\[0\].kind: duplicate key 'kind' \(first at line 2\)"):
        load(tmp_path, plugins, "cases:\n  - kind: script\n    kind: script\n    name: a\n")


def test_duplicate_case_ids(tmp_path, plugins):
    with pytest.raises(SpecError, match="duplicate case id 's.yaml::a'"):
        load(tmp_path, plugins, """
            cases:
              - {name: a, kind: script, args: {script: x.py}}
              - {name: a, kind: script, args: {script: x.py}}
        """)


def test_unknown_kind_lists_known(tmp_path, plugins):
    with pytest.raises(SpecError) as err:
        load(tmp_path, plugins, """
            cases:
              - {name: a, kind: scirpt, args: {script: x.py}}
        """)
    assert "unknown case kind 'scirpt'" in str(err.value) and "did you mean 'script'" in str(err.value)
    assert "s.yaml:2:15" in str(err.value)


def test_args_schema_of_the_kind(tmp_path, plugins):
    with pytest.raises(SpecError) as err:
        load(tmp_path, plugins, """
            cases:
              - name: a
                kind: script
                args:
                  script: x.py
                  argz: []
        """)
    assert "s.yaml:6:7" in str(err.value) and "unknown key 'argz'" in str(err.value)
    assert "did you mean 'argv'" in str(err.value)


def test_kind_validation_names_key(tmp_path, plugins):
    with pytest.raises(SpecError) as err:
        load(tmp_path, plugins, """
            cases:
              - name: a
                kind: script
                args: {script: missing.py}
        """)
    assert "args.script" in str(err.value) and "no such file" in str(err.value)


def test_profiles_by_platform(tmp_path, plugins):
    text = """
        defaults:
          kind: script
          profiles:
            gpu: {timeout: 50}
        cases:
          - name: a
            args: {script: x.py, argv: ["small"]}
            resources: {nproc_per_node: 2}
            profiles:
              cpu: {args: {argv: ["tiny"]}}
              dgx_h100: {args: {argv: ["full"]}, resources: {nproc_per_node: 8}}
    """
    cpu = load(tmp_path, plugins, text, "cpu")[0]
    h100 = load(tmp_path, plugins, text, "dgx_h100")[0]
    a100 = load(tmp_path, plugins, text, "dgx_a100")[0]
    assert cpu.args["argv"] == ["tiny"] and cpu.resources.nproc_per_node == 2 and cpu.timeout == 600
    assert h100.args["argv"] == ["full"] and h100.resources.nproc_per_node == 8 and h100.timeout == 50
    assert a100.args["argv"] == ["small"] and a100.timeout == 50
    assert cpu.resources.gpus_per_node("cpu") == 0 and h100.resources.gpus_per_node("dgx_h100") == 8


def test_missing_path_is_usage_error(tmp_path, plugins):
    with pytest.raises(UsageError, match="no such file or directory"):
        SpecLoader(plugins, "cpu", root=tmp_path).load_paths([str(tmp_path / "nope.yaml")])


def test_expand_matrix_and_durations():
    assert expand_matrix({"a": [1, 2], "exclude": [{"a": 1}]}) == [{"a": 2}]
    assert parse_duration("1.5m") == 90.0 and parse_duration(30) == 30.0 and parse_duration("2h") == 7200
