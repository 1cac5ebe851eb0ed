"""Which checks run on which metric, with which tolerances (Megatron's table, case overrides).

Megatron-LM's thresholds (its regular pipeline test), all with ``atol = 0``:

======================================================  =====================================
metric                                                  checks
======================================================  =====================================
lm loss, num-zeros, mtp_1 loss, mtp_2 loss, total loss  deterministic + approximate rtol 0.05
generated_tokens, logprobs                              deterministic + approximate rtol 0.05
mem-allocated-bytes, mem-max-allocated-bytes            approximate rtol 0.05
iteration-time                                          median rtol 0.05
======================================================  =====================================

Our own goldens (full precision, with a fingerprint sidecar) differ in one row:
``iteration-time`` gets the load-proof ``timing`` check (see ``runner.compare.checks``)
instead of the raw median, which a busy machine fails. A metric not in the table gets
``approximate`` rtol 0.05; ``iteration-cpu-time`` (read by ``timing``) gets no check of its own.
A case overrides any of it under ``compare.metrics.<name>``
(``checks``, ``rtol``, ``atol``, ``window``, ``skip``) and picks the metrics with
``compare.select`` (Megatron's ``METRICS``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from runner.records import Case

EXACT_METRICS = ("lm loss", "num-zeros", "mtp_1 loss", "mtp_2 loss", "total loss", "generated_tokens", "logprobs")
MEGATRON_DEFAULT_SELECT = ("lm loss", "num-zeros")

MEGATRON_RULES: dict[str, dict[str, Any]] = {
    **{m: {"checks": ["deterministic", "approximate"], "rtol": 0.05, "atol": 0.0} for m in EXACT_METRICS},
    "mem-allocated-bytes": {"checks": ["approximate"], "rtol": 0.05, "atol": 0.0},
    "mem-max-allocated-bytes": {"checks": ["approximate"], "rtol": 0.05, "atol": 0.0},
    "iteration-time": {"checks": ["median"], "rtol": 0.05, "atol": 0.0},
}
FULL_PRECISION_RULES: dict[str, dict[str, Any]] = {
    "iteration-time": {"checks": ["timing"], "rtol": 1.0, "atol": 0.0},
}
#: metrics recorded only for another check (the ``timing`` check reads ``iteration-cpu-time``)
COMPANION_RULES: dict[str, dict[str, Any]] = {"iteration-cpu-time": {"checks": []}}
FALLBACK_RULE: dict[str, Any] = {"checks": ["approximate"], "rtol": 0.05, "atol": 0.0}


@dataclass(frozen=True)
class Rule:
    checks: tuple[str, ...]
    rtol: float = 0.05
    atol: float = 0.0
    window: tuple[int, int] | None = None
    skip: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)    # anything else, for plugin checks

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> "Rule":
        known = {"checks", "rtol", "atol", "window", "skip"}
        window = raw.get("window")
        return cls(tuple(raw.get("checks", ())), float(raw.get("rtol", 0.05)), float(raw.get("atol", 0.0)),
                   (int(window[0]), int(window[1])) if window else None, bool(raw.get("skip", False)),
                   {k: v for k, v in raw.items() if k not in known})


@dataclass(frozen=True)
class CompareOptions:
    """A case's ``compare:`` settings as the golden stage uses them."""

    deterministic: bool = True                       # False: exact checks skipped
    select: tuple[str, ...] | None = None            # Megatron's METRICS: only these, each required
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_case(cls, case: Case) -> "CompareOptions":
        return cls.from_mapping(case.compare or {})

    @classmethod
    def from_mapping(cls, compare: Mapping[str, Any]) -> "CompareOptions":
        select = compare.get("select")
        return cls(bool(compare.get("deterministic", True)),
                   tuple(select) if select is not None else None,
                   dict(compare.get("metrics", {}) or {}))

    def rule(self, metric: str, *, full_precision: bool) -> Rule:
        base = dict(MEGATRON_RULES.get(metric) or COMPANION_RULES.get(metric) or FALLBACK_RULE)
        if full_precision and metric in FULL_PRECISION_RULES:
            base = dict(FULL_PRECISION_RULES[metric])
        base.update(self.overrides.get(metric, {}))
        return Rule.from_mapping(base)

    def metrics_to_check(self, golden_metrics: Sequence[str]) -> list[str]:
        """The selected metrics, or (no selection) every metric of the golden."""
        return list(self.select) if self.select is not None else list(golden_metrics)
