"""The report page: one self-contained HTML file (inline CSS, JS and SVG; nothing fetched)."""
from __future__ import annotations

import html
import time
from typing import Any, Callable, Sequence

from runner.report.base import SessionSummary
from runner.report.html.collect import CaseView

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.15em;margin:1.2em 0 .3em} h3{font-size:1em;margin:.8em 0 .2em}
.meta{color:#555;margin-bottom:1em} .filters{margin:.6em 0;display:flex;gap:1em;flex-wrap:wrap;align-items:center}
table{border-collapse:collapse;margin:.4em 0} th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.detail{min-width:24em;max-width:60em;font-size:.92em}
#verdicts td:first-child{max-width:34em;overflow-wrap:anywhere} h2{overflow-wrap:anywhere}
.v{font-weight:600;padding:1px 6px;border-radius:3px;color:#fff}
.PASSED{background:#2e7d32}.FAILED,.ERROR,.TIMEOUT,.XPASS{background:#c62828}.INFRA{background:#6a1b9a}
.SKIPPED,.XFAIL,.INTERRUPTED{background:#f9a825;color:#222}
section.case{border-top:2px solid #eee;padding-top:.4em} .plots{display:flex;flex-wrap:wrap;gap:10px}
.plots figure{margin:0} .plots svg{max-width:640px;height:auto}
pre{background:#f6f6f6;border:1px solid #e2e2e2;padding:.5em;max-height:24em;overflow:auto;font-size:12px}
.note{color:#8a6d00} .hidden{display:none}
"""

_JS = """
(function () {
  function apply() {
    var verdicts = {};
    document.querySelectorAll('input.verdict-filter').forEach(function (b) { verdicts[b.value] = b.checked; });
    var kind = document.getElementById('kind-filter').value;
    var text = document.getElementById('text-filter').value.toLowerCase();
    var shown = 0;
    document.querySelectorAll('[data-case]').forEach(function (el) {
      var ok = verdicts[el.dataset.verdict] !== false && (!kind || el.dataset.kind === kind) &&
               (!text || el.dataset.text.indexOf(text) >= 0);
      el.classList.toggle('hidden', !ok);
      if (ok && el.tagName === 'TR') { shown += 1; }
    });
    document.getElementById('shown').textContent = String(shown);
  }
  document.querySelectorAll('.filters input, .filters select').forEach(function (el) {
    el.addEventListener('input', apply);
    el.addEventListener('change', apply);
  });
  apply();
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _attrs(view: CaseView) -> str:
    r = view.result
    text = " ".join([r.case.id, r.case.kind, r.verdict.value, r.detail, *r.case.tags]).lower()
    return f'data-case="{_e(r.case.id)}" data-verdict="{r.verdict.value}" data-kind="{_e(r.case.kind)}" data-text="{_e(text)}"'


def _anchor(view: CaseView, index: int) -> str:
    return f"case-{index}"


def _table(views: Sequence[CaseView]) -> str:
    rows = []
    for i, v in enumerate(views):
        r = v.result
        rows.append(f'<tr {_attrs(v)}><td><a href="#{_anchor(v, i)}">{_e(r.case.id)}</a></td><td>{_e(r.case.kind)}</td>'
                    f'<td>{_e(r.backend)}</td><td><span class="v {r.verdict.value}">{r.verdict.value}</span></td>'
                    f'<td>{r.duration:.1f}s</td><td class="detail">{_e(r.detail)}</td></tr>')
    return ('<table id="verdicts"><thead><tr><th>case</th><th>kind</th><th>backend</th><th>verdict</th>'
            '<th>duration</th><th>detail</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


def _filters(views: Sequence[CaseView]) -> str:
    verdicts = sorted({v.result.verdict.value for v in views})
    kinds = sorted({v.result.case.kind for v in views})
    boxes = "".join(f'<label><input type="checkbox" class="verdict-filter" value="{x}" checked> {x}</label>'
                    for x in verdicts)
    options = '<option value="">all kinds</option>' + "".join(f'<option value="{_e(k)}">{_e(k)}</option>' for k in kinds)
    return (f'<div class="filters">{boxes}<select id="kind-filter">{options}</select>'
            f'<input id="text-filter" type="search" placeholder="filter by text" size="30">'
            f'<span><span id="shown">{len(views)}</span> of {len(views)} cases shown</span></div>')


def _mismatch_table(view: CaseView) -> str:
    rows = "".join(
        f"<tr><td>{_e(m.get('rank', ''))}</td><td>{_e(m.get('key'))}</td><td>{_e(m.get('reason', ''))}</td>"
        f"<td>{_e(m.get('count', ''))} / {_e(m.get('numel', ''))}</td><td>{_e(m.get('max_abs_diff', ''))}</td>"
        f"<td>{_e(m.get('index', ''))}</td></tr>" for m in view.mismatches[:50])
    more = f"<p>… and {len(view.mismatches) - 50} more</p>" if len(view.mismatches) > 50 else ""
    return ("<h3>Mismatching tensors</h3><table class=\"mismatches\"><thead><tr><th>rank</th><th>tensor</th>"
            "<th>reason</th><th>differing / elements</th><th>max abs diff</th><th>at index</th></tr></thead><tbody>"
            + rows + "</tbody></table>" + more)


def _case(view: CaseView, index: int, metric_svg: Callable[[Any], str], heatmap_svg: Callable[[Any], str]) -> str:
    r = view.result
    parts = [f'<section class="case" id="{_anchor(view, index)}" {_attrs(view)}>',
             f'<h2><span class="v {r.verdict.value}">{r.verdict.value}</span> {_e(r.case.id)}</h2>']
    if r.detail:
        parts.append(f"<p>{_e(r.detail)}</p>")
    failed = [c for c in r.checks if not c.passed]
    if failed:
        parts.append("<ul>" + "".join(f"<li><b>{_e(c.name)}</b>: {_e(c.detail)}</li>" for c in failed[:20]) + "</ul>")
    if view.metrics:
        parts.append("<h3>Metrics</h3><div class=\"plots\">")
        parts.extend(f'<figure class="metric" data-metric="{_e(m.name)}">{metric_svg(m)}</figure>' for m in view.metrics)
        parts.append("</div>")
    if view.mismatches:
        parts.append(_mismatch_table(view))
    if view.heatmaps:
        parts.append("<h3>Where they differ</h3><div class=\"plots\">")
        parts.extend(f'<figure class="heatmap">{heatmap_svg(h)}</figure>' for h in view.heatmaps)
        parts.append("</div>")
    for name, log in view.logs:
        parts.append(f"<h3>Log tail ({_e(name)})</h3><pre>{_e(log)}</pre>")
    for note in view.notes:
        parts.append(f'<p class="note">{_e(note)}</p>')
    parts.append("</section>")
    return "".join(parts)


def render_page(views: Sequence[CaseView], summary: SessionSummary, *, metric_svg: Callable[[Any], str],
                heatmap_svg: Callable[[Any], str]) -> str:
    counts: dict[str, int] = {}
    for v in views:
        counts[v.result.verdict.value] = counts.get(v.result.verdict.value, 0) + 1
    line = ", ".join(f"{n} {k.lower()}" for k, n in sorted(counts.items())) or "no cases"
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    body = [f"<h1>runner report</h1><div class=\"meta\">{_e(line)} in {summary.duration:.1f}s · platform "
            f"{_e(summary.platform)} · backend {_e(summary.backend)} · exit {summary.exit_code} · results "
            f"<code>{_e(summary.results_dir)}</code> · {when}</div>",
            _filters(views), _table(views)]
    body.extend(_case(v, i, metric_svg, heatmap_svg) for i, v in enumerate(views))
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>runner report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}<script>{_JS}</script></body></html>\n")
