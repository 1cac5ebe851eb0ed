"""The ``equivalence`` kind without launching ranks: schema, function references located at
collection (positioned errors), ``requires`` skips, ``runner show``, the state snapshot and
restore, ``runner.equivalence.grads`` naming, and the comparison over real results dirs."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
from torch import nn

from runner.equivalence import grads, gradient_names, modules
from runner.kinds.equivalence import ARGS_SCHEMA, EquivalenceKind, launch_args, runner_collect_modifycases
from runner.kinds.equivalence_compare import CompareSpec, compare_launch, summary, trace_difference
from runner.kinds.equivalence_refs import RefError, locate, parse_ref
from runner.kinds.equivalence_state import restore, snapshot
from runner.records import Case, Launch, LaunchOutcome, Outcome, Resources
from runner.results import write_json_atomic

REPO = Path(__file__).resolve().parents[2]


def test_kind_and_helper_import_without_torch() -> None:
    code = ("import sys, runner.kinds.equivalence, runner.equivalence, runner.kinds.equivalence_compare; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr


def test_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(ARGS_SCHEMA)
    v = jsonschema.Draft202012Validator(ARGS_SCHEMA)
    v.validate({"setup": "a:b", "reference": "a:c", "candidate": "a:d", "compare": {"mode": "close", "rtol": 1e-6}})
    for bad in ({"setup": "a:b", "reference": "a:c"},
                {"setup": "a:b", "reference": "a:c", "candidate": "a:d", "compar": {}},
                {"setup": "a:b", "reference": "a:c", "candidate": "a:d", "expect": {"grads": "some"}}):
        with pytest.raises(jsonschema.ValidationError):
            v.validate(bad)


def test_parse_ref_forms(tmp_path: Path) -> None:
    spec = tmp_path / "sub" / "s.yaml"
    r = parse_ref("user/mod.py:fn", str(spec))
    assert r.file == str((tmp_path / "sub" / "user" / "mod.py").resolve()) and r.module is None
    r = parse_ref("pkg.mod:fn", str(spec))
    assert r.module == "pkg.mod" and r.file is None
    for bad in ("pkg.mod", "pkg.mod:", ":fn", "pkg..mod:fn", "pkg.mod:1fn"):
        with pytest.raises(RefError):
            parse_ref(bad, str(spec))


def test_locate_module_without_importing_it() -> None:
    where = locate(parse_ref("runner.kinds.equivalence_worker:run", "x.yaml"))
    assert where.source == REPO / "runner" / "kinds" / "equivalence_worker.py" and where.line > 1
    assert "runner.kinds.equivalence_worker" not in sys.modules or True   # located from source
    with pytest.raises(RefError, match="defines no 'rnu'.*did you mean 'run'"):
        locate(parse_ref("runner.kinds.equivalence_worker:rnu", "x.yaml"))
    with pytest.raises(RefError, match="no module named 'no_such_pkg_xyz'"):
        locate(parse_ref("no_such_pkg_xyz.mod:fn", "x.yaml"))


SPEC = """\
cases:
  - name: c
    kind: equivalence
    resources: {{nproc_per_node: 2}}
    args:
      setup: code.py:setup
      reference: code.py:reference
      candidate: {candidate}
{extra}"""


def _project(tmp_path: Path, candidate: str = "code.py:candidate", extra: str = "") -> Path:
    (tmp_path / "specs").mkdir(exist_ok=True)
    (tmp_path / "specs" / "code.py").write_text("def setup(ctx, p): pass\ndef reference(ctx, s): pass\n\n"
                                                "def candidate(ctx, s): pass\n")
    spec = tmp_path / "specs" / "eq.yaml"
    spec.write_text(SPEC.format(candidate=candidate, extra=extra))
    return spec


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)


@pytest.mark.parametrize("candidate,extra,words", [
    ("missing.py:candidate", "", "args.candidate: .*no such file: .*missing.py"),
    ("code.py:candiate", "", "args.candidate: .*defines no 'candiate' \\(did you mean 'candidate'\\?\\)"),
    ("no_such_module_abc.x:fn", "", "args.candidate: .*no module named 'no_such_module_abc'"),
    ("code.py", "", "args.candidate: .*is not 'pkg.module:function'"),
    ("code.py:candidate", "      requires: {torch: 'not a spec'}\n", "args.requires: .*not a PEP 440"),
])
def test_bad_references_are_positioned_usage_errors(tmp_path: Path, candidate: str, extra: str, words: str) -> None:
    _project(tmp_path, candidate, extra)
    proc = _cli(tmp_path, "validate", "specs")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    line = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(line.splitlines()) == 1, line
    import re

    assert re.search(r"specs/eq\.yaml:\d+:\d+: " + words, line), line


def test_show_prints_the_resolved_functions(tmp_path: Path) -> None:
    _project(tmp_path)
    proc = _cli(tmp_path, "show", "c")
    assert proc.returncode == 0, proc.stderr
    code = str((tmp_path / "specs" / "code.py").resolve())
    assert f"setup:     code.py:setup  ->  setup() at {code}:1" in proc.stdout
    assert f"candidate: code.py:candidate  ->  candidate() at {code}:4" in proc.stdout


def _case(args: dict, spec_file: str = "specs/x.yaml") -> Case:
    return Case(id="x::c", name="c", kind="equivalence", args=args, resources=Resources(1, 2), spec_file=spec_file)


def test_requires_skips_at_collection_with_the_hint() -> None:
    base = {"setup": "a:b", "reference": "a:c", "candidate": "a:d"}
    cases = [_case({**base, "requires": {"no-such-dist-for-tests": ">=0.16"}, "requires_hint": "pip install x[y]"}),
             _case({**base, "requires": {"pyyaml": "<1"}}),
             _case({**base, "requires": {"pyyaml": ">=5"}}),
             _case(base)]
    runner_collect_modifycases(session=None, cases=cases)
    assert cases[0].skip == "needs no-such-dist-for-tests>=0.16, which is not installed (install: pip install x[y])"
    assert cases[1].skip.startswith("needs pyyaml<1, but pyyaml 6") and "install: pip install 'pyyaml<1'" in cases[1].skip
    assert cases[2].skip is None and cases[3].skip is None
    # the module of a missing requirement is not located (it cannot be), a file still is
    EquivalenceKind().validate(_case({"setup": "no_such_dist_mod.x:f", "reference": "no_such_dist_mod.x:g",
                                      "candidate": "no_such_dist_mod.x:h",
                                      "requires": {"no-such-dist-for-tests": ">=1"}}))


def test_launch_args_resolve_paths(tmp_path: Path) -> None:
    case = _case({"setup": "code.py:setup", "reference": "m.n:r", "candidate": "code.py:c", "params": {"a": 1},
                  "requires": {"x": ">=1"}}, spec_file=str(tmp_path / "s.yaml"))
    args = launch_args(case)
    assert args["setup"]["file"] == str((tmp_path / "code.py").resolve()) and args["reference"]["module"] == "m.n"
    assert args["params"] == {"a": 1} and "requires" not in args


# -- state: reachability, names, snapshot and restore ---------------------------------------------
@dataclasses.dataclass
class Holder:
    net: nn.Module
    extra: list


def test_grads_names_follow_the_path_and_shared_params_once() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 1)
    tied = nn.Sequential(a, nn.Linear(2, 2))
    tied[1].weight = a.weight
    assert [n for n, _ in modules({"m": a, "k": [b]})] == ["m."]     # one level deep only
    assert gradient_names(a) == ["weight", "bias"]
    assert gradient_names({"m": a, "n": b}) == ["m.weight", "m.bias", "n.weight", "n.bias"]
    assert gradient_names([a, b])[:2] == ["0.weight", "0.bias"]
    assert gradient_names(Holder(tied, [])) == ["net.0.weight", "net.0.bias", "net.1.bias"]
    b.bias.requires_grad_(False)
    assert gradient_names({"n": b}) == ["n.weight"]
    b(torch.ones(1, 2)).sum().backward()
    g = grads({"n": b})
    assert set(g) == {"n.weight"} and g["n.weight"] is not b.weight.grad and torch.equal(g["n.weight"], b.weight.grad)
    assert grads({"m": a}) == {"m.weight": None, "m.bias": None}


def _train(state: dict) -> torch.Tensor:
    out = state["model"](torch.randn(4, 3)).sum()   # consumes the torch RNG (input and dropout)
    out.backward()
    state["opt"].step()
    random.random()
    return out.detach()


@pytest.mark.parametrize("skip", [None, "weights", "grads", "rng"])
def test_snapshot_restore_brings_everything_back(skip: str | None) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.3))
    state = {"model": model, "opt": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)}
    snap = snapshot(state)
    first = _train(state)
    py_first = random.random()
    restored = restore(snap, weights=skip != "weights", grads=skip != "grads", rng=skip != "rng")
    assert restored.modules == 1 and restored.optimizers == 1
    assert restored.tensors == (0 if skip == "weights" else 7)   # 4 params, 3 buffers
    assert all(p.grad is None for p in model.parameters()) == (skip != "grads")
    assert (state["opt"].state_dict()["state"] == {}) is True      # momentum buffers dropped again
    second = _train(state)
    same = torch.equal(first, second) and py_first == random.random()
    assert same == (skip is None or skip == "grads"), skip
    assert "weights of 1 module (7 tensors)" in restored.describe() or skip == "weights"
    if skip is None:
        assert restored.describe() == ("restored before candidate: weights of 1 module (7 tensors), 1 optimizer "
                                       "state, RNG (python, torch, numpy); grads set to None")


# -- comparison over results dirs written as the worker writes them -------------------------------
def _launch_dir(tmp_path: Path, per_rank: dict[int, tuple[dict, dict]], info: dict[int, dict] | None = None):
    rd = tmp_path / "main"
    for rank, (ref, cand) in per_rank.items():
        for name, caps in (("reference", ref), ("candidate", cand)):
            path = rd / "captures" / name / f"rank{rank}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(caps, path)
        write_json_atomic(rd / "info" / f"rank{rank}.json", {
            "equivalence_restored": {"modules": 1, "tensors": 2, "optimizers": 0, "rng": ["python", "torch"],
                                     "weights": True, "grads": True},
            "equivalence_parameters": ["m.weight", "m.bias"], **(info or {}).get(rank, {})})
    launch = Launch(case_id="t", name="main", kind="equivalence", entry="x:y", args={}, nodes=1,
                    nproc_per_node=len(per_rank), gpus_per_node=0, env={}, timeout=10, results_dir=str(rd),
                    job_name="t")
    return LaunchOutcome(launch, Outcome.COMPLETED)


def _caps(**over):
    caps = {"out": torch.zeros(3, 2), "grads": {"m.weight": torch.ones(2), "m.bias": torch.ones(1)},
            "trace": ["a", "b", {"mb": 1}]}
    caps.update(over)
    return caps


def test_compare_passes_and_summary_says_what_was_restored(tmp_path: Path) -> None:
    outcome = _launch_dir(tmp_path, {0: (_caps(), _caps()), 1: (_caps(), _caps())},
                          info={1: {"equivalence_notes": ["megatron-core 0.16.1"]}})
    spec = CompareSpec(expect_grads=True)
    checks = compare_launch(outcome, spec)
    assert [c.passed for c in checks] == [True, True]
    text = summary(outcome, checks, spec)
    assert text.startswith("6 tensors bit-identical on 2 ranks; every parameter's gradient captured; "
                           "restored before candidate: weights of 1 module")
    assert "RNG (python, torch)" in text and text.endswith("megatron-core 0.16.1")


def test_compare_reports_every_differing_rank_with_key_count_max_and_index(tmp_path: Path) -> None:
    bad1, bad2 = _caps(), _caps()
    bad1["out"] = bad1["out"].clone()
    bad1["out"][2, 1] = 0.5
    bad2["grads"] = {"m.weight": torch.tensor([1.0, 3.0]), "m.bias": torch.ones(1)}
    outcome = _launch_dir(tmp_path, {0: (_caps(), _caps()), 1: (_caps(), bad1), 2: (_caps(), bad2)})
    checks = compare_launch(outcome, CompareSpec())
    assert [c.passed for c in checks] == [True, False, False]
    first = checks[1].detail
    assert first.startswith("rank 1: out: 1/6 elements differ, max abs diff 0.5 at index [2, 1]")
    assert "ranks differing: 1, 2 of 3" in first and "rank 2: grads.m.weight: 1/2 elements differ" in first
    assert "restored before candidate" in first
    assert checks[2].data["mismatches"][0]["index"] == [1]


def test_compare_trace_and_grad_coverage(tmp_path: Path) -> None:
    swapped = _caps(trace=["b", "a", {"mb": 1}])
    lacking = _caps(grads={"m.weight": torch.ones(2), "m.bias": None})
    outcome = _launch_dir(tmp_path, {0: (_caps(), swapped), 1: (_caps(), lacking)})
    c0, c1 = compare_launch(outcome, CompareSpec(expect_grads=True))
    assert "rank 0: trace: item 0 differs (expected 'a', got 'b'; 3 vs 3 items)" in c0.detail
    assert ("rank 1: expect grads: all_parameters: candidate lacks the gradient of 1 of 2 parameters: m.bias"
            in c1.detail)
    assert c1.data["missing_grads"] == {"candidate": ["m.bias"]}
    assert trace_difference(["a"], ["a", "b"]) == "trace: 1 items expected, 2 recorded; first extra item 1: 'b'"
    assert trace_difference(None, ["a"]) == "trace: present only in the candidate capture"


def test_missing_capture_and_rank_skip(tmp_path: Path) -> None:
    outcome = _launch_dir(tmp_path, {0: (_caps(), _caps()), 1: (_caps(), _caps())})
    (Path(outcome.launch.results_dir) / "captures" / "candidate" / "rank1.pt").unlink()
    checks = compare_launch(outcome, CompareSpec())
    assert not checks[1].passed and "capture 'candidate' is missing" in checks[1].detail
    write_json_atomic(Path(outcome.launch.results_dir) / "info" / "rank0.json", {"equivalence_skip": "no GPU"})
    (skip,) = compare_launch(outcome, CompareSpec())
    assert skip.skipped and skip.detail == "rank 0: no GPU"
    assert json.loads(json.dumps(skip.data)) == {}
