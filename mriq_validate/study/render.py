"""The study's outputs: CSV tables, ``study.json``, ``study.html`` and the generated part of ``docs/study.md``.

The narrative is written once (:func:`narrative`): for each question, the finding and the paper's claim are phrased
together from the same numbers; the HTML shows the findings, the Markdown both.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .grid import TRUE_QUALITY
from .result import StudyResult, json_safe

SENS_COLUMNS = ["measure", "family", "condition", "condition_kind", "perturbation", "scope", "level", "value", "baseline",
                "change", "worse", "se", "z", "detected"]
CORR_COLUMNS = ["measure", "family", "n", "spearman", "spearman_ci_low", "spearman_ci_high", "pearson", "pearson_ci_low",
                "pearson_ci_high", "label"]
MEMO_COLUMNS = ["measure", "family", "duplication", "p", "value", "worse_at_max_p", "z_at_max_p", "spearman_worse_vs_p", "verdict"]
RANK_COLUMNS = ["measure", "family", "spearman_vs_true_quality", "order_best_first"]


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "inf" if isinstance(x, float) and x == math.inf else ("-inf" if isinstance(x, float) and x == -math.inf else "n/a")
    return f"{x:.{nd}g}" if isinstance(x, float) else str(x)


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "inf" if v == math.inf else ("-inf" if v == -math.inf else ("" if math.isnan(v) else repr(round(v, 10))))
    return "" if v is None else v


def _text(v: Any) -> str:
    return _fmt(v) if isinstance(v, float) else str(_cell(v))


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])


def write_outputs(res: StudyResult, out: Path) -> dict[str, Path]:
    """Write sensitivity.csv, correlation.csv, memorisation.csv, ranking.csv, study.json, study.html, study.md and
    the figures (PNG) to ``out``."""
    from ..figures import data_uri, png_bytes
    from .figures import correlation_figure, dose_response_grid, heatmap_figure

    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f for k, f in (("sensitivity", "sensitivity.csv"), ("correlation", "correlation.csv"),
                                     ("memorisation", "memorisation.csv"), ("ranking", "ranking.csv"), ("json", "study.json"),
                                     ("html", "study.html"), ("md", "study.md"))}
    for key, columns, rows in (("sensitivity", SENS_COLUMNS, res.rows), ("correlation", CORR_COLUMNS, res.correlation),
                               ("memorisation", MEMO_COLUMNS, res.memorisation), ("ranking", RANK_COLUMNS, res.ranking)):
        _write_csv(paths[key], columns, rows)
    paths["json"].write_text(json.dumps(res.as_dict(), indent=1, sort_keys=False, default=str), encoding="utf-8")
    figs = {"heatmap": heatmap_figure(res), "dose_response": dose_response_grid(res), "correlation": correlation_figure(res)}
    pngs = {k: png_bytes(f) for k, f in figs.items() if f is not None}
    (out / "figures").mkdir(exist_ok=True)
    for k, b in pngs.items():
        (out / "figures" / f"study_{k}.png").write_bytes(b)
        paths[f"fig_{k}"] = out / "figures" / f"study_{k}.png"
    paths["html"].write_text(render_html(res, {k: data_uri(b) for k, b in pngs.items()}), encoding="utf-8")
    paths["md"].write_text(render_markdown(res, "figures"), encoding="utf-8")
    return paths


# ---------------------------------------------------------------- the narrative: one finding and its claims per question

Lines = tuple[list[str], list[str]]  # (findings, claims against the paper)


def _global_noise(res: StudyResult) -> Lines:
    g = res.findings.get("global_noise") or {}
    if not g:
        return [], []
    moved = sorted(k for k, v in g["per_measure"].items() if k != "dice" and v["detected_at_strongest"] > 0)
    ok = g["nr_detection_rate_strongest"] >= 0.5
    return ([f"1. Global noise ({', '.join(g['perturbations'])}): no-reference/distribution/diversity measures moved beyond 3 SE "
             f"in {g['nr_detection_rate']:.0%} of (measure, level) cells, {g['nr_detection_rate_strongest']:.0%} at the strongest level "
             f"(moved there: {', '.join(moved) or 'none'}); Dice moved in {g['dice_detection_rate']:.0%} of levels."],
            [f"- Claim: NR and distribution measures are sensitive to global noise. **{'Agrees' if ok else 'Disagrees'}**: "
             f"{g['nr_detection_rate_strongest']:.0%} of them moved beyond 3 SE at the strongest noise level "
             f"({g['nr_detection_rate']:.0%} over all levels, where the mildest levels move few of them)."])


def _localised_edits(res: StudyResult) -> Lines:
    loc = res.findings.get("localised_edits") or {}
    if not loc:
        return [], []
    pm = loc["per_measure"]
    moved = sorted(k for k, v in pm.items() if k != "dice" and v["detected"] > 0)
    ok = loc["nr_detection_rate"] <= 0.2 and loc["dice_detection_rate"] > loc["nr_detection_rate"]
    return ([f"2. Localised edits ({', '.join(loc['perturbations'])}): no-reference/distribution/diversity measures moved in "
             f"{loc['nr_detection_rate']:.0%} of cells ({loc['nr_detection_rate_strongest']:.0%} at the strongest level; "
             f"any move: {', '.join(moved) or 'none'}); Dice moved in {loc['dice_detection_rate']:.0%} of levels "
             f"(max z {_fmt(pm.get('dice', {}).get('max_z'))})."],
            [f"- Claim: profound insensitivity to localised edits (boundary blur, internal gradient), which Dice detects. "
             f"**{'Agrees' if ok else 'Partly disagrees'}**: NR/distribution/diversity measures moved in "
             f"{loc['nr_detection_rate']:.0%} of cells (Dice: {loc['dice_detection_rate']:.0%} of levels)"
             + (f"; measures that did move at some level: {', '.join(moved)}." if moved else "; none of them moved at any level.")])


def _duplication(res: StudyResult) -> Lines:
    dup = res.findings.get("duplication") or {}
    if not dup:
        return [], []
    worse = sorted(k for k, v in dup.items() if v["verdict"].startswith("worsens"))
    better = sorted(k for k, v in dup.items() if v["verdict"].startswith("improves"))
    return (["3. External duplication from the training set (p up to the largest level): " + "; ".join(
             f"{k}: {v['verdict']} (z at max p {_fmt(v['z_at_max_p'])}; values {v['values']} at p {v['p']})" for k, v in dup.items()) + "."],
            [f"- Claim: memorisation (copies of training images) leaves FID/KID as good or better. **{'Agrees' if not worse else 'Disagrees'}**: "
             f"under external duplication up to the largest p, improved beyond 3 SE: {', '.join(better) or 'none'}; "
             f"worsened beyond 3 SE: {', '.join(worse) or 'none'}; the rest stayed within noise (values per p in the table below). "
             f"A flat or falling FID is what makes memorisation invisible to it."])


def _ranking(res: StudyResult) -> Lines:
    rk = res.findings.get("ranking")
    if not rk:
        return [], []
    better = ", ".join(rk["nr_better_than_dice"]) or "none"
    nr_corr = [r for r in res.correlation if r["family"] in ("no-reference IQA", "distribution", "diversity")]
    aligned = sorted(r["measure"] for r in nr_corr if r["label"] == "aligned with Dice")
    ok, ok2 = (rk["dice"] or -2) > rk["nr_median"], len(aligned) <= len(nr_corr) / 2
    return ([f"4. Stand-in ranking vs true quality (Spearman, positive = agrees): Dice {_fmt(rk['dice'])}; median of the "
             f"no-reference/distribution/diversity measures {_fmt(rk['nr_median'])}; measures ranking better than Dice: {better}."],
            [f"- Claim: Dice ranks generators closer to their true utility than NR measures. **{'Agrees' if ok else 'Disagrees'}**: "
             f"Spearman with true quality over the stand-ins: Dice {_fmt(rk['dice'])}, NR/distribution/diversity median "
             f"{_fmt(rk['nr_median'])} (better than Dice: {better}).",
             f"- Claim: NR measures correlate poorly with downstream Dice. **{'Agrees' if ok2 else 'Disagrees'}**: "
             f"{len(aligned)} of {len(nr_corr)} NR/distribution/diversity measures have a Spearman CI entirely below 0 across "
             f"all {len(res.conditions)} conditions ({', '.join(aligned) or 'none'})."
             + ("" if ok2 else " Global perturbations lower Dice and move these measures together, so they dominate a "
                "correlation across the whole grid; the localised-edit and duplication findings above show where the "
                "measures and Dice part ways.")])


QUESTIONS: tuple[Callable[[StudyResult], Lines], ...] = (_global_noise, _localised_edits, _duplication, _ranking)


def narrative(res: StudyResult) -> Lines:
    """(findings, claims): what this run found on each question, and each qualitative claim of Deo et al. 2025 against it
    (agrees / disagrees, with the numbers).

    The claims are those of the paper's abstract (arXiv 2505.07175): poor correlation with downstream task suitability,
    insensitivity to localised anatomical details, misleading scores under memorisation; and, from the abstract in the
    authors' repository README (github.com/YashDeo-York/GenMed), sensitivity to global distributional characteristics
    and downstream evaluation being "more discriminative and better aligned with practical model utility"."""
    findings: list[str] = []
    claims: list[str] = []
    for question in QUESTIONS:
        f, c = question(res)
        findings += f
        claims += c
    return findings, claims


# ---------------------------------------------------------------- HTML and markdown


def _table_html(columns: list[str], rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_text(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(res: StudyResult, images: dict[str, str]) -> str:
    """A self-contained page: findings, figures (``data:`` URIs in ``images``) and the tables."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>mriq-validate study: {html.escape(res.config['data'])}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;font-size:13px}table{border-collapse:collapse;font-size:11px}"
             "td,th{border:1px solid #ccc;padding:2px 5px;text-align:right}img{max-width:100%}</style></head><body>",
             f"<h1>Metric study on {html.escape(res.config['data'])}</h1>",
             f"<p>seed {res.config['seed']}; main region <b>{html.escape(res.region)}</b>; {len(res.measures)} measures × "
             f"{len(res.conditions)} conditions; runtime {res.provenance['runtime_s']} s{' (quick)' if res.config['quick'] else ''}.</p>",
             "<h2>Findings</h2>", "<pre>" + html.escape("\n".join(narrative(res)[0])) + "</pre>"]
    for key, title in (("heatmap", "Sensitivity heatmap"), ("dose_response", "Dose-response per perturbation family"),
                       ("correlation", "Correlation with Dice")):
        if key in images:
            parts.append(f"<h2>{title}</h2><img alt='{key}' src='{images[key]}'>")
    parts += ["<h2>Correlation with Dice</h2>", _table_html(CORR_COLUMNS, res.correlation),
              "<h2>Stand-in ranking vs true quality</h2>", _table_html(["measure", "spearman_vs_true_quality", "order_best_first"], res.ranking),
              "<h2>Memorisation</h2>", _table_html(MEMO_COLUMNS, res.memorisation),
              "<h2>Sensitivity</h2>", _table_html(SENS_COLUMNS, res.rows),
              "<h2>Skipped</h2>", _table_html(["what", "why"], res.skipped),
              "<h2>Provenance</h2><pre>" + html.escape(json.dumps(json_safe(res.provenance), indent=1, default=str)) + "</pre></body></html>"]
    return "".join(parts)


