"""matplotlib figures as inline SVG (text kept as text; ids made unique per figure).

Colours are fixed so the report reads the same everywhere (and tests can look for them):
actual #1f77b4 (blue), golden #222222 dashed, later launches #ff7f0e (orange), failing
steps #d62728 (red), the resume step a grey dotted line.
"""
from __future__ import annotations

import io
import itertools
import math
import re
from typing import Any

from runner.report.html.collect import Heatmap, MetricView

ACTUAL, GOLDEN, LATER, FAIL = "#1f77b4", "#222222", "#ff7f0e", "#d62728"
_ids = itertools.count()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _svg(fig: Any) -> str:
    plt = _pyplot()
    plt.rcParams["svg.hashsalt"] = f"runner-fig-{next(_ids)}"
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg"):], flags=re.S)
    return text


def metric_svg(view: MetricView) -> str:
    plt = _pyplot()
    steps_rel, rel = view.relative_difference()
    has_rel = bool(steps_rel)
    fig, axes = plt.subplots(2 if has_rel else 1, 1, figsize=(6.4, 4.2 if has_rel else 2.8), sharex=True,
                             squeeze=False, gridspec_kw={"height_ratios": [3, 1.4] if has_rel else [1]})
    ax = axes[0][0]
    if view.actual is not None:
        ax.plot(view.actual.steps, view.actual.values, color=ACTUAL, linewidth=1.6, label=view.actual.label)
        values = dict(zip(view.actual.steps, view.actual.values))
        bad = [s for s in view.failing_steps if s in values]
        if bad:
            ax.scatter(bad, [values[s] for s in bad], color=FAIL, marker="x", s=36, zorder=5,
                       label=f"failing steps ({len(view.failing_steps)})")
    if view.golden is not None:  # drawn over the run, dashed: where they agree both stay visible
        ax.plot(view.golden.steps, view.golden.values, color=GOLDEN, linestyle="--", linewidth=1.2, label="golden",
                zorder=4)
    for curve in view.later:
        ax.plot(curve.steps, curve.values, color=LATER, linewidth=1.4, linestyle="-", marker=".", markersize=3,
                label=f"{curve.label} (resumed)" if view.resume_step is not None else curve.label)
        values = dict(zip(curve.steps, curve.values))
        bad = [s for s in view.failing_later_steps if s in values]
        if bad:
            ax.scatter(bad, [values[s] for s in bad], color=FAIL, marker="o", facecolors="none", s=40, zorder=5,
                       label=f"{curve.label} differs ({len(bad)})")
    if view.resume_step is not None:
        ax.axvline(view.resume_step, color="#777777", linestyle=":", linewidth=1.2)
        ax.annotate(f"resume @ {view.resume_step}", (view.resume_step, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -10), textcoords="offset points", fontsize=8, color="#555555")
    ax.set_title(view.name + (" (not checked: skipped by the case)" if view.skipped else ""))
    ax.legend(loc="best", fontsize=7)
    if has_rel:
        rax = axes[1][0]
        finite = [r if math.isfinite(r) else float("nan") for r in rel]
        rax.plot(steps_rel, finite, color=ACTUAL, linewidth=1.0, marker=".", markersize=3)
        if view.rtol is not None:
            rax.axhline(view.rtol, color=FAIL, linestyle="--", linewidth=0.8, label=f"rtol {view.rtol:g}")
            rax.legend(loc="best", fontsize=7)
        fails = set(view.failing_steps)
        bad_rel = [(s, r) for s, r in zip(steps_rel, finite) if s in fails]
        if bad_rel:
            rax.scatter([s for s, _ in bad_rel], [r for _, r in bad_rel], color=FAIL, marker="x", s=30, zorder=5)
        rax.set_ylabel("rel. diff", fontsize=8)
        rax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    from matplotlib.ticker import MaxNLocator

    axes[-1][0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1][0].set_xlabel("step")
    return _svg(fig)


def heatmap_svg(hm: Heatmap) -> str:
    plt = _pyplot()
    rows, cols = len(hm.cells), len(hm.cells[0]) if hm.cells else 0
    width = max(3.0, min(6.4, 1.5 + cols * 0.06))
    height = max(1.6, min(4.0, 0.9 + rows * 0.06))
    fig, ax = plt.subplots(figsize=(width, height))
    img = ax.imshow(hm.cells, cmap="inferno", aspect="auto", interpolation="nearest")
    ax.grid(False)
    if rows == 1:
        ax.set_yticks([])
    ax.set_xlabel("element" if rows == 1 else "column (flattened trailing dims)", fontsize=7)
    fig.colorbar(img, ax=ax, label="|difference|")
    block = "" if hm.block == (1, 1) else f", cells = max of {hm.block[0]}x{hm.block[1]}"
    ax.set_title(f"{hm.key} (rank {hm.rank}, shape {list(hm.shape)}{block})", fontsize=8)
    return _svg(fig)
