"""What the HTML report shows of each case, read from the results dirs and golden files.

Pure data (no plotting): metric curves (actual, golden, later launches such as a resumed
run 2), the steps each check flagged, tensor mismatches and the |difference| maps of the
first mismatching tensors (loaded from the captures, downsampled).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from runner.records import CaseResult, Verdict

if TYPE_CHECKING:
    from runner.compare.golden import Rule
    from runner.run.session import Session

HEATMAP_SHAPE = (48, 96)          # the largest heatmap drawn (rows, columns)
MAX_HEATMAPS = 4                  # per case


@dataclass(frozen=True)
class Curve:
    label: str                                 # "run1", "golden", "run2", ...
    steps: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class MetricView:
    name: str
    actual: Curve | None
    golden: Curve | None
    later: tuple[Curve, ...] = ()              # e.g. the resumed run 2
    failing_steps: tuple[int, ...] = ()        # flagged by a golden check
    failing_later_steps: tuple[int, ...] = ()  # flagged by a resume check
    resume_step: int | None = None
    rtol: float | None = None
    skipped: bool = False                      # the case's compare options skip this metric

    def relative_difference(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """|actual - golden| / |golden| per step both have (0 where both are 0, nan skipped)."""
        if self.actual is None or self.golden is None:
            return (), ()
        gold = dict(zip(self.golden.steps, self.golden.values))
        steps, rel = [], []
        for s, a in zip(self.actual.steps, self.actual.values):
            g = gold.get(s)
            if g is None or math.isnan(g) or math.isnan(a):
                continue
            steps.append(s)
            rel.append(abs(a - g) / abs(g) if g != 0 else (0.0 if a == 0 else math.inf))
        return tuple(steps), tuple(rel)


@dataclass(frozen=True)
class Heatmap:
    key: str
    rank: int | None
    shape: tuple[int, ...]
    cells: tuple[tuple[float, ...], ...]       # |difference|, max-pooled to at most HEATMAP_SHAPE
    block: tuple[int, int]                     # elements per cell (rows, columns)


@dataclass(frozen=True)
class CaseView:
    result: CaseResult
    metrics: tuple[MetricView, ...] = ()
    mismatches: tuple[Mapping[str, Any], ...] = ()   # each: check, rank, key, reason, count, numel, max_abs_diff, index
    heatmaps: tuple[Heatmap, ...] = ()
    logs: tuple[tuple[str, str], ...] = ()           # (launch name, tail) for ERROR/TIMEOUT/INFRA
    notes: tuple[str, ...] = field(default_factory=tuple)


def _curve(label: str, series: Mapping[int, float]) -> Curve:
    steps = tuple(sorted(series))
    return Curve(label, steps, tuple(float(series[s]) for s in steps))


def _flagged(result: CaseResult, prefix: str) -> dict[str, set[int]]:
    """metric -> steps that failing checks named ``<prefix>:<metric>[:check]`` list."""
    out: dict[str, set[int]] = {}
    for c in result.checks:
        parts = c.name.split(":")
        if c.passed or len(parts) < 2 or parts[0] != prefix:
            continue
        for m in (c.data or {}).get("mismatches", []) or []:
            if isinstance(m, Mapping) and isinstance(m.get("step"), int):
                out.setdefault(parts[1], set()).add(m["step"])
    return out


def _rtol(rule: "Rule | None") -> float | None:
    """The relative tolerance the golden's ``approximate`` check holds the metric to, if it runs one."""
    return rule.rtol if rule is not None and "approximate" in rule.checks else None


def metric_views(session: "Session", result: CaseResult) -> tuple[list[MetricView], list[str]]:
    from runner.results import ResultsDir

    case, notes = result.case, []
    runs = [(o.launch.name, ResultsDir(o.launch.results_dir).metrics()) for o in result.launches]
    runs = [(n, m) for n, m in runs if m]
    golden: Mapping[str, Mapping[int, float]] = {}
    rules: dict[str, Rule] = {}       # only with a golden file: its checks are what the rules decide
    try:
        from runner.compare.golden import CompareOptions, golden_path_for, load_golden

        if session.plugins.kind(case.kind).case_uses_golden(case):
            path = golden_path_for(case, session.golden_root, session.environment_for(case))
            if path.is_file():
                gf = load_golden(path)
                golden = {k: s.as_dict() for k, s in gf.metrics.items()}
                options = CompareOptions.from_case(case)
                rules = {name: options.rule(name, full_precision=gf.full_precision)
                         for name in {*golden, *(runs[0][1] if runs else {})}}
            else:
                notes.append(f"no golden file at {path}")
    except Exception as exc:  # noqa: BLE001 - a report shows what it can
        notes.append(f"golden values unavailable: {type(exc).__name__}: {exc}")
    if not runs and not golden:
        return [], notes
    first = runs[0][1] if runs else {}
    later = runs[1:]
    resume = result.info.get("resume_iteration")
    if later and not isinstance(resume, int):
        steps = sorted(later[0][1].get(next(iter(later[0][1])), {})) if later[0][1] else []
        resume = steps[0] - 1 if steps else None
    flagged, flagged_later = _flagged(result, "golden"), _flagged(result, "resume")
    names = list(golden) + [n for n in first if n not in golden]
    views = []
    for name in names:
        views.append(MetricView(
            name=name,
            actual=_curve(runs[0][0], first[name]) if name in first else None,
            golden=_curve("golden", golden[name]) if name in golden else None,
            later=tuple(_curve(n, m[name]) for n, m in later if name in m),
            failing_steps=tuple(sorted(flagged.get(name, ()))),
            failing_later_steps=tuple(sorted(flagged_later.get(name, ()))),
            resume_step=resume if later else None,
            rtol=_rtol(rules.get(name)),
            skipped=name in rules and rules[name].skip,
        ))
    return views, notes


