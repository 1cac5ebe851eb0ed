"""Property-based fuzzing of the real spec files and golden files through ``runner validate``.

Mutants are made from the files in specs/ and golden/: text edits at random places (with
the snippets known to have crashed parsers: tags, aliases, placeholders, braces, deep
nesting, bad bytes, long names, path escapes) and structural edits (a random value of the
parsed document replaced with a random value). Whatever the mutant, the runner must answer
with an exit code in {0, 1, 4, 5}, never a traceback, and every error line must say where:
``file:line:col`` for a spec, the golden file's path for a golden.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from runner.cli import main

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").rglob("*.yaml"))
GOLDENS = sorted((ROOT / "golden").rglob("*.json"))
GOLDEN_SPEC = ROOT / "specs" / "examples" / "toy_ddp.yaml"
TOY_GOLDENS = [g for g in GOLDENS if g.parent.name.startswith("toy_ddp_")]

SNIPPETS = [
    "{world}", "{nope}", "{{", "}}", "{{world}}", '"{world}"', "!!python/object:os.system ['x']",
    "!!python/list [1]", "!!binary aGk=", "!custom {a: 1}", "&a [1, *a]", "*undefined", "<<: {a: 1}",
    "\x00", "\x07", "\ufeff", "\t", ": ", "- ", "\n  - ", "\n    x: [", "[" * 300, "{a: " * 100,
    "a" * 300, "../../x", "/" * 3, "9" * 400, "1e999", "-.inf", ".nan", "2020-01-01", "~", "null",
    "? [a, b]\n: c", "|\n  block", "'unterminated", '"\\x"', "\u2028", "\U0001F600", "%YAML 1.1\n---",
    "---\n---", "...",
]
# no shrinking: a failure prints its draws, and the test's time stays bounded
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
POSITIONED = re.compile(r"^error: [^\s:][^:]*:\d+:\d+: ")


def run_validate(*args: str) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["validate", *args])
    return code, err.getvalue()


@contextlib.contextmanager
def cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def text_mutant(data: st.DataObject, text: str) -> bytes:
    raw = text.encode()
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        pos = data.draw(st.integers(0, len(raw)), label="pos")
        how = data.draw(st.sampled_from(["insert", "replace", "delete", "bytes"]), label="how")
        piece = data.draw(st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=8)), label="piece").encode()
        if how == "insert":
            raw = raw[:pos] + piece + raw[pos:]
        elif how == "replace":
            raw = raw[:pos] + piece + raw[pos + len(piece):]
        elif how == "delete":
            raw = raw[:pos] + raw[pos + data.draw(st.integers(1, 40), label="n"):]
        else:
            raw = raw[:pos] + data.draw(st.binary(min_size=1, max_size=4), label="bytes") + raw[pos:]
    return raw


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                    st.sampled_from(SNIPPETS), st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)


def structural_mutant(data: st.DataObject, doc) -> object:
    """Replace one value, at a random path, with a random value."""
    def paths(obj, prefix=()):
        yield prefix
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for k, v in items:
            yield from paths(v, prefix + (k,))

    all_paths = list(paths(doc))
    path = data.draw(st.sampled_from(all_paths[1:] or all_paths), label="path")
    value = data.draw(VALUES, label="value")
    if not path:
        return value
    target = doc
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return doc


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A copy of specs/ and golden/ to mutate (the scripts the specs name come along)."""
    base = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(ROOT / "specs", base / "specs")
    shutil.copytree(ROOT / "golden", base / "golden")
    return base


def check(code: int, stderr: str, must_name: str, positioned: bool) -> None:
    assert code in (0, 1, 4, 5), (code, stderr)
    assert "Traceback" not in stderr, stderr
    for line in stderr.splitlines():
        if not line.startswith("error:"):
            continue
        assert must_name in line, line
        if positioned:
            assert POSITIONED.match(line), line


@pytest.mark.timeout(300)
@SETTINGS
@given(data=st.data())
def test_fuzz_specs(sandbox, data):
    original = data.draw(st.sampled_from(SPECS), label="spec")
    rel = original.relative_to(ROOT)
    target = sandbox / rel
    text = original.read_text()
    if data.draw(st.booleans(), label="structural"):
        doc = structural_mutant(data, yaml.safe_load(text))
        payload = yaml.safe_dump(doc, allow_unicode=True).encode()
    else:
        payload = text_mutant(data, text)
    target.write_bytes(payload)
    try:
        with cwd(sandbox):
            code, stderr = run_validate(str(rel), "--golden-dir", "golden")
    finally:
        target.write_text(text)
    check(code, stderr, str(rel), positioned=True)


@pytest.mark.timeout(300)
@SETTINGS
@given(data=st.data())
def test_fuzz_goldens(sandbox, data):
    original = data.draw(st.sampled_from(TOY_GOLDENS), label="golden")
    rel = original.relative_to(ROOT)
    target = sandbox / rel
    text = original.read_text()
    if data.draw(st.booleans(), label="structural"):
        doc = structural_mutant(data, json.loads(text))
        payload = json.dumps(doc).encode()
    else:
        payload = text_mutant(data, text)
    target.write_bytes(payload)
    try:
        with cwd(sandbox):
            code, stderr = run_validate(str(GOLDEN_SPEC.relative_to(ROOT)), "--golden-dir", "golden")
    finally:
        target.write_text(text)
    # a golden's own errors name the golden file (JSON-level ones with line:col)
    check(code, stderr, "golden", positioned=False)


