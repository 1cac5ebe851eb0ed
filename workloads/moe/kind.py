"""The ``a2a_overlap`` case kind: MoE all-to-all overlap equivalence under 1F1B.

One launch per case (``workloads.moe.worker:run`` in every rank). The worker writes two
captures per rank — ``reference`` (sequential forward/backward per microbatch) and
``overlapped`` (the 1F1B schedule with asynchronous all-to-all) — and ``compare`` checks
that they are bit-identical on every rank. The expert-parallel size is the world size.

This module must import without torch (the CLI lists and validates without it).
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any, Mapping, Sequence

from runner.errors import CaseError
from runner.hookspecs import hookimpl
from runner.plan.kind import CaseKind, CompareContext, LaunchPlan
from runner.records import Case, CheckResult, LaunchOutcome

FAULT_NAMES = ("skip_weight_restore", "skip_zero_grad", "wrong_microbatch_grad")  # see workloads/moe/faults.py

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
    poolable = True

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

    def plan(self, case: Case) -> Sequence[LaunchPlan]:
        return [LaunchPlan("main", "workloads.moe.worker:run", dict(case.args))]

    def compare(self, case: Case, outcomes: Sequence[LaunchOutcome], ctx: CompareContext) -> Sequence[CheckResult]:
        from runner.compare.tensors import compare_tensor_trees, path_key
        from runner.results import ResultsDir

        results = ResultsDir(outcomes[0].launch.results_dir)
        ranks = sorted(set(range(outcomes[0].launch.world_size)) | set(results.capture_ranks("reference"))
                       | set(results.capture_ranks("overlapped")))
        checks: list[CheckResult] = []
        for rank in ranks:
            name = f"captures:rank{rank}"
            missing = [c for c in ("reference", "overlapped") if not results.capture_file(c, rank).is_file()]
            if missing:
                checks.append(CheckResult(name, False, f"rank {rank}: capture '{missing[0]}' is missing "
                                                       f"({results.capture_file(missing[0], rank)})",
                                          data={"rank": rank, "missing": missing}))
                continue
            ref = results.load_capture("reference", rank)
            ovl = results.load_capture("overlapped", rank)
            mismatches = [replace(m, key=path_key(m.key)) for m in compare_tensor_trees(ref, ovl, bitwise=True)]
            if not mismatches:
                checks.append(CheckResult(name, True, f"rank {rank}: {len(ref)} tensors bit-identical",
                                          data={"rank": rank, "tensors": len(ref)}))
                continue
            detail = f"rank {rank}: {mismatches[0].describe()}"
            if len(mismatches) > 1:
                detail += f" (+{len(mismatches) - 1} more differing tensors)"
            checks.append(CheckResult(name, False, detail, data={
                "rank": rank,
                "mismatches": [{"key": m.key, "reason": m.reason, "count": m.count, "numel": m.numel,
                                "max_abs_diff": m.max_abs_diff, "index": list(m.index)} for m in mismatches],
            }))
        return checks

    def info(self, case: Case, outcomes: Sequence[LaunchOutcome]) -> Mapping[str, Any]:
        from runner.results import ResultsDir

        if not outcomes:
            return {}
        per_rank = ResultsDir(outcomes[0].launch.results_dir).info()
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
                "summary": f"bit-identical; overlapped/reference time {ratio:.2f} ({ovl * 1e3:.0f} ms / {ref * 1e3:.0f} ms)"}


@hookimpl
def runner_register_kinds(registry) -> None:
    registry.add(A2AOverlapKind)
