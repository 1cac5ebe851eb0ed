"""The ``a2a_overlap`` case kind: MoE all-to-all overlap equivalence under 1F1B.

A configuration of the ``equivalence`` kind: one equivalence launch per case whose setup /
reference / candidate are ``workloads.moe.worker:setup|reference|candidate`` (the sequential
reference and the overlapped 1F1B schedule with asynchronous all-to-all), compared bitwise
on every rank by the same comparison, with every parameter's gradient required and the
candidate's node calls checked against the documented order (the reference's trace). The
expert-parallel size is the world size.

This module must import without torch (the CLI lists and validates without it).
"""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

from runner.errors import CaseError
from runner.hookspecs import hookimpl
from runner.kinds.equivalence import ENTRY as EQUIVALENCE_ENTRY
from runner.kinds.equivalence_refs import parse_ref
from runner.plan.kind import CaseKind, CompareContext, LaunchPlan
from runner.records import Case, CheckResult, LaunchOutcome

FAULT_NAMES = ("skip_weight_restore", "skip_zero_grad", "wrong_microbatch_grad", "swap_node_calls",
               "skip_wait")  # see workloads/moe/faults.py
#: faults of the equivalence kind's restore; the others are planted in the schedule
KIND_FAULTS = ("skip_weight_restore", "skip_zero_grad")
FUNCTIONS = {role: f"workloads.moe.worker:{role}" for role in ("setup", "reference", "candidate")}

#: defaults of the optional args (also documented in the schema)
DEFAULTS: dict[str, Any] = {
    "level": "layer",
    "variant": "moe",
    "microbatches": 4,
    "num_experts": 8,
    "topk": 2,
    "hidden": 64,
    "heads": 4,
    "seq_len": 32,
    "dtype": "float32",
    "seed": 1234,
    "vocab_size": 256,
}

#: GPU models (``_``-separated words of ``case.platform``, e.g. ``gpu_tesla_v100_sxm2_16gb``)
#: without bfloat16 arithmetic (pre-Ampere)
NO_BF16_GPUS = frozenset({"v100", "v100s", "p100", "p40", "p4", "t4", "k80", "m60", "m40"})

ARGS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "level": {"enum": ["layer", "chunk"], "default": "layer",
                  "description": "layer: one transformer layer, 1F1B over its four nodes; "
                                 "chunk: model chunks (embedding + layers + output/loss), 1F1B over chunks"},
        "variant": {"enum": ["dense", "moe", "moe_shared_expert"], "default": "moe",
                    "description": "dense MLP (no communication), MoE, or MoE with a shared expert"},
        "microbatches": {"type": "integer", "minimum": 1, "default": 4},
        "num_experts": {"type": "integer", "minimum": 1, "default": 8,
                        "description": "total experts; must be divisible by the world size (expert-parallel size)"},
        "topk": {"type": "integer", "minimum": 1, "default": 2},
        "hidden": {"type": "integer", "minimum": 1, "default": 64},
        "ffn_hidden": {"type": "integer", "minimum": 1,
                       "description": "expert / MLP inner size; default 2 * hidden"},
        "heads": {"type": "integer", "minimum": 1, "default": 4},
        "seq_len": {"type": "integer", "minimum": 1, "default": 32},
        "vocab_size": {"type": "integer", "minimum": 2, "default": 256, "description": "chunk level only"},
        "layers": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1,
                   "description": "chunk level (required there): transformer layers per model chunk, e.g. "
                                  "[2, 1] = chunk 0 (embedding + 2 layers), chunk 1 (1 layer + output + loss). "
                                  "Like virtual-pipeline chunks on one rank: forward of (chunk, microbatch) "
                                  "units interleaves with backward of the previous microbatch's units, layer "
                                  "pairs matched forward-first to backward-last, as Megatron's "
                                  "test_schedule_chunk_1f1b does with differing layer counts"},
        "dtype": {"enum": ["float32", "bfloat16"], "default": "float32"},
        "seed": {"type": "integer", "minimum": 0, "default": 1234},
        "poison_receive_buffers": {"type": "boolean", "default": False,
                                   "description": "debug mode: every receive buffer holds NaN until its wait "
                                                  "(the rows land only then), so a missed wait fails every time"},
        "inject_fault": {"enum": list(FAULT_NAMES),
                         "description": "FOR THE PROJECT'S OWN TESTS ONLY: plant a schedule bug so the "
                                        "comparison must fail (negative control); see workloads/moe/faults.py"},
    },
}


def resolve_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The case's args with defaults filled in (shared by validate and the worker)."""
    out = dict(DEFAULTS)
    out.update(args)
    out.setdefault("ffn_hidden", 2 * out["hidden"])
    return out


