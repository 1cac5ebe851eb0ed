"""Collection at scale: the compiled schema fast path and the per-entry caches must not change
what is accepted, what is rejected, or where an error points. (Timings are in
benchmarks/collection.py, not here.)"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.errors import SpecError
from runner.plugins import PluginManager
from runner.spec import schema
from runner.spec.loader import SpecLoader

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    pm = PluginManager()
    pm.load()
    return pm


def load(tmp_path: Path, plugins: PluginManager, text: str):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return SpecLoader(plugins, "cpu", root=tmp_path).load_paths([str(p)])


def test_the_compiled_validator_is_in_use() -> None:
    pytest.importorskip("jsonschema_rs")
    assert schema._fast_valid({"type": "object", "properties": {"n": {"type": "integer"}}}, {"n": 1})
    assert not schema._fast_valid({"type": "object", "properties": {"n": {"type": "integer"}}}, {"n": "x"})
    # the compiled path only ever says "valid": a placeholder is left to the full validator,
    # which knows where a scalar may stand (and so where "{axis}" is exempt)
    s = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert not schema._fast_valid(s, {"n": "{axis}"})
    schema.validate({"n": "{axis}"}, s, file="f.yaml", positions={}, allow_placeholders=True)
    m = {"type": "object", "properties": {"r": {"type": "object"}}}
    with pytest.raises(Exception, match="expected object"):
        schema.validate({"r": "{axis}"}, m, file="f.yaml", positions={}, allow_placeholders=True)


def test_a_bad_axis_value_deep_in_a_large_matrix_is_found_with_its_key(tmp_path, plugins) -> None:
    seeds = list(range(500)) + ["many"]
    with pytest.raises(SpecError) as err:
        load(tmp_path, plugins, f"""
            defaults: {{kind: a2a_overlap, resources: {{nodes: 1, nproc_per_node: 4}}}}
            cases:
              - name: c_{{variant}}_{{s}}
                matrix:
                  variant: [dense, moe]
                  s: {json.dumps(seeds)}
                args: {{variant: "{{variant}}", seed: "{{s}}"}}
        """)
    msg = str(err.value)
    assert "s.yaml:7:" in msg and "args.seed" in msg and "'many'" in msg, msg


def test_cases_of_one_entry_share_key_locations_but_errors_point_at_their_own_line(tmp_path, plugins) -> None:
    cases = load(tmp_path, plugins, """
        defaults: {kind: a2a_overlap, resources: {nodes: 1, nproc_per_node: 4}}
        cases:
          - name: a_{v}
            matrix: {v: [dense, moe, moe_shared_expert]}
            args: {variant: "{v}"}
          - name: b
            args:
              variant: moe
    """)
    assert [c.name for c in cases] == ["a_dense", "a_moe", "a_moe_shared_expert", "b"]
    assert cases[0].key_locations is cases[1].key_locations
    assert cases[0].where("args.variant").endswith("s.yaml:5:12")
    assert cases[3].where("args.variant").endswith("s.yaml:8:7")
    # a profile merged once per entry still applies to every combination
    assert all(c.args.get("hidden") is None for c in cases)


def test_profiles_apply_to_every_combination_and_combinations_do_not_share_values(tmp_path, plugins) -> None:
    cases = load(tmp_path, plugins, """
        defaults:
          kind: a2a_overlap
          resources: {nodes: 1, nproc_per_node: 4}
          profiles: {cpu: {args: {hidden: 32, heads: 2}}}
        cases:
          - name: c_{s}
            matrix: {s: [1, 2, 3]}
            args: {seed: "{s}", layers: [1, 1], level: chunk}
    """)
    assert [(c.args["seed"], c.args["hidden"]) for c in cases] == [(1, 32), (2, 32), (3, 32)]
    assert cases[0].args["layers"] is not cases[1].args["layers"]


def test_list_of_a_large_matrix_collects_every_case_once(tmp_path) -> None:
    spec = tmp_path / "big.yaml"
    spec.write_text(json.dumps({
        "defaults": {"kind": "a2a_overlap", "resources": {"nodes": 1, "nproc_per_node": 4}},
        "cases": [{"name": "c_{v}_{d}_{s}", "matrix": {"v": ["dense", "moe", "moe_shared_expert"],
                                                      "d": ["float32", "bfloat16"], "s": list(range(500))},
                   "args": {"variant": "{v}", "dtype": "{d}", "seed": "{s}"}}],
    }))
    proc = subprocess.run([sys.executable, "-m", "runner", "list", str(spec), "--platform", "cpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    ids = [line.split()[0] for line in proc.stdout.splitlines() if "::" in line]
    assert len(ids) == len(set(ids)) == 3000
    assert "3000 cases collected" in proc.stdout
