"""The verdict of an equivalence launch: reference vs candidate captures on every rank.

Per rank, one check ``captures:rank{R}``: the captures compared by ``runner.compare.tensors``
(bitwise or within rtol/atol), the ``trace`` compared item by item in order, and — with
``expect: {grads: all_parameters}`` — one non-None gradient per parameter the rank's state
has (named by ``runner.equivalence.grads``) in both captures. The first failing check's
detail names every rank that differs. Imports torch only when captures are loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from runner.records import CheckResult, LaunchOutcome
from runner.results import ResultsDir

NAMES = ("reference", "candidate")


@dataclass(frozen=True)
class CompareSpec:
    bitwise: bool = True
    rtol: float = 0.0
    atol: float = 0.0
    expect_grads: bool = False
    names: tuple[str, str] = NAMES   # capture names: (reference, candidate)

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> "CompareSpec":
        cmp = args.get("compare") or {}
        return cls(bitwise=cmp.get("mode", "bitwise") == "bitwise", rtol=float(cmp.get("rtol", 0.0)),
                   atol=float(cmp.get("atol", 0.0)),
                   expect_grads=(args.get("expect") or {}).get("grads") == "all_parameters")

    @property
    def mode(self) -> str:
        return "bit-identical" if self.bitwise else f"equal within rtol {self.rtol:g}, atol {self.atol:g}"


def trace_difference(expected: Any, actual: Any) -> str | None:
    if expected is None and actual is None:
        return None
    if not isinstance(expected, list) or not isinstance(actual, list):
        return (f"trace: present only in the {'candidate' if expected is None else 'reference'} capture"
                if expected is None or actual is None else "trace: not a list")
    for i, (e, a) in enumerate(zip(expected, actual)):
        if e != a:
            return f"trace: item {i} differs (expected {e!r}, got {a!r}; {len(expected)} vs {len(actual)} items)"
    if len(expected) != len(actual):
        i = min(len(expected), len(actual))
        extra = actual[i] if len(actual) > i else expected[i]
        return (f"trace: {len(expected)} items expected, {len(actual)} recorded; first "
                f"{'extra' if len(actual) > i else 'missing'} item {i}: {extra!r}")
    return None


def missing_grads(captures: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    got = captures.get("grads")
    if not isinstance(got, Mapping):
        return list(names)
    return [n for n in names if got.get(n) is None]


def _rank_check(results: ResultsDir, rank: int, spec: CompareSpec, info: Mapping[str, Any]) -> CheckResult:
    from runner.compare.tensors import compare_tensor_trees, path_key

    name = f"captures:rank{rank}"
    ref_name, cand_name = spec.names
    missing = [c for c in spec.names if not results.capture_file(c, rank).is_file()]
    if missing:
        return CheckResult(name, False, f"rank {rank}: capture '{missing[0]}' is missing "
                                        f"({results.capture_file(missing[0], rank)})",
                           data={"rank": rank, "missing": missing})
    ref = dict(results.load_capture(ref_name, rank))
    cand = dict(results.load_capture(cand_name, rank))
    problems: list[str] = []
    data: dict[str, Any] = {"rank": rank}
    if spec.expect_grads:
        expected = info.get("equivalence_parameters")
        if not isinstance(expected, list):
            problems.append("the rank recorded no parameter list for expect: grads")
        else:
            for label, caps in ((ref_name, ref), (cand_name, cand)):
                lacking = missing_grads(caps, expected)
                if lacking:
                    more = f" (+{len(lacking) - 3} more)" if len(lacking) > 3 else ""
                    problems.append(f"expect grads: all_parameters: {label} lacks the gradient of "
                                    f"{len(lacking)} of {len(expected)} parameters: "
                                    + ", ".join(lacking[:3]) + more)
                    data.setdefault("missing_grads", {})[label] = lacking
    trace = trace_difference(ref.pop("trace", None), cand.pop("trace", None))
    if trace:
        problems.append(trace)
    mismatches = [replace(m, key=path_key(m.key))
                  for m in compare_tensor_trees(ref, cand, bitwise=spec.bitwise, rtol=spec.rtol, atol=spec.atol)]
    if mismatches:
        text = mismatches[0].describe()
        if len(mismatches) > 1:
            text += f" (+{len(mismatches) - 1} more differing)"
        problems.append(text)
        data["mismatches"] = [m.to_json() for m in mismatches]
    tensors = _count_tensors(ref)
    data["tensors"] = tensors
    if problems:
        return CheckResult(name, False, f"rank {rank}: " + "; ".join(problems), data=data)
    return CheckResult(name, True, f"rank {rank}: {tensors} tensors {spec.mode}", data=data)


def _count_tensors(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, Mapping):
        return sum(_count_tensors(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count_tensors(v) for v in value)
    return 0


def skip_reason(outcome: LaunchOutcome) -> str | None:
    """The ``runner.equivalence.Skip`` reason a rank recorded, if any."""
    for rank, rec in sorted(ResultsDir(outcome.launch.results_dir).info().items()):
        reason = rec.get("equivalence_skip")
        if reason:
            return f"rank {rank}: {reason}"
    return None


def restored_note(outcome: LaunchOutcome) -> str:
    """What the kind restored between the runs (rank 0's record), one phrase."""
    from runner.kinds.equivalence_state import Restored

    rec = ResultsDir(outcome.launch.results_dir).info().get(0, {}).get("equivalence_restored")
    if not isinstance(rec, Mapping):
        return ""
    return Restored(int(rec["modules"]), int(rec["tensors"]), int(rec["optimizers"]), tuple(rec["rng"]),
                    bool(rec["weights"]), bool(rec["grads"])).describe()


def notes(outcome: LaunchOutcome) -> list[str]:
    """``ctx.record("equivalence_notes", [...])`` of every rank, deduplicated, in rank order."""
    out: list[str] = []
    for _, rec in sorted(ResultsDir(outcome.launch.results_dir).info().items()):
        for note in rec.get("equivalence_notes") or []:
            if str(note) not in out:
                out.append(str(note))
    return out


def compare_launch(outcome: LaunchOutcome, spec: CompareSpec) -> list[CheckResult]:
    """One check per rank (or one skipped check when a rank raised Skip)."""
    reason = skip_reason(outcome)
    if reason:
        return [CheckResult("equivalence", True, reason, skipped=True)]
    results = ResultsDir(outcome.launch.results_dir)
    info = results.info()
    ranks = sorted(set(range(outcome.launch.world_size)) | set(results.capture_ranks(spec.names[0]))
                   | set(results.capture_ranks(spec.names[1])))
    checks = [_rank_check(results, r, spec, info.get(r, {})) for r in ranks]
    failed = [c for c in checks if not c.passed]
    tail = restored_note(outcome)
    if failed:
        first = failed[0]
        extra = f"; ranks differing: {', '.join(str(c.data['rank']) for c in failed)} of {len(ranks)}"
        others = "".join(f" | {c.detail}" for c in failed[1:3])
        detail = first.detail + extra + others + (f" ({tail})" if tail else "")
        checks[checks.index(first)] = replace(first, detail=detail)
    return checks


def summary(outcome: LaunchOutcome, checks: Sequence[CheckResult], spec: CompareSpec) -> str:
    """The PASSED detail: what matched, what was restored, the ranks' notes."""
    per_rank = [c for c in checks if c.name.startswith("captures:rank")]
    tensors = sum(int(c.data.get("tensors", 0)) for c in per_rank)
    parts = [f"{tensors} tensors {spec.mode} on {len(per_rank)} rank{'s' if len(per_rank) != 1 else ''}"]
    if spec.expect_grads:
        parts.append("every parameter's gradient captured")
    note = restored_note(outcome)
    if note:
        parts.append(note)
    parts.extend(notes(outcome))
    return "; ".join(parts)
