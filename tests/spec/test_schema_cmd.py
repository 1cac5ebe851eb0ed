"""`runner schema`: the editor schema (suite + every kind's args, kinds from the registry) and
the yaml-language-server modeline of the project's spec files."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
#: the project's spec files (Megatron overlays, marked ``overlay: megatron``, are not specs)
SPECS = sorted(p for p in (REPO / "specs").rglob("*.yaml")
               if not any(line.startswith("overlay:") for line in p.read_text().splitlines()))
MODELINE = "# yaml-language-server: $schema="

PLUGIN = '''
from runner.hookspecs import hookimpl
from runner.plan.kind import CaseKind, LaunchPlan


class EchoKind(CaseKind):
    id = "echo"
    description = "a plugin's kind"
    args_schema = {"type": "object", "additionalProperties": False, "required": ["word"],
                   "properties": {"word": {"type": "string"}, "times": {"type": "integer", "minimum": 1}}}

    def plan(self, case):
        return [LaunchPlan("main", "x:y", dict(case.args))]

    def compare(self, case, outcomes, ctx):
        return []


@hookimpl
def runner_register_kinds(registry):
    registry.add(EchoKind)
'''


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> dict:
    from runner.testing import RunnerProject

    project = RunnerProject(tmp_path_factory.mktemp("schema"))
    r = project.run("schema")
    assert r.exit_code == 0, r
    return json.loads(r.stdout)


def _validator(schema: dict) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("spec", SPECS, ids=[str(p.relative_to(REPO)) for p in SPECS])
def test_project_specs_are_valid_under_the_editor_schema(schema, spec: Path) -> None:
    errors = [e.message for e in _validator(schema).iter_errors(yaml.safe_load(spec.read_text()))]
    assert errors == []


@pytest.mark.parametrize("case, needle", [
    ({"name": "x", "kind": "gpt", "args": {"num_layers": "eight"}}, "is not valid under any of the given schemas"),
    ({"name": "x", "kind": "gpt", "args": {"num_layrs": 8}}, "'num_layrs' was unexpected"),
    ({"name": "x", "kind": "a2a_overlap", "args": {"variant": "sparse"}}, "is not valid under any"),
    ({"name": "x", "kind": "gtp"}, "'gtp' is not one of"),
    ({"name": "x", "kind": "script", "timeout": [1]}, "is not valid"),
])
def test_editor_schema_rejects_planted_mistakes(schema, case: dict, needle: str) -> None:
    errors = [e.message for e in _validator(schema).iter_errors({"cases": [case]})]
    errors += [c.message for e in _validator(schema).iter_errors({"cases": [case]}) for c in (e.context or [])]
    assert any(needle in m for m in errors), errors


def test_placeholders_pass_where_the_matrix_fills_them(schema) -> None:
    doc = {"cases": [{"name": "w{n}", "kind": "gpt", "matrix": {"n": [1, 2]}, "resources": {"nproc_per_node": "{n}"},
                      "args": {"num_layers": "{n}", "bf16": "{n}"}}]}
    assert [e.message for e in _validator(schema).iter_errors(doc)] == []


def test_defaults_kind_gets_its_args_schema(schema) -> None:
    doc = {"defaults": {"kind": "gpt", "args": {"num_layerz": 2}}, "cases": [{"name": "a"}]}
    assert any("num_layerz" in e.message for e in _validator(schema).iter_errors(doc))


def test_a_plugin_kind_is_in_the_schema(runner_project) -> None:
    runner_project.write("echo_plugin.py", PLUGIN)
    out = runner_project.path / "spec.schema.json"
    r = runner_project.run("schema", "-p", "echo_plugin", "-o", str(out), python_path=[str(runner_project.path)])
    assert r.exit_code == 0 and "wrote" in r.stdout, r
    schema = json.loads(out.read_text())
    assert "echo" in schema["$defs"]["case"]["properties"]["kind"]["enum"]
    v = _validator(schema)
    assert list(v.iter_errors({"cases": [{"name": "a", "kind": "echo", "args": {"word": "hi", "times": 2}}]})) == []
    bad = list(v.iter_errors({"cases": [{"name": "a", "kind": "echo", "args": {"word": 3}}]}))
    assert any("3 is not of type 'string'" in e.message for e in bad), [e.message for e in bad]


@pytest.mark.parametrize("spec", SPECS, ids=[str(p.relative_to(REPO)) for p in SPECS])
def test_spec_files_carry_the_modeline(spec: Path) -> None:
    first = spec.read_text().splitlines()[0]
    assert first.startswith(MODELINE), first
    target = (spec.parent / first[len(MODELINE):].strip()).resolve()
    assert target == REPO / ".runner" / "spec.schema.json"