class A2AOverlapKind(CaseKind):
    id = "a2a_overlap"
    description = ("MoE all-to-all overlap equivalence: the overlapped 1F1B schedule's outputs and "
                   "gradients must be bit-identical to the sequential reference on every rank")
    args_schema = ARGS_SCHEMA

    def validate(self, case: Case) -> None:
        args = resolve_args(case.args)
        world = case.resources.world_size
        if args["topk"] > args["num_experts"]:
            raise CaseError("args.topk", f"topk {args['topk']} is larger than num_experts {args['num_experts']}")
        if args["num_experts"] % world:
            raise CaseError("args.num_experts", f"num_experts {args['num_experts']} is not divisible by the "
                                                f"world size {world} (the expert-parallel size)")
        if args["hidden"] % args["heads"]:
            raise CaseError("args.hidden", f"hidden {args['hidden']} is not divisible by heads {args['heads']}")
        if args["level"] == "chunk" and not args.get("layers"):
            raise CaseError("args.layers", "level 'chunk' needs 'layers' (layers per model chunk, e.g. [2, 1])")
        if args["level"] == "layer" and "layers" in case.args:
            raise CaseError("args.layers", "'layers' is only used at level 'chunk'")
        words = set((case.platform or "").lower().split("_"))
        if args["dtype"] == "bfloat16" and words & NO_BF16_GPUS:
            raise CaseError("args.dtype", f"bfloat16 is not supported on platform '{case.platform}'")

    def equivalence_args(self, case: Case) -> dict[str, Any]:
        """The equivalence launch this case is: functions, params, seed, compare, expect."""
        args = resolve_args(case.args)
        params = {k: v for k, v in args.items() if k != "inject_fault"}
        fault = args.get("inject_fault")
        out: dict[str, Any] = {role: parse_ref(ref, case.spec_file).to_json() for role, ref in FUNCTIONS.items()}
        if fault and fault not in KIND_FAULTS:
            params["inject_fault"] = fault
        out.update({"params": params, "seed": args["seed"], "deterministic": True,
                    "compare": {"mode": "bitwise"}, "expect": {"grads": "all_parameters"}})
        if fault in KIND_FAULTS:
            out["inject_fault"] = fault
        return out

    def plan(self, case: Case) -> Sequence[LaunchPlan]:
        return [LaunchPlan("main", EQUIVALENCE_ENTRY, self.equivalence_args(case))]

    def describe(self, case: Case) -> list[str]:
        from runner.kinds.equivalence import describe_refs

        return describe_refs({role: parse_ref(ref, case.spec_file) for role, ref in FUNCTIONS.items()})

    def compare(self, case: Case, outcomes: Sequence[LaunchOutcome], ctx: CompareContext) -> Sequence[CheckResult]:
        from runner.kinds.equivalence_compare import CompareSpec, compare_launch

        return compare_launch(outcomes[0], CompareSpec(expect_grads=True))

    def info(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Mapping[str, Any]:
        from runner.results import ResultsDir

        if not outcomes:
            return {}
        per_rank = ResultsDir(outcomes[0].launch.results_dir).info()
        overlap = in_flight_summary(per_rank.get(0, {}).get("a2a_in_flight") or [])
        ratios, refs, ovls = [], [], []
        for rec in per_rank.values():
            ref, ovl = rec.get("time_reference_s"), rec.get("time_overlapped_s")
            if isinstance(ref, (int, float)) and isinstance(ovl, (int, float)) and ref > 0:
                ratios.append(ovl / ref)
                refs.append(ref)
                ovls.append(ovl)
        if not ratios:
            return {}
        ratio = statistics.median(ratios)
        ref, ovl = statistics.median(refs), statistics.median(ovls)
        return {"overlap_ratio": round(ratio, 4),
                "time_reference_s": round(ref, 6),
                "time_overlapped_s": round(ovl, 6),
                "a2a_in_flight": overlap,
                "summary": f"bit-identical, node order as documented; {overlap['text']}; overlapped/reference time "
                           f"{ratio:.2f} ({ovl * 1e3:.0f} ms / {ref * 1e3:.0f} ms)"}


def in_flight_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Which all-to-alls (rank 0) had compute in flight, per launching node."""
    per_node: dict[str, list[int]] = {}
    overlapped_with: dict[str, set[str]] = {}
    for rec in records:
        node = str(rec.get("a2a", "")).split(" ")[0]
        compute = [str(c).split(" ")[0] for c in rec.get("compute") or []]
        counts = per_node.setdefault(node, [0, 0])
        counts[1] += 1
        if compute:
            counts[0] += 1
            overlapped_with.setdefault(node, set()).update(compute)
    total = sum(c[1] for c in per_node.values())
    busy = sum(c[0] for c in per_node.values())
    text = f"{busy} of {total} all-to-alls had compute in flight" if total else "no all-to-all (dense)"
    fwd = per_node.get("f.dispatch.forward")
    if fwd:
        text += (f" (forward dispatch {fwd[0]} of {fwd[1]}, with "
                 + ", ".join(sorted(overlapped_with.get("f.dispatch.forward", ()))) + ")")
    return {"text": text, "nodes": {k: {"with_compute": v[0], "total": v[1],
                                        "compute": sorted(overlapped_with.get(k, ()))} for k, v in per_node.items()}}


@hookimpl
def runner_register_kinds(registry) -> None:
    registry.add(A2AOverlapKind)
