"""The generic ``equivalence`` case kind: the user's reference and candidate implementations
must give the same captures (outputs, gradients, an ordered trace) on every rank.

Args::

    setup: "pkg.mod:fn" | "path/file.py:fn"   # state = setup(ctx, params), once per rank
    reference: "..."                          # captures = reference(ctx, state)
    candidate: "..."                          # captures = candidate(ctx, state), same start state
    params: {...}                             # passed to setup as a dict
    seed: 1234                                # every RNG is seeded before setup
    deterministic: true                       # deterministic algorithms (and restored after)
    compare: {mode: bitwise | close, rtol: 0, atol: 0}
    expect: {grads: all_parameters}           # both captures hold every parameter's gradient
    requires: {"megatron-core": ">=0.16"}     # not installed / not matching -> SKIPPED
    requires_hint: "pip install '...'"        # shown with that reason

Between the two runs the kind restores every module and optimizer reachable from the state
(``runner.equivalence.reachable``) and every RNG to what they were right after setup and
sets the gradients to None; the verdict detail says so. A path is relative to the spec file;
every function is located (file/module exists, defines the name) at collection, without
importing anything. This module imports without torch.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Sequence

from runner.errors import CaseError
from runner.hookspecs import hookimpl
from runner.kinds.equivalence_refs import FunctionRef, RefError, locate, parse_ref
from runner.kinds.equivalence_requires import check_specifiers, skip_reason
from runner.plan.kind import CaseKind, CompareContext, LaunchPlan
from runner.records import Case, CheckResult, LaunchOutcome

ROLES = ("setup", "reference", "candidate")
ENTRY = "runner.kinds.equivalence_worker:run"
#: FOR THE PROJECT'S OWN TESTS ONLY: the kind skips part of its restore, so a comparison must fail
FAULTS = ("skip_weight_restore", "skip_zero_grad", "skip_rng_restore")

_REF: dict[str, Any] = {"type": "string", "minLength": 3,
        "description": "'pkg.module:function' or 'path/file.py:function' (relative to the spec file)"}

ARGS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": list(ROLES),
    "properties": {
        "setup": {**_REF, "description": "state = setup(ctx, params), once per rank; " + _REF["description"]},
        "reference": {**_REF, "description": "captures = reference(ctx, state); " + _REF["description"]},
        "candidate": {**_REF, "description": "captures = candidate(ctx, state), from the same start state"},
        "params": {"type": "object", "description": "free mapping passed to setup"},
        "seed": {"type": "integer", "minimum": 0, "default": 1234},
        "deterministic": {"type": "boolean", "default": True,
                          "description": "deterministic algorithms (and their env) while the functions run"},
        "compare": {"type": "object", "additionalProperties": False, "properties": {
            "mode": {"enum": ["bitwise", "close"], "default": "bitwise"},
            "rtol": {"type": "number", "minimum": 0, "default": 0},
            "atol": {"type": "number", "minimum": 0, "default": 0}}},
        "expect": {"type": "object", "additionalProperties": False, "properties": {
            "grads": {"enum": ["all_parameters"],
                      "description": "both captures' 'grads' hold a non-None gradient of every parameter "
                                     "that requires grad (named as runner.equivalence.grads names them)"}}},
        "requires": {"type": "object", "additionalProperties": {"type": "string"},
                     "description": "distribution -> PEP 440 specifier; unmet -> SKIPPED at collection"},
        "requires_hint": {"type": "string", "description": "how to install the requirements (shown when SKIPPED)"},
        "inject_fault": {"enum": list(FAULTS),
                         "description": "FOR THE PROJECT'S OWN TESTS ONLY: skip part of the restore between "
                                        "the runs, so the comparison must fail (negative control)"},
    },
}


def refs_of(case: Case) -> dict[str, FunctionRef]:
    return {role: parse_ref(str(case.args[role]), case.spec_file) for role in ROLES}


def launch_args(case: Case, refs: Mapping[str, FunctionRef] | None = None) -> dict[str, Any]:
    """What the worker reads: the case's args with each function reference resolved."""
    refs = refs or refs_of(case)
    args = {k: v for k, v in case.args.items() if k not in ROLES and k not in ("requires", "requires_hint")}
    args.update({role: ref.to_json() for role, ref in refs.items()})
    return args


def requirement_skip(case: Case) -> str | None:
    requires = case.args.get("requires") or {}
    return skip_reason(requires, case.args.get("requires_hint")) if requires else None


class EquivalenceKind(CaseKind):
    id = "equivalence"
    description = ("your reference vs candidate implementation: same start state, captures (outputs, "
                   "gradients, ordered trace) compared on every rank")
    args_schema = ARGS_SCHEMA
    poolable = True

    def __init__(self) -> None:
        self._checks: dict[str, Sequence[CheckResult]] = {}

    def validate(self, case: Case) -> None:
        bad = check_specifiers(case.args.get("requires") or {})
        if bad:
            raise CaseError("args.requires", bad)
        unmet = requirement_skip(case) is not None
        for role in ROLES:
            try:
                ref = parse_ref(str(case.args[role]), case.spec_file)
                if ref.is_file or not unmet:   # a module of a missing requirement cannot be located
                    locate(ref)
            except RefError as exc:
                raise CaseError(f"args.{role}", str(exc)) from None

    def plan(self, case: Case) -> Sequence[LaunchPlan]:
        return [LaunchPlan("main", ENTRY, launch_args(case))]

    def compare(self, case: Case, outcomes: Sequence[LaunchOutcome], ctx: CompareContext) -> Sequence[CheckResult]:
        from runner.kinds.equivalence_compare import CompareSpec, compare_launch

        checks = compare_launch(outcomes[0], CompareSpec.from_args(case.args))
        self._checks[outcomes[0].launch.results_dir] = checks   # for info(), which comes next
        return checks

    def info(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Mapping[str, Any]:
        from runner.kinds.equivalence_compare import CompareSpec, compare_launch, summary

        if not outcomes:
            return {}
        spec = CompareSpec.from_args(case.args)
        checks = self._checks.pop(outcomes[0].launch.results_dir, None) or compare_launch(outcomes[0], spec)
        return {"summary": summary(outcomes[0], checks, spec)}

    def describe(self, case: Case) -> list[str]:
        """The resolved functions, for ``runner show``."""
        lines = describe_refs(refs_of(case))
        reason = requirement_skip(case)
        if reason:
            lines.append(f"skipped: {reason}")
        return lines


def describe_refs(refs: Mapping[str, FunctionRef]) -> list[str]:
    """One line per function: as written, where it is defined (file:line), how it loads."""
    lines = []
    for role, ref in refs.items():
        try:
            where = locate(ref)
            at = f"{where.source}:{where.line}" if where.source else "(no Python source)"
        except RefError as exc:
            at = f"not found: {exc}"
        origin = f"module {ref.module}" if ref.module else "loaded from its file"
        lines.append(f"{role + ':':10} {ref.text}  ->  {ref.function}() at {at} ({origin})")
    return lines


@hookimpl
def runner_register_kinds(registry) -> None:
    registry.add(EquivalenceKind)


@hookimpl
def runner_collect_modifycases(session, cases: list[Case]) -> None:
    """Cases whose ``requires`` are not met are SKIPPED at collection, with the hint."""
    for i, case in enumerate(cases):
        if case.kind == EquivalenceKind.id and not case.skip:
            reason = requirement_skip(case)
            if reason:
                cases[i] = replace(case, skip=reason)
