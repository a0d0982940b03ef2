"""report.html's sections on the per-case spread, the worst cases and the ScoreCard view, drawn from the report.json
document (``spread`` of each result, ``scorecard``) and the worst items' images the run kept (``gallery_images``:
item id → ``{"meta", "arrays"}``, see :func:`mriq_validate.criteria.evaluate`). :func:`sections` returns them as
``(anchor, title, html)`` for :func:`mriq_validate.report_html.render_html`.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from . import figures

STATS = (("n", "n"), ("mean", "mean"), ("sd", "SD"), ("min", "min"), ("q1", "Q1"), ("median", "median"), ("q3", "Q3"), ("max", "max"))
SIDES = (("evaluated", "evaluated"), ("reference", "real reference"))
STATUS_COLOURS = {"reported": "var(--pass)", "partly": "var(--warn)", "not covered": "var(--skip)"}


def _esc(x: Any) -> str:
    return "" if x is None else html.escape(str(x), quote=True)


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "—" if x is None else _esc(x)
    return str(x) if isinstance(x, int) or not math.isfinite(x) else f"{x:.4g}"


def _worst_text(worst: list[dict[str, Any]]) -> str:
    return ", ".join(f"{_esc(w['id'] if w['id'] is not None else '#' + str(w['index']))} {_num(w['value'])}" for w in worst)


def _spread_rows(r: dict[str, Any]) -> str:
    s = r["spread"]
    name = f"<b>{_esc(r['criterion_id'])}</b>{'' if r.get('gate', True) else '<br><span class=tag>advisory</span>'}"
    metric = _esc((r.get("metric") or {}).get("name") or r.get("metric_name"))
    if not s.get("per_item"):
        return f"<tr><td>{name}</td><td>{metric}</td><td colspan='{len(STATS) + 3}' class='empty'>{_esc(s.get('reason'))}</td></tr>"
    direction = "higher is better" if s.get("higher_is_better") else "lower is better"
    contrast = f" ({_esc(s['contrast'])}, the contrast the verdict shows)" if s.get("contrast") else ""
    lead = (f"<td rowspan='2'>{name}</td><td rowspan='2'>{metric}<br><span class='tag'>{direction}</span></td>"
            f"<td rowspan='2'><span class='tag'>{_esc(s.get('item'))}{contrast}</span></td>")
    rows = []
    for i, (key, label) in enumerate(SIDES):
        side, first = s.get(key), lead if i == 0 else ""
        if side is None:
            rows.append(f"<tr>{first}<td>{label}</td><td colspan='{len(STATS) + 1}' class='empty'>{_esc(s.get('reference_note'))}</td></tr>")
            continue
        cells = "".join(f"<td class='num'>{_num(side.get(k))}</td>" for k, _ in STATS)
        rows.append(f"<tr>{first}<td>{label}</td>{cells}<td><span class='tag'>{_worst_text(side.get('worst') or [])}</span></td></tr>")
    return "".join(rows)


def _gallery(r: dict[str, Any], entry: dict[str, Any] | None, label_names: dict[int, str]) -> str:
    meta = (entry or {}).get("meta") or {}
    worst = r["spread"]["evaluated"]["worst"]
    metric = meta.get("metric") or (r.get("metric") or {}).get("name") or r.get("metric_name") or ""
    title = f"<h3>{_esc(r['criterion_id'])}: the {len(worst)} worst items by {_esc(metric)}</h3>"
    if entry is None:
        return (title + "<p class='empty'>The images of these items were not kept in this report (for example a report merged "
                "from shards); their ids and values are in the table above.</p>")
    arrays, generated = entry["arrays"], entry["arrays"].get("generated") is not None
    titles = [f"#{k + 1} {i}" for k, i in enumerate(meta["ids"])]
    ref = meta.get("reference_values") or [None] * len(titles)
    captions = {"generated": [_num(v) for v in meta["values"]],
                "real": [_num(b) if generated else _num(v) + ("" if b is None else f" (ref {_num(b)})") for v, b in zip(meta["values"], ref)]}
    fig = figures.gallery_figure(arrays, captions, titles, label_names, {"generated": f"generated\n{metric}", "real": f"real\n{metric}"})
    if fig is None:
        return title + "<p class='empty'>No item to show.</p>"
    img = f'<div class="fig"><img src="{figures.data_uri(figures.png_bytes(fig, dpi=80))}" alt="worst items of {_esc(r["criterion_id"])}"></div>'
    what = ("Top row: the model's images, worst first by the criterion's measure; bottom row: the real image with the same mask "
            "(the model was asked for the top image with this mask). " if generated else
            "The real test items on which the measure is worst (the items it scores are real images), with their masks. ")
    slices = " Volumes are shown by the axial slice through the lesion centroid." if arrays.get("slice_index") is not None else ""
    return (title + img + f"<p class='caption'>{what}Contrast {_esc(meta.get('contrast'))}; outlines: the mask labels; under each "
            f"image: the measure's value on it (— where the criterion did not measure the real data).{slices} One item: "
            f"{_esc(meta.get('item'))}.</p>")


def spread_section(rep: dict[str, Any], gallery_images: dict[str, dict[str, Any]], label_names: dict[int, str]) -> str | None:
    """The per-case spread table of every evaluated criterion and the worst-case gallery of the gating per-item criteria
    on the model; None when no result has a spread."""
    results = [r for r in rep.get("results", []) if isinstance(r.get("spread"), dict)]
    if not results:
        return None
    head = ("<tr><th>Criterion</th><th>Measure</th><th>One item is</th><th>Set</th>" + "".join(f"<th>{t}</th>" for _, t in STATS)
            + "<th>Worst items (id value), worst first</th></tr>")
    out = ["<p>The mean and its CI decide a criterion; the spread of the per-item values shows whether a few items are far "
           "worse than the rest (per-case reporting as in the BraSyn and SynthRAD brain-MRI synthesis challenges). Quartiles "
           "by linear interpolation; SD with ddof 1. A set-level measure has no per-item values.</p>",
           f"<table class='trace'>{_cols(8, 8, 12, 7, 3, *[5] * (len(STATS) - 1), 27)}{head}{''.join(_spread_rows(r) for r in results)}</table>"]
    shown = [r for r in results if r["spread"].get("per_item") and r.get("gate", True) and r.get("kind", "model") == "model"
             and (r["spread"].get("evaluated") or {}).get("worst") and r["spread"]["evaluated"]["worst"][0].get("id") is not None]
    if shown:
        out.append("<h3>Worst cases</h3>")
        drawn: dict[str, str] = {}  # the same measure on the same images (e.g. a criterion again with `by:`) is drawn once
        for r in shown:
            entry = gallery_images.get(r["item_id"])
            same = json.dumps((entry or {}).get("meta", {}) | {"criterion_id": None}, sort_keys=True, default=str) if entry else None
            if same in drawn:
                out.append(f"<h3>{_esc(r['criterion_id'])}</h3><p class='caption'>The same worst items as {_esc(drawn[same])} (the same "
                           "measure on the same images).</p>")
                continue
            out.append(_gallery(r, entry, label_names))
            if same is not None:
                drawn[same] = r["criterion_id"]
    return "".join(out)


def _cols(*widths: int) -> str:
    return "<colgroup>" + "".join(f"<col style='width:{w}%'>" for w in widths) + "</colgroup>"


def _value(v: Any) -> str:
    if isinstance(v, (list, tuple)) and all(not isinstance(x, (dict, list)) for x in v):
        return _esc(", ".join(str(x) for x in v)) if v else "<span class='empty'>none</span>"
    if isinstance(v, (dict, list)):
        return f"<details><summary>{len(v)} entries</summary><pre>{_esc(json.dumps(v, indent=1, default=str))}</pre></details>"
    return _esc(v)


def _kv(content: dict[str, Any]) -> str:
    return "<table class='kv'>" + "".join(f"<tr><th>{_esc(k.replace('_', ' '))}</th><td>{_value(v)}</td></tr>" for k, v in content.items()) + "</table>"


def _section_content(sec: dict[str, Any]) -> str:
    c = dict(sec.get("content") or {})
    if sec["key"] == "reference_dataset":
        return "".join(_kv(card) for card in c.pop("datasets", [])) or "<span class='empty'>no data loaded</span>"
    if sec["key"] == "dataset_usage":
        return "".join(f"<div class='cou'><b>{_esc(u['suite'])}.</b> {_esc(u['text'])}</div>" for u in c.pop("context_of_use", []))
    if sec["key"] == "generation_process":
        return "".join(_kv({k: v for k, v in (m.get("provenance") or {}).items()}) for m in c.pop("models", [])) or \
            "<span class='empty'>no model loaded</span>"
    return _kv(c) if c else ""


def scorecard_section(sc: dict[str, Any]) -> str:
    """The ScoreCard view: the seven Cs and what covers them, every criterion's C and section, the eight sections."""
    cs_rows = "".join(
        f"<tr><td><b>{_esc(c['title'])}</b></td><td>{_esc(c['definition'])}</td>"
        f"<td>{', '.join(('<b>' + _esc(i) + '</b>') if i in c['gating'] else _esc(i) for i in c['criteria']) or '—'}</td>"
        f"<td>{_esc(', '.join(c['evaluated'])) or '—'}</td>"
        f"<td>{'✔ covered' if c['covered'] else '✘ not covered: ' + _esc(c['note'])}</td></tr>" for c in sc["cs"])
    crit_rows = "".join(
        f"<tr><td><b>{_esc(c['criterion_id'])}</b>{'' if c['gate'] else '<br><span class=tag>advisory</span>'}</td>"
        f"<td>{_esc(c['metric'])}</td><td>{_esc((c['c'] or 'unmapped').capitalize())}</td>"
        f"<td>{_esc(next(s['title'] for s in sc['sections'] if s['key'] == c['section']))}</td>"
        f"<td><span class='tag'>{_esc(c['source'])}: {_esc(c['reason'])}</span></td><td>{_esc(', '.join(c['verdicts']))}</td></tr>"
        for c in sc["criteria"])
    sec_rows = "".join(
        f"<tr><td><b>{k + 1}. {_esc(s['title'])}</b></td><td style='color:{STATUS_COLOURS.get(s['status'], 'inherit')};font-weight:600'>"
        f"{_esc(s['status'])}</td><td>{_esc(s['summary'])}"
        f"{('<br><span class=tag>criteria: ' + _esc(', '.join(s['criteria'])) + '</span>') if s['criteria'] else ''}{_section_content(s)}</td></tr>"
        for k, s in enumerate(sc["sections"]))
    scope = "".join(f"<li><b>{_esc(o['topic'])}</b>: {_esc(o['statement'])}</li>" for o in sc["out_of_scope"])
    return (f"<p>Every criterion placed on one of the seven Cs and one of the eight sections of the {_esc(sc['framework'])}. "
            f"Bold: gating criteria.</p><h3>The seven Cs</h3><table class='trace'>{_cols(11, 25, 25, 14, 25)}<tr><th>C</th><th>What it asks</th><th>Criteria of the suites</th>"
            f"<th>Evaluated in this run</th><th>Covered</th></tr>{cs_rows}</table>"
            f"<h3>Every criterion on the ScoreCard</h3><table class='trace'>{_cols(12, 11, 9, 14, 44, 10)}<tr><th>Criterion</th><th>Measure</th><th>C</th><th>Section</th>"
            f"<th>Placed by</th><th>Verdict(s)</th></tr>{crit_rows}</table>"
            f"<h3>The eight sections</h3><table class='trace'>{_cols(18, 8, 74)}<tr><th>Section</th><th>Status</th><th>Content</th></tr>{sec_rows}</table>"
            f"<h3>Out of scope</h3><ul class='tight'>{scope}</ul>")


def label_names(rep: dict[str, Any]) -> dict[int, str]:
    """Mask label value → name, from the first data context that has labels (for the outlines' legend)."""
    for c in rep["provenance"].get("contexts") or []:
        labels = (c.get("data") or {}).get("labels")
        if labels:
            return {int(v): str(k) for k, v in labels.items()}
    return {}


def sections(rep: dict[str, Any], gallery_images: dict[str, dict[str, Any]] | None) -> list[tuple[str, str, str]]:
    """The page's sections drawn here, ``(anchor, title, html)``, in order; those with nothing to show left out."""
    out = []
    spread = spread_section(rep, gallery_images or {}, label_names(rep))
    if spread:
        out.append(("spread", "Per-case spread and worst cases", spread))
    if isinstance(rep.get("scorecard"), dict):
        out.append(("scorecard", "ScoreCard view (7 Cs)", scorecard_section(rep["scorecard"])))
    return out
