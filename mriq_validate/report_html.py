"""``report.html``: the evidence report as one self-contained page (inline CSS, figures as base64 PNG, no scripts, no
network at view time). Rendered from the ``report.json`` document (:func:`mriq_validate.report.build_report`).

Order: release decision → context of use → results at a glance (figure) → traceability table → dose-response →
samples → per-case spread and worst cases → ScoreCard (7 Cs) → deviations → limitations → tool self-check → provenance.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from . import evidence_html, figures

_CSS = """
:root { --pass:#1a7f37; --fail:#cf222e; --error:#8250df; --skip:#6e7781; --warn:#bf8700; --line:#d0d7de; --muted:#57606a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color:#1f2328; margin:0; background:#f6f8fa; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 24px 40px; background:#fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 6px; }
.sub { color: var(--muted); margin: 0 0 14px; }
nav { font-size: 13px; margin: 8px 0 4px; }
nav a { margin-right: 12px; color:#0969da; text-decoration:none; }
.banner { border-radius: 6px; padding: 14px 18px; color:#fff; margin: 10px 0 6px; }
.banner .status { font-size: 26px; font-weight: 700; letter-spacing: .5px; }
.banner .summary { font-size: 15px; margin-top: 2px; }
.banner.CLEARED { background: var(--pass); }
.banner.NOT-CLEARED { background: var(--fail); }
.banner.INCOMPLETE { background: var(--warn); }
.counts span { display:inline-block; margin: 6px 8px 0 0; padding: 1px 8px; border-radius: 10px; background:#eaeef2; font-size: 13px; }
.v { display:inline-block; padding: 0 6px; border-radius: 4px; color:#fff; font-weight:600; font-size: 12px; white-space: nowrap; }
.v.PASS { background: var(--pass); } .v.FAIL { background: var(--fail); } .v.ERROR { background: var(--error); }
.v.SKIP, .v.NOT-RUN { background: var(--skip); } .v.advisory.FAIL { background: var(--warn); }
.tag { font-size: 11px; color: var(--muted); white-space: nowrap; }
.tag.gate { color:#1f2328; font-weight:600; }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; margin: 6px 0 10px; }
table.trace { table-layout: fixed; font-size: 12px; }
table.trace td { overflow-wrap: anywhere; }
table.trace .tag { white-space: normal; display: inline-block; }
table.trace .params { font-size: 11px; color: #1f2328; }
th, td { border: 1px solid var(--line); padding: 4px 6px; text-align: left; vertical-align: top; }
th { background:#f6f8fa; font-weight:600; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.FAIL td:first-child { border-left: 4px solid var(--fail); }
tr.ERROR td:first-child { border-left: 4px solid var(--error); }
tr.PASS td:first-child { border-left: 4px solid var(--pass); }
tr.advisory.FAIL td:first-child { border-left-color: var(--warn); }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 11.5px; word-break: break-all; }
.hazard { color: #6e4d00; font-size: 11.5px; margin-top: 3px; }
details summary { cursor: pointer; color:#0969da; font-size: 11.5px; }
details pre { white-space: pre-wrap; font-size: 11px; background:#f6f8fa; padding: 6px; margin: 4px 0; max-width: 100%; }
.fig { margin: 8px 0; } .fig img { max-width: 100%; border: 1px solid var(--line); }
.caption { color: var(--muted); font-size: 12.5px; margin: 2px 0 10px; }
.cou { background:#f6f8fa; border-left: 4px solid #0969da; padding: 8px 12px; margin: 6px 0 12px; }
ul.tight { margin: 4px 0 8px; padding-left: 20px; } ul.tight li { margin: 2px 0; }
.kv th { width: 220px; }
.empty { color: var(--muted); font-style: italic; }
footer { color: var(--muted); font-size: 12px; margin-top: 30px; border-top: 1px solid var(--line); padding-top: 8px; }
@media print { body { background:#fff; } main { max-width: none; } details { display:block; } }
"""


def esc(x: Any) -> str:
    """HTML-escaped text (None → empty)."""
    return "" if x is None else html.escape(str(x), quote=True)


def fmt(x: Any) -> str:
    """A number with 4 significant digits; '—' for missing."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, float)):
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        return f"{x:.4g}"
    return esc(x)


def _estimate(e: dict[str, Any] | None) -> str:
    if not isinstance(e, dict):
        return "—"
    text = fmt(e.get("value"))
    if e.get("n_boot"):
        text += f"<br><span class='tag'>[{fmt(e.get('ci_low'))}, {fmt(e.get('ci_high'))}] n={e.get('n')}</span>"
    elif e.get("n") is not None:
        text += f"<br><span class='tag'>n={e.get('n')}</span>"
    return text


def _verdict(verdict: str, gate: bool = True) -> str:
    cls = verdict.replace(" ", "-") + ("" if gate else " advisory")
    return f"<span class='v {cls}'>{esc(verdict)}</span>"


def _gate(gate: bool) -> str:
    return "<span class='tag gate'>gating</span>" if gate else "<span class='tag'>advisory</span>"


def _img(fig: Any, alt: str) -> str:
    if fig is None:
        return ""
    return f'<div class="fig"><img src="{figures.data_uri(figures.png_bytes(fig))}" alt="{esc(alt)}"></div>'


def _kv(rows: list[tuple[str, Any]], raw: bool = False) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v if raw else esc(v)}</td></tr>" for k, v in rows)
    return f"<table class='kv'>{body}</table>"


def _json_details(obj: Any, label: str = "configuration") -> str:
    return f"<details><summary>{esc(label)}</summary><pre>{esc(json.dumps(obj, indent=1, sort_keys=True, default=str))}</pre></details>"


def _measure(r: dict[str, Any]) -> str:
    metric = r.get("metric") if isinstance(r.get("metric"), dict) else None
    name = (metric or {}).get("name") or r.get("metric_name") or "?"
    params = {k: v for k, v in (metric or r.get("params") or {}).items()
              if k != "name" and not isinstance(v, (dict, list)) and len(str(v)) <= 16}
    text = f"<b>{esc(name)}</b>"
    if params:
        text += "<br><span class='params'>" + esc(", ".join(f"{k}={v}" for k, v in sorted(params.items()))) + "</span>"
    pert = r.get("perturbation") or r.get("perturbation_spec")
    if pert:
        p = pert.get("params") if isinstance(pert.get("params"), dict) else {k: v for k, v in pert.items() if k != "name"}
        text += f"<br><span class='tag'>perturbation: {esc(pert.get('name'))} ({esc(', '.join(f'{k}={v}' for k, v in sorted(p.items())))})</span>"
    th = r.get("threshold") or r.get("threshold_spec")
    if th:
        text += f"<br><span class='tag'>compare: {esc(th.get('relative'))}, on {esc(th.get('on'))}, unit {esc(th.get('unit'))}; n_boot {esc(r.get('n_boot', '?'))}</span>"
    config = {"metric": metric or {"name": name, **(r.get("params") or {})}, "threshold": th, "perturbation": pert, "seed": r.get("seed")}
    return text + _json_details(config)


def _threshold(r: dict[str, Any]) -> str:
    bounds = r.get("bounds")
    if bounds:
        text = " and ".join(f"{k} {fmt(v)}" for k, v in bounds.items() if v is not None)
    else:
        th = r.get("threshold_spec") or {}
        text = " and ".join(f"{k} {fmt(th.get(k))}" for k in ("min", "max") if th.get(k) is not None) or "—"
        if th.get("unit") == "se":
            text += " SE"
    rel = (r.get("threshold") or r.get("threshold_spec") or {}).get("relative", "none")
    what = {"difference": "on generated − real", "ratio": "on generated / real"}.get(rel, "on the value")
    if r.get("kind") == "sensitivity":
        what = "on the change towards worse"
    checked = f"<br><span class='tag'>checked {fmt(r['checked'])}</span>" if r.get("checked") is not None else ""
    th_applied = r.get("threshold") or {}
    noise = th_applied.get("noise_bounds") or {}
    sources = "".join(f"<br><span class='tag'>{esc(k)}: {esc(src)} (noise bound {fmt(noise.get(k))}, clinical tolerance "
                      f"{fmt((th_applied.get('tolerance') or {}).get(k))}: the looser applies)</span>"
                      for k, src in (th_applied.get("bound_sources") or {}).items())
    return f"{esc(text)}<br><span class='tag'>{esc(what)}</span>{checked}{sources}"


def notice_page(title: str, text: str) -> str:
    """A one-message page standing in for report.html: a run in progress, or a page that could not be drawn."""
    return (f"<!doctype html><meta charset='utf-8'><title>mriq-validate report</title><h1>{html.escape(title)}</h1>"
            f"<pre>{html.escape(text)}</pre><p>See report.json.</p>")


def _integrity_text(integrity: dict[str, Any] | None) -> str:
    """The footer's line on how report.json is sealed (mriq_validate.integrity)."""
    if not integrity:
        return ""
    signed = (f"signed with HMAC-SHA256 under key id <code>{esc(integrity.get('key_id'))}</code>" if integrity.get("signed")
              else "not signed (no report key was configured)")
    return (f"report.json's SHA-256 (canonical JSON) is <code>{esc(str(integrity.get('digest'))[:16])}…</code>; it is {signed}; "
            "every reader re-derives its verdicts.")


def _decision(rep: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str:
    d = rep["decision"]
    status = d["status"]
    out = [f"<div class='banner {status.replace(' ', '-')}'><div class='status'>{esc(status)}</div>"
           f"<div class='summary'>{esc(d.get('summary', ''))}</div></div>"]
    counts = d.get("counts") or {}
    out.append("<div class='counts'>" + "".join(f"<span>{esc(k)}: <b>{v}</b></span>" for k, v in counts.items()) + "</div>")
    if d.get("failed_gating"):
        out.append("<h3>Failing gating criteria</h3><ul class='tight'>")
        for item_id in d["failed_gating"]:
            r = by_id.get(item_id, {})
            msg = (r.get("message") or "").splitlines()[0] if r.get("message") else ""
            msg = msg.removeprefix(f"{r.get('criterion_id')} ")
            out.append(f"<li><b>{esc(item_id.split('::')[-1])}</b>: {esc(msg)}<div class='hazard'>hazard: {esc(r.get('hazard'))}</div></li>")
        out.append("</ul>")
    if d.get("errors"):
        out.append("<h3>Criteria that could not be evaluated (ERROR)</h3><ul class='tight'>")
        for item_id in d["errors"]:
            msg = (by_id.get(item_id, {}).get("message") or "").strip().splitlines()
            out.append(f"<li><b>{esc(item_id.split('::')[-1])}</b>: {esc(msg[0] if msg else '')}</li>")
        out.append("</ul>")
    if d.get("not_run"):
        out.append("<p><b>Did not run:</b> " + ", ".join(f"<code>{esc(i)}</code>" for i in d["not_run"]) + "</p>")
    if d.get("interruption"):
        out.append(f"<p><b>Interrupted:</b> {esc(d['interruption'])}</p>")
    if d.get("advisory_failed"):
        out.append("<p><b>Advisory criteria that failed</b> (reported, do not gate): "
                   + ", ".join(f"<code>{esc(i.split('::')[-1])}</code>" for i in d["advisory_failed"]) + "</p>")
    return "".join(out)


def _suites(rep: dict[str, Any]) -> str:
    if not rep["suites"]:
        return "<p class='empty'>No suite file was collected.</p>"
    out = []
    for s in rep["suites"]:
        git = s.get("git") or {}
        commit = git.get("commit")
        out.append(f"<h3>{esc(s.get('name'))} <span class='tag'>version {esc(s.get('version'))} · {s.get('n_items')} item(s) from "
                   f"{s.get('n_criteria')} criteria</span></h3>")
        out.append(f"<div class='cou'><b>Context of use.</b> {esc(s.get('context_of_use'))}</div>")
        if s.get("description"):
            out.append(f"<p>{esc(s['description'])}</p>")
        out.append(f"<p class='tag'>file <code>{esc(s['path'])}</code> · sha256 <code>{esc(s.get('sha256'))}</code>"
                   + (f" · git {esc(commit[:12])}{' (file differs from this commit)' if git.get('dirty') else ''}" if commit else " · not in a git repository")
                   + "</p>")
    return "".join(out)


def _traceability(rep: dict[str, Any]) -> str:
    head = ("<tr><th>Criterion</th><th>Requirement / hazard</th><th>pytest node id</th><th>Measure and configuration</th>"
            "<th>Value [95% CI]</th><th>Baseline (real)</th><th>Compared [95% CI]</th><th>Threshold</th><th>Verdict</th></tr>")
    rows = []
    for r in rep["results"]:
        gate = r.get("gate", True)
        cls = f"{r['verdict']}{'' if gate else ' advisory'}"
        req = f"{esc((r.get('requirement') or '').strip())}"
        if r.get("hazard"):
            req += f"<div class='hazard'>hazard: {esc(r['hazard'].strip())}</div>"
        if r.get("rationale"):
            req += f"<details><summary>rationale</summary><pre>{esc(r['rationale'].strip())}</pre></details>"
        msg = r.get("message")
        verdict = _verdict(r["verdict"], gate) + "<br>" + _gate(gate)
        if msg and r["verdict"] in ("FAIL", "ERROR", "SKIP"):
            verdict += f"<details><summary>message</summary><pre>{esc(msg.strip())}</pre></details>"
        label = esc(r["criterion_id"]) + (f"<br><span class='tag'>{esc(', '.join(f'{k}={v}' for k, v in r['level'].items()))}</span>" if r.get("level") else "")
        rows.append(
            f"<tr class='{cls}'><td><b>{label}</b></td><td>{req}</td><td class='mono'>{esc(r['item_id'])}</td><td>{_measure(r)}</td>"
            f"<td class='num'>{_estimate(r.get('value'))}</td><td class='num'>{_estimate(r.get('baseline'))}</td>"
            f"<td class='num'>{_estimate(r.get('compared'))}</td><td>{_threshold(r)}</td><td>{verdict}</td></tr>"
        )
    not_run = rep["deviations"].get("not_run") or []
    for n in not_run:
        rows.append(f"<tr class='NOT-RUN'><td><b>{esc(n['criterion_id'])}</b></td><td colspan='7' class='mono'>{esc(n['item_id'])}</td>"
                    f"<td>{_verdict('NOT RUN')}<br>{_gate(n['gate'])}</td></tr>")
    if not rows:
        return "<p class='empty'>No criterion ran.</p>"
    cols = "".join(f"<col style='width:{w}%'>" for w in (9, 25, 11, 15, 9, 9, 9, 7, 6))
    return f"<table class='trace'><colgroup>{cols}</colgroup>{head}{''.join(rows)}</table>"


def _deviations(rep: dict[str, Any]) -> str:
    d = rep["deviations"]
    out = []
    if d.get("threshold_overrides"):
        out.append("<h3>Overridden thresholds</h3><table><tr><th>Criterion</th><th>Field</th><th>Plan (suite)</th><th>Used</th><th>Source</th></tr>")
        for o in d["threshold_overrides"]:
            out.append(f"<tr><td>{esc(o.get('criterion'))}</td><td>{esc(o.get('field'))}</td><td class='num'>{fmt(o.get('suite_value'))}</td>"
                       f"<td class='num'>{fmt(o.get('value'))}</td><td>{esc(o.get('source'))}</td></tr>")
        out.append("</table>")
    for key, title in (("skipped", "Skipped criteria"), ("not_run", "Selected criteria that did not run"),
                       ("deselected", "Criteria of the suites not selected to run (-k / -m / --deselect / node ids)")):
        if d.get(key):
            out.append(f"<h3>{title}</h3><ul class='tight'>")
            for s in d[key]:
                reason = f": {esc(s['reason'])}" if s.get("reason") else ""
                out.append(f"<li><code>{esc(s['item_id'])}</code> {_gate(s['gate'])}{reason}</li>")
            out.append("</ul>")
    if d.get("collection_errors"):
        out.append("<h3>Collection errors</h3><ul class='tight'>")
        for e in d["collection_errors"]:
            out.append(f"<li><code>{esc(e['node_id'])}</code><pre>{esc(e.get('message', '').strip()[:4000])}</pre></li>")
        out.append("</ul>")
    if d.get("cache_rebuilt"):
        out.append("<h3>Cache entries rebuilt (failed verification)</h3><ul class='tight'>")
        for e in d["cache_rebuilt"]:
            out.append(f"<li><code>{esc(e['path'])}</code>: {esc(e['reason'])}</li>")
        out.append("</ul>")
    return "".join(out) or "<p class='empty'>None: every criterion of the suites ran with the thresholds of its suite.</p>"


def _limitations(rep: dict[str, Any]) -> str:
    lim = rep["limitations"]
    out = []
    if lim.get("measures"):
        out.append("<h3>Measures used</h3><ul class='tight'>")
        for name, notes in lim["measures"].items():
            out.append(f"<li><b>{esc(name)}</b><ul class='tight'>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></li>")
        out.append("</ul>")
    if lim.get("sensitivity"):
        out.append("<h3>What the sensitivity criteria showed in this run</h3><ul class='tight'>")
        for s in lim["sensitivity"]:
            mark = {True: "✔", False: "✘"}.get(s.get("detected"), "?")
            out.append(f"<li>{mark} {esc(s['statement'])} <span class='tag'>({esc(s['item_id'].split('::')[-1])})</span></li>")
        out.append("</ul>")
    if lim.get("advisory_criteria"):
        out.append("<p><b>Advisory only</b> (reported, never gate the release): "
                   + ", ".join(f"<code>{esc(c)}</code>" for c in lim["advisory_criteria"]) + "</p>")
    return "".join(out) or "<p class='empty'>No measure was used.</p>"


def _self_check(rep: dict[str, Any]) -> str:
    sc = rep["self_check"]
    out = [f"<p>Self-check status in this run: <b>{esc(sc['status'])}</b>. {esc(sc.get('note'))}</p>"]
    if sc.get("criteria"):
        out.append("<table><tr><th>Item</th><th>Kind</th><th>Verdict</th></tr>")
        for c in sc["criteria"]:
            out.append(f"<tr><td class='mono'>{esc(c['item_id'])}</td><td>{esc(c.get('kind'))}</td>"
                       f"<td>{_verdict(c['verdict'], c['gate'])} {_gate(c['gate'])}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p class='empty'>No SELF- or sensitivity criterion ran in this run.</p>")
    out.append(f"<h3>Known-answer tests</h3><p>With the installed package: <span class='mono'>{esc(sc.get('selftest') or '')}</span>. "
               "In a source checkout of the tool (<span class='mono'>make test</span>):</p>"
               "<table><tr><th>Where</th><th>Checks</th></tr>")
    for t in sc.get("known_answer_tests") or []:
        out.append(f"<tr><td class='mono' style='white-space:nowrap'>{esc(t['where'])}</td><td>{esc(t['checks'])}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _provenance(rep: dict[str, Any]) -> str:
    p, run = rep["provenance"], rep["run"]
    out = []
    rows = [("decision", rep["decision"]["status"]), ("seed", p.get("seed")), ("device(s)", ", ".join(p.get("devices") or [])),
            ("started (UTC)", run.get("started")), ("finished (UTC)", run.get("finished")),
            ("duration", f"{run['duration_s']:.0f} s" if run.get("duration_s") is not None else None),
            ("exit status", run.get("exit_status")), ("pytest-xdist workers", run.get("xdist_workers") or "none"),
            ("command line", " ".join(run.get("command_line") or [])), ("invocation folder", run.get("invocation_dir"))]
    rows += [(f"setting: {k}", v) for k, v in (run.get("settings") or {}).items()]
    out.append("<h3>Run</h3>" + _kv(rows))
    out.append("<h3>Suite files</h3><table><tr><th>Suite</th><th>File</th><th>sha256</th><th>git commit</th></tr>")
    for s in rep["suites"]:
        git = s.get("git") or {}
        commit = (git.get("commit") or "—") + (" (file modified or untracked)" if git.get("dirty") else "")
        out.append(f"<tr><td>{esc(s.get('name'))}</td><td class='mono'>{esc(s['path'])}</td><td class='mono'>{esc(s.get('sha256'))}</td>"
                   f"<td class='mono'>{esc(commit)}</td></tr>")
    out.append("</table>")
    for c in p.get("contexts") or []:
        out.append(f"<h3>Data <code>{esc(c.get('data_spec'))}</code></h3>")
        data = c.get("data")
        if data:
            digests = ", ".join(f"{k}: {v}" for k, v in (data.get("digests") or {}).items())
            kind = data.get("item_kind") or "images"
            dims = f"{data['spatial_dims']}D {kind}" if data.get("spatial_dims") else None
            out.append(_kv([("name", data.get("name")), ("content digests", digests), (f"train / test {kind}", f"{data.get('n_train')} / {data.get('n_test')}"),
                            ("items", dims), ("image shape", data.get("image_shape")), ("spacing (mm)", data.get("spacing_mm")),
                            ("labels", data.get("labels"))])
                       + _json_details(data.get("provenance"), "data provenance and preprocessing"))
        else:
            out.append("<p class='empty'>Not loaded in this run.</p>")
        model = c.get("model")
        out.append("<h3>Model under test</h3>" + (_kv([(k, v if not isinstance(v, (dict, list)) else json.dumps(v, default=str))
                                                      for k, v in model.items()]) if model else "<p class='empty'>Not loaded in this run.</p>"))
        segs = c.get("segmenters") or {}
        if segs:
            out.append("<h3>Baseline segmenters (trained on the real training split)</h3><table><tr><th>Cache key</th><th>Configuration</th><th>History</th></tr>")
            for cfg, s in segs.items():
                out.append(f"<tr><td class='mono'>{esc(s.get('key'))}</td><td class='mono'>{esc(cfg)}</td>"
                           f"<td class='mono'>{esc(json.dumps(s.get('history'), default=str))}</td></tr>")
            out.append("</table>")
    env = [("python", p.get("python")), ("platform", p.get("platform"))]
    env += [(f"hardware: {k}", v) for k, v in (p.get("hardware") or {}).items()]
    env += [(name, version or "not installed") for name, version in (p.get("packages") or {}).items()]
    out.append("<h3>Environment</h3>" + _kv(env))
    return "".join(out)


def _subgroups(rep: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The section of the criteria decided per subgroup (``by:``): each subgroup's decision and the spread; none without."""
    out = ""
    for r, sub in ((r, r["per_subgroup"]) for r in rep["results"] if r.get("per_subgroup")):
        rows = "".join(f"<tr><td>{esc(g['subgroup'])} {esc(g.get('contrast'))}</td><td>{g['n']}</td>" + "".join(f"<td>{_estimate(g[k])}</td>" for k in
                       ("value", "baseline", "compared")) + f"<td>{_threshold({**g, 'threshold': r.get('threshold')})}</td><td>"
                       f"{_verdict(g['verdict'], r['gate'])}</td></tr>" for g in sub["subgroups"])
        out += (f"<h3>{esc(r['criterion_id'])} by {esc(sub['by'])}</h3><p class='caption'>{esc(sub['source'])}; every subgroup must pass. "
                "Spread of the compared quantity: " + "; ".join(f"{esc(h['contrast'] or '')} max − min {fmt(h['max_minus_min'])}, Cochran's Q "
                f"{fmt(h['q'])} (df {h['df']}, p {fmt(h['p_value'])}), I² {fmt(h['i_squared'])}" for h in sub["heterogeneity"]) + "</p><table><tr>"
                "<th>subgroup</th><th>n</th><th>generated</th><th>real</th><th>compared</th><th>bounds</th><th>verdict</th></tr>" + rows + "</table>")
    return [("subgroups", "Consistency across subgroups", out)] if out else []


def render_html(rep: dict[str, Any], *, sample_images: dict[str, Any] | None = None,
                gallery_images: dict[str, dict[str, Any]] | None = None) -> str:
    """The whole page for report document ``rep`` (and the optional sample slices and worst-case images)."""
    by_id = {r["item_id"]: r for r in rep["results"]}
    title = ", ".join(s.get("name") or "?" for s in rep["suites"]) or "no suite"
    model = (rep["run"].get("settings") or {}).get("model") or "(no model)"
    sections: list[tuple[str, str, str]] = []
    sections.append(("decision", "Release decision", _decision(rep, by_id)))
    sections.append(("context", "Context of use", _suites(rep)))
    glance = _img(figures.criteria_figure(rep["results"]), "criteria against thresholds")
    if glance:
        glance += ("<p class='caption'>Each row: the quantity the threshold applies to (the value, or generated minus / over "
                   "real) with its 95% bootstrap confidence interval; red dashed lines are the bounds, the green band the "
                   "acceptable region; a black tick marks the CI bound that was checked when the threshold is on a bound. "
                   "Colour: green PASS, red FAIL (gating), amber FAIL (advisory), purple ERROR, grey SKIP.</p>")
    sections.append(("glance", "Results against thresholds", glance or "<p class='empty'>No criterion was evaluated.</p>"))
    sections.append(("trace", "Traceability: requirement → hazard → test → result", _traceability(rep)))
    dose = figures.dose_response_figure(rep["results"])
    if dose is not None:
        sections.append(("dose", "Dose-response (sweeps)", _img(dose, "dose-response curves")
                         + "<p class='caption'>Each panel: one criterion evaluated at increasing perturbation strength; the "
                           "line and band are the compared quantity and its 95% CI; points are coloured by verdict.</p>"))
    grid = figures.sample_grid_figure(sample_images, label_names=evidence_html.label_names(rep)) if sample_images else None
    if grid is not None:
        volumes = sample_images is not None and (sample_images.get("slice_index") is not None
                                                 or any(getattr(sample_images.get(k), "ndim", 0) == 5 for k in ("real", "generated")))
        first = ("First volumes of the real test split and the model's volumes for the same masks, each shown by its axial "
                 "slice through the lesion centroid (the mid slice when there is no lesion; the index above each column)"
                 if volumes else "First slices of the real test split and the model's images for the same masks")
        sections.append(("samples", "Samples: real vs generated", _img(grid, f"real and generated {'volumes' if volumes else 'slices'}")
                         + f"<p class='caption'>{first}, a pair of rows (real, generated) per contrast; outlines show the mask "
                           "labels.</p>"))
    sections += _subgroups(rep)  # criteria decided in every subgroup (`by:`)
    sections += evidence_html.sections(rep, gallery_images)  # per-case spread, worst cases, ScoreCard
    sections.append(("deviations", "Deviations from the plan", _deviations(rep)))
    sections.append(("limitations", "Known limitations", _limitations(rep)))
    sections.append(("selfcheck", "Tool self-check", _self_check(rep)))
    sections.append(("provenance", "Provenance and reproducibility", _provenance(rep)))
    nav = "<nav>" + "".join(f"<a href='#{sid}'>{esc(t)}</a>" for sid, t, _ in sections) + "</nav>"
    body = "".join(f"<section id='{sid}'><h2>{esc(t)}</h2>{content}</section>" for sid, t, content in sections)
    run = rep["run"]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>mriq-validate: {esc(rep['decision']['status'])} · {esc(title)} · {esc(model)}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        f"<h1>mriq-validate evidence report</h1>"
        f"<p class='sub'>Suite(s) <b>{esc(title)}</b> · model <code>{esc(model)}</code> · seed {esc((run.get('settings') or {}).get('seed'))}"
        f" · {esc(run.get('finished') or run.get('started') or '')}</p>"
        f"{nav}{body}"
        f"<footer>mriq-validate {esc(rep['tool'].get('version'))} · report schema {esc(rep['schema_version'])} · the same content, "
        f"machine-readable, is in report.json beside this file. {_integrity_text(rep.get('integrity'))}</footer>"
        "</main></body></html>\n"
    )