def mismatch_rows(result: CaseResult) -> list[dict[str, Any]]:
    rows = []
    for c in result.checks:
        if c.passed:
            continue
        for m in (c.data or {}).get("mismatches", []) or []:
            if isinstance(m, Mapping) and "key" in m:
                rows.append({"check": c.name, "rank": (c.data or {}).get("rank"), **dict(m)})
    return rows


def _resolve(tree: Any, key: str) -> Any:
    """A capture's tensor by its key: deepdiff path ``root['a'][0]`` or dotted ``a.b.c``
    (dotted names may hold dots themselves: the longest matching key wins)."""
    import re

    if key.startswith("root"):
        parts: list[Any] = [a if a else int(b) for a, b in re.findall(r"\[(?:'([^']*)'|(\d+))\]", key)]
        node = tree
        for p in parts:
            node = node[p]
        return node
    node, rest = tree, key
    while rest:
        if isinstance(node, Mapping):
            hit = next((k for k in sorted(node, key=lambda k: -len(str(k)))
                        if rest == str(k) or rest.startswith(f"{k}.")), None)
            if hit is None:
                raise KeyError(key)
            node, rest = node[hit], rest[len(str(hit)) + 1:]
        elif isinstance(node, (list, tuple)):
            head, _, rest = rest.partition(".")
            node = node[int(head)]
        else:
            raise KeyError(key)
    return node


def _pooled(diff: Any) -> tuple[tuple[tuple[float, ...], ...], tuple[int, int]]:
    import torch

    d = diff.detach().double()
    if d.dim() == 0:
        d = d.reshape(1, 1)
    elif d.dim() == 1:
        d = d.reshape(1, -1)
    elif d.dim() > 2:
        d = d.reshape(d.shape[0], -1)
    rows, cols = d.shape
    out_r, out_c = min(rows, HEATMAP_SHAPE[0]), min(cols, HEATMAP_SHAPE[1])
    pooled = torch.nn.functional.adaptive_max_pool2d(d[None, None], (out_r, out_c))[0, 0]
    return tuple(tuple(float(v) for v in row) for row in pooled.tolist()), (math.ceil(rows / out_r),
                                                                              math.ceil(cols / out_c))


def heatmaps(result: CaseResult, rows: Sequence[Mapping[str, Any]], notes: list[str]) -> list[Heatmap]:
    """|reference - candidate| of the first mismatching tensors, from the launch's captures."""
    from runner.results import ResultsDir

    wanted = [r for r in rows if r.get("reason", "values") == "values"][:MAX_HEATMAPS]
    if not wanted or not result.launches:
        return []
    results = ResultsDir(result.launches[0].launch.results_dir)
    names = results.capture_names()
    if len(names) < 2:
        notes.append("no captures to draw the differences from")
        return []
    ref_name = "reference" if "reference" in names else names[0]
    other = next(n for n in names if n != ref_name)
    out: list[Heatmap] = []
    cache: dict[tuple[str, int], Any] = {}
    for row in wanted:
        rank_value = row.get("rank")
        rank = rank_value if isinstance(rank_value, int) else 0
        try:
            for n in (ref_name, other):
                if (n, rank) not in cache:
                    cache[(n, rank)] = results.load_capture(n, rank)
            a = _resolve(cache[(ref_name, rank)], str(row["key"]))
            b = _resolve(cache[(other, rank)], str(row["key"]))
            diff = (a.double() - b.double()).abs()
            cells, block = _pooled(diff)
            out.append(Heatmap(str(row["key"]), rank, tuple(a.shape), cells, block))
        except Exception as exc:  # noqa: BLE001 - a missing capture costs the picture, not the report
            notes.append(f"no heatmap for {row['key']} (rank {rank}): {type(exc).__name__}: {exc}")
    return out


def case_view(session: "Session", result: CaseResult) -> CaseView:
    notes: list[str] = []
    metrics: list[MetricView] = []
    if result.verdict not in (Verdict.SKIPPED, Verdict.INTERRUPTED):
        metrics, notes = metric_views(session, result)
    rows = mismatch_rows(result)
    maps = heatmaps(result, rows, notes) if rows else []
    logs = tuple((o.launch.name, o.log_tail) for o in result.launches if o.log_tail) \
        if result.verdict in (Verdict.ERROR, Verdict.TIMEOUT, Verdict.INFRA) else ()
    return CaseView(result, tuple(metrics), tuple(rows), tuple(maps), logs, tuple(notes))