def _md_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] +
                     ["| " + " | ".join(_text(r.get(k)) for k in columns) + " |" for r in rows])


def render_markdown(res: StudyResult, fig_dir: str = "figures") -> str:
    """The generated part of docs/study.md: findings, the paper's claims, the correlation and ranking tables, the figures."""
    corr = [{**r, "spearman [95% CI]": f"{_fmt(r['spearman'], 2)} [{_fmt(r['spearman_ci_low'], 2)}, {_fmt(r['spearman_ci_high'], 2)}]",
             "pearson [95% CI]": f"{_fmt(r['pearson'], 2)} [{_fmt(r['pearson_ci_low'], 2)}, {_fmt(r['pearson_ci_high'], 2)}]"}
            for r in sorted(res.correlation, key=lambda r: r["spearman"] if math.isfinite(r["spearman"]) else 2)]
    tq = [{"stand-in": k, "true quality (0 best)": v[0], "why": v[1]} for k, v in TRUE_QUALITY.items()]
    findings, claims = narrative(res)
    return "\n\n".join([
        f"Generated by `mriq-validate study --data {res.config['data']} --seed {res.config['seed']}"
        f"{' --quick' if res.config['quick'] else ''}` in {res.provenance['runtime_s']} s "
        f"({len(res.measures)} measures × {len(res.conditions)} conditions, main region `{res.region}`).",
        "### Findings (numbers from this run)\n\n" + "\n".join(findings),
        "### Against the paper's claims (Deo et al. 2025, arXiv 2505.07175, abstract)\n\n" + "\n".join(claims),
        "### Correlation with Dice across conditions\n\nMeasure signed so that higher = worse; a measure aligned with "
        "downstream utility has a clearly negative correlation (CI entirely below 0).\n\n" +
        _md_table(["measure", "family", "n", "spearman [95% CI]", "pearson [95% CI]", "label"], corr),
        "### Stand-in ranking\n\nTrue quality (defined in `mriq_validate/study/grid.py`, `TRUE_QUALITY`):\n\n" +
        _md_table(["stand-in", "true quality (0 best)", "why"], tq) + "\n\nSpearman between each measure (higher = worse) "
        "and true quality across the stand-ins (positive = ranks them correctly):\n\n" +
        _md_table(RANK_COLUMNS, res.ranking),
        "### Memorisation (duplication from the training set / within the set)\n\n" +
        _md_table(["measure", "duplication", "p", "value", "z_at_max_p", "verdict"], res.memorisation),
        f"![z-score heatmap]({fig_dir}/study_heatmap.png)\n\n![dose-response]({fig_dir}/study_dose_response.png)\n\n"
        f"![correlation]({fig_dir}/study_correlation.png)",
        "Skipped: " + ("; ".join(f"{s['what']} ({s['why']})" for s in res.skipped) or "nothing") + ".",
    ]) + "\n"