@pytest.mark.parametrize("payload, expect", [
    (b"cases:\n  - name: a\n    kind: script\n    args: {script: \xff\xfe}\n", "s.yaml:4:20: not valid UTF-8: byte 0xff"),
    (("a: &a [x]\n" + "".join(f"{c}: &{c} [{', '.join(['*' + chr(ord(c) - 1)] * 9)}]\n"
                               for c in "bcdefghij")).encode(), "expands to more than"),
    (b"a: &a [*a]\n", "alias refers to the value that contains it"),
    (b"a: " + b"[" * 10000 + b"]" * 10000 + b"\n", "nested deeper than"),
    (b"cases: !!python/object/apply:os.system [echo]\n", "tag '!!python/object/apply:os.system' is not allowed"),
    (b"cases:\n  - !!python/dict {name: a}\n", "tag '!!python/dict' is not allowed"),
    (b"cases:\n  - name: a\n    args: !!python/tuple [1]\n", "tag '!!python/tuple' is not allowed"),
    (b"cases:\n  - name: a\n    kind: script\n    args: {script: x.py}\n    golden: {name: ../../x}\n",
     "golden.name: case 'a': golden.name '../../x' must be one folder name"),
    (b"cases:\n  - name: a\n    kind: script\n    args: {script: " + b"s" * 300 + b".py}\n", "args.script"),
    (b"cases:\n  - {name: a, kind: script, args: {script: x.py}, resources: \"{n}\", matrix: {n: [1]}}\n",
     "resources: expected object, got string '{n}'"),
    (b"cases: \"{n}\"\n", "cases: expected array, got string '{n}'"),
    (b"cases:\n  - name: a\n    kind: script\n    args: {script: x.py}\n    env: {A: \"\x07\"}\n", "unacceptable character"),
])
def test_known_bad_specs_are_one_positioned_line(tmp_path, payload, expect):
    (tmp_path / "x.py").write_text("print('x')\n")
    (tmp_path / "s.yaml").write_bytes(payload)
    with cwd(tmp_path):
        code, stderr = run_validate("s.yaml")
    assert code == 4, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert POSITIONED.match(stderr) and expect in stderr, stderr


def test_oversized_spec_is_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_MAX_INPUT_BYTES", "1000")
    (tmp_path / "s.yaml").write_text("cases:\n" + "  - {name: a}\n" * 200)
    with cwd(tmp_path):
        code, stderr = run_validate("s.yaml")
    assert code == 4 and "s.yaml:1:1: spec file is larger than the limit of 1000 bytes" in stderr, stderr


def test_literal_braces_escape(tmp_path):
    from runner.plugins import PluginManager
    from runner.spec.loader import SpecLoader

    (tmp_path / "x.py").write_text("print('x')\n")
    (tmp_path / "s.yaml").write_text(
        "cases:\n  - name: a_{n}\n    kind: script\n    matrix: {n: [1]}\n"
        "    args: {script: x.py, argv: ['{{n}}', '{{', '}}{n}', 'x{{y}}z'], golden: false}\n")
    pm = PluginManager()
    pm.load()
    (case,) = SpecLoader(pm, "cpu", root=tmp_path).load_paths([str(tmp_path / "s.yaml")])
    assert case.name == "a_1"
    assert case.args["argv"] == ["{n}", "{", "}1", "x{y}z"]


@pytest.mark.parametrize("payload, expect", [
    (b'{"lm loss": {"values": {"1": 1.0\xff}}}', ":1:33: not valid UTF-8"),
    (b'{"a": ' * 5000 + b"1" + b"}" * 5000, ":1:"),
    (b'{"lm loss": {"start_step": 1, "end_step": 1, "values": {"1": ' + b"7" * 400 + b"}}}",
     "integer with 400 digits"),
])
def test_known_bad_goldens_are_one_line(tmp_path, payload, expect):
    from runner.compare.golden import load_golden
    from runner.errors import UsageError

    path = tmp_path / "golden_values_dev_cpu.json"
    path.write_bytes(payload)
    with pytest.raises(UsageError) as exc:
        load_golden(path)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message and expect in message, message


@pytest.mark.parametrize("bad", ['{"step": 2, "lm loss": 1.0', "not json", '[1, 2]', '{"step": "3", "lm loss": 1.0}'])
def test_a_malformed_metrics_line_is_an_error_naming_file_and_line(tmp_path, bad):
    """Never skipped: the script kind's comparison ends as ERROR with file:line."""
    from runner.results import MetricsError, ResultsDir

    metrics = tmp_path / "metrics" / "rank0.jsonl"
    metrics.parent.mkdir()
    metrics.write_text('{"step": 1, "lm loss": 2.0}\n' + bad + "\n" + '{"step": 3, "lm loss": 1.5}\n')
    with pytest.raises(MetricsError, match=re.escape(f"{metrics}:2:")):
        ResultsDir(tmp_path).metrics()
    metrics.write_text('{"step": 1, "lm loss": 2.0}\n\n{"step": 2, "lm loss": NaN}\n')
    assert ResultsDir(tmp_path).metrics()["lm loss"][1] == 2.0      # blank lines and NaN are fine
