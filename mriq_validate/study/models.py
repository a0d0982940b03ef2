"""The study's second axis (Deo et al. 2025, arXiv 2505.07175): real generators of several architectures, gated with
the same suite, and how well each measure orders them as downstream utility does.

Input: the gate reports of the models (``report.json`` folders, e.g. what ``mriq-validate track`` writes per checkpoint,
grouped in one folder per family). For every criterion item on the model (``kind: model``) that was decided on every
model, and for each utility criterion (train-on-synthetic Dice, protocol-A Dice), the rank correlation across models
(Spearman ρ and Kendall τ) of the measure's *goodness* with the utility:

* goodness is the compared quantity (generated − real, generated / real, or the value) signed so that higher is
  better: as is for a measure where higher is better, negated where lower is better, and minus the distance to the
  ideal (0 for a difference, 1 for a ratio, on the log scale) for a criterion bounded on both sides; a measure decided
  per contrast takes the mean of its contrasts' goodness. So a measure that orders real generators as utility does
  has a positive correlation, whatever its direction.
* the 95 % CI comes from a two-level bootstrap: models are resampled with replacement (the variation over
  architectures and checkpoints), and each drawn model's measure and utility are redrawn from normal distributions
  with their reported bootstrap SEs over images (the variation over images). Every draw is seeded from the run's
  seed and the measure's id.
* a measure *orders models as utility does* when the CI of ρ lies above 0, *reversed* when it lies below 0, and *no
  evidence* otherwise.

Outputs (:func:`write_outputs`): ``models.json`` (every model's decision and measures, every correlation),
``models.md`` (tables) and ``models.png`` (each measure against train-on-synthetic Dice, one point per model, coloured
by family).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MriqError
from ..integrity import REPORT_FILE, UnusableReport, read_finished_report
from ..seeding import rng_for

UTILITIES = {"tstr": "DICE-TSTR-WT", "protocol_a": "DICE-WT"}  # utility name → the shipped suite's criterion id
MODEL_BOOT = 2000
MIN_MODELS = 4  # fewer models give a rank correlation of a handful of possible values: refused
FAMILY_COLOURS = ("#0969da", "#cf222e", "#1a7f37", "#bf8700", "#8250df", "#6e7781", "#e16f24", "#1b7c83")


_STEP = re.compile(r"(?:step|iter|it|epoch|ep)[-_]?(\d+)", re.IGNORECASE)


def checkpoint_step(name: str) -> int | None:
    """The training step in a checkpoint's name: ``generator-step00400`` → 400, ``ckpt_epoch3`` → 3; else the last
    number in the name; None when there is none."""
    m = _STEP.search(name) or re.search(r"(\d+)(?!.*\d)", name)
    return int(m.group(1)) if m else None


class ModelStudyError(MriqError):
    """The reports cannot be compared across models (too few, unreadable, different suites or data)."""


@dataclass(frozen=True)
class ModelRun:
    """One gated model: its label (``family/name``), family, training step (None when unknown) and report."""

    label: str
    family: str
    step: int | None
    report: dict[str, Any] = field(repr=False)

    @property
    def status(self) -> str:
        return str(self.report["decision"]["status"])


def _report_folders(folder: Path) -> list[tuple[str, Path]]:
    """(family, report folder) pairs below ``folder``: itself when it holds a report (family: its parent's name), else
    each subfolder that does (family: ``folder``'s name)."""
    if (folder / REPORT_FILE).is_file():
        return [(folder.parent.name, folder)]
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and (p / REPORT_FILE).is_file()) if folder.is_dir() else []
    if not subs:
        raise ModelStudyError(f"{folder}: no {REPORT_FILE} in it or in its subfolders; expected a gate report folder "
                              f"(pytest --mriq-report) or a folder of them (mriq-validate track --out)")
    return [(folder.name, p) for p in subs]


def read_model_runs(folders: Sequence[Path]) -> list[ModelRun]:
    """The finished reports in ``folders`` (see :func:`_report_folders`), schema-checked; ModelStudyError naming the
    report that is missing, unfinished or from another suite or data than the first."""
    runs: list[ModelRun] = []
    for folder in folders:
        for fam, path in _report_folders(Path(folder)):
            try:
                report = read_finished_report(path)
            except UnusableReport as exc:
                raise ModelStudyError(f"{exc.path} {exc.reason}") from None
            runs.append(ModelRun(f"{fam}/{path.name}", fam, checkpoint_step(path.name), report))
    if not runs:
        raise ModelStudyError("no reports given")
    first = runs[0]
    for r in runs[1:]:
        for what, get in (("suites", lambda rep: sorted(s.get("sha256", "") for s in rep["suites"])),
                          ("data", lambda rep: sorted(json.dumps(c.get("data", {}).get("digests"), sort_keys=True)
                                                      for c in rep["provenance"].get("contexts", []))),
                          ("seed", lambda rep: rep["provenance"].get("seed"))):
            if get(r.report) != get(first.report):
                raise ModelStudyError(f"{r.label}: its report has other {what} than {first.label}'s ({get(r.report)} vs "
                                      f"{get(first.report)}); models are compared on one suite and one data set")
    labels = [r.label for r in runs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ModelStudyError(f"the same model label appears twice: {dup}; give each model its own report folder")
    return runs


def _decided(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Criterion items on the model that were decided (PASS/FAIL), by criterion id (sweep items: id + level)."""
    out = {}
    for r in report["results"]:
        if r.get("kind") != "model" or r["verdict"] not in ("PASS", "FAIL"):
            continue
        key = r["criterion_id"] + (" " + json.dumps(r["level"], sort_keys=True) if r.get("level") else "")
        out[key] = r
    return out


def goodness(result: dict[str, Any]) -> tuple[float, float]:
    """(goodness, its SE) of one decided criterion item: the compared quantity signed so that higher is better (see
    the module doc); per-contrast items take the mean over contrasts."""
    relative = (result.get("threshold") or {}).get("relative", "none")
    bounds = result.get("bounds") or {}
    two_sided = bounds.get("min") is not None and bounds.get("max") is not None

    def one(est: dict[str, Any]) -> tuple[float, float]:
        v, se = float(est["value"]), float(est.get("se") or 0.0)
        if two_sided and relative == "ratio":
            return -abs(math.log(v)) if v > 0 else -math.inf, se / v if v > 0 else math.inf
        if two_sided:
            return -abs(v), se
        return (v if result["higher_is_better"] else -v), se

    parts = [one(p["compared"]) for p in (result.get("per_contrast") or {}).values() if p.get("compared")]
    if not parts:
        return one(result["compared"])
    g = float(np.mean([p[0] for p in parts]))
    return g, float(math.sqrt(sum(p[1] ** 2 for p in parts)) / len(parts))


def _kendall(x: np.ndarray, y: np.ndarray) -> float:
    from scipy import stats

    if len(x) < 3 or (x == x[0]).all() or (y == y[0]).all():
        return float("nan")
    return float(stats.kendalltau(x, y)[0])


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from ..stats import correlation

    return correlation("spearman", x, y)


def rank_agreement(x: np.ndarray, x_se: np.ndarray, y: np.ndarray, y_se: np.ndarray, rng: np.random.Generator,
                   n_boot: int = MODEL_BOOT) -> dict[str, float]:
    """Spearman ρ and Kendall τ of ``x`` with ``y`` across models, with 95 % CIs from the two-level bootstrap (models
    resampled with replacement; each drawn model's values redrawn from N(value, SE²))."""
    n = len(x)
    out: dict[str, float] = {"n_models": n, "spearman": _spearman(x, y), "kendall": _kendall(x, y)}
    reps: dict[str, list[float]] = {"spearman": [], "kendall": []}
    for _ in range(n_boot):
        rows = rng.integers(0, n, n)
        xb = x[rows] + np.nan_to_num(x_se[rows]) * rng.standard_normal(n)
        yb = y[rows] + np.nan_to_num(y_se[rows]) * rng.standard_normal(n)
        for kind, fn in (("spearman", _spearman), ("kendall", _kendall)):
            v = fn(xb, yb)
            if math.isfinite(v):
                reps[kind].append(v)
    for kind, vals in reps.items():
        lo, hi = (np.percentile(vals, [2.5, 97.5]) if len(vals) >= n_boot // 2 else (math.nan, math.nan))
        out[f"{kind}_ci_low"], out[f"{kind}_ci_high"] = float(lo), float(hi)
    return out


def agreement_label(ci_low: float, ci_high: float) -> str:
    """``orders as utility`` (CI above 0), ``reversed`` (below 0) or ``no evidence``."""
    if math.isfinite(ci_low) and ci_low > 0:
        return "orders as utility"
    if math.isfinite(ci_high) and ci_high < 0:
        return "reversed"
    return "no evidence"


@dataclass
class ModelStudy:
    """The second axis: per model its decision and measures, per (measure, utility) the rank agreement."""

    models: list[dict[str, Any]]
    correlations: list[dict[str, Any]]
    measures: list[dict[str, Any]]
    seed: int
    n_boot: int
    utilities: dict[str, str] = field(default_factory=lambda: dict(UTILITIES))
    clearance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelStudy":
        """The study back from :meth:`as_dict`'s JSON (extra keys, e.g. the command that made it, are ignored)."""
        return cls(d["models"], d["correlations"], d["measures"], d["seed"], d["n_boot"], d["utilities"], d.get("clearance", {}))

    def as_dict(self) -> dict[str, Any]:
        from .result import json_safe

        return json_safe({"seed": self.seed, "n_boot": self.n_boot, "utilities": self.utilities, "measures": self.measures,
                          "models": self.models, "correlations": self.correlations, "clearance": self.clearance})


def study_models(runs: Sequence[ModelRun], seed: int = 0, n_boot: int = MODEL_BOOT,
                 utilities: dict[str, str] | None = None) -> ModelStudy:
    """Rank agreement of every measure decided on every model with each utility (name → criterion id; default
    :data:`UTILITIES`: train-on-synthetic and protocol-A whole-tumour Dice)."""
    utilities = dict(utilities or UTILITIES)
    if len(runs) < MIN_MODELS:
        raise ModelStudyError(f"{len(runs)} models given; a rank correlation across models needs at least {MIN_MODELS}")
    decided = [_decided(r.report) for r in runs]
    common = [k for k in decided[0] if all(k in d for d in decided[1:])]
    missing = [u for u in utilities.values() if u not in common]
    if missing:
        raise ModelStudyError(f"utility criteria {missing} were not decided on every model (each report needs them PASS or "
                              f"FAIL); gate every model with the full suites/brain_tumour.yaml")
    models = []
    for run, d in zip(runs, decided):
        dec = run.report["decision"]
        held = sorted({r["criterion_id"] for r in run.report["results"] if r["item_id"] in set(dec["failed_gating"])})
        models.append({"label": run.label, "family": run.family, "step": run.step, "status": run.status, "failed_gating": held,
                       "measures": {k: {"goodness": goodness(d[k])[0], "goodness_se": goodness(d[k])[1],
                                        "compared": d[k]["compared"]["value"], "verdict": d[k]["verdict"]} for k in common}})
    quantity = {"difference": "generated − real", "ratio": "generated / real"}
    measures = [{"id": k, "metric": decided[0][k]["metric"]["name"], "gate": bool(decided[0][k]["gate"]),
                 "quantity": quantity.get((decided[0][k].get("threshold") or {}).get("relative", "none"), "generated")} for k in common]
    corr = []
    for uname, uid in utilities.items():
        y = np.array([m["measures"][uid]["goodness"] for m in models])
        y_se = np.array([m["measures"][uid]["goodness_se"] for m in models])
        for meas in measures:
            if meas["id"] == uid:
                continue
            x = np.array([m["measures"][meas["id"]]["goodness"] for m in models])
            x_se = np.array([m["measures"][meas["id"]]["goodness_se"] for m in models])
            c = rank_agreement(x, x_se, y, y_se, rng_for(seed, "model-study", uname, meas["id"]), n_boot)
            corr.append({"utility": uname, "utility_criterion": uid, "measure": meas["id"], "metric": meas["metric"],
                         "gate": meas["gate"], **c, "label": agreement_label(c["spearman_ci_low"], c["spearman_ci_high"])})
    first = next(iter(utilities.values()))
    return ModelStudy(models, corr, measures, seed, n_boot, utilities, clearance([d[first] for d in decided], models))


def clearance(utility: list[dict[str, Any]], models: list[dict[str, Any]]) -> dict[str, Any]:
    """Which models the utility criterion (one decided item per model, in ``models``' order) should pass, and what it
    and the decision did. A model is *within tolerance* when its compared utility is at or above the clinical
    tolerance (the criterion's ``tolerance.min``, else its bound), *clearly worse* when its upper 95 % CI bound is
    below it, else *borderline*. Per rule (the gate's bound, and where recorded the noise bound alone): the false
    alarms (within tolerance, criterion failed) and misses (clearly worse, criterion passed)."""
    rows, rules = [], {"gate": {"false_alarms": [], "misses": []}}
    for r, m in zip(utility, models):
        th = r.get("threshold") or {}
        tol = (th.get("tolerance") or {}).get("min")
        tol = tol if tol is not None else (r.get("bounds") or {}).get("min")
        comp = r["compared"]
        cls = ("within tolerance" if comp["value"] >= tol else "clearly worse" if comp["ci_high"] < tol else "borderline")
        row = {"label": m["label"], "compared": comp["value"], "ci_low": comp["ci_low"], "ci_high": comp["ci_high"],
               "tolerance": tol, "class": cls, "verdict": r["verdict"], "status": m["status"], "failed_gating": m["failed_gating"]}
        noise = (th.get("noise_bounds") or {}).get("min")
        verdicts = {"gate": r["verdict"]}
        if noise is not None:
            row["noise_bound"] = noise
            row["verdict_noise_bound_only"] = verdicts["noise bound alone"] = "PASS" if comp["value"] >= noise else "FAIL"
        for rule, verdict in verdicts.items():
            tally = rules.setdefault(rule, {"false_alarms": [], "misses": []})
            if cls == "within tolerance" and verdict == "FAIL":
                tally["false_alarms"].append(m["label"])
            if cls == "clearly worse" and verdict == "PASS":
                tally["misses"].append(m["label"])
        rows.append(row)
    n = {c: sum(r["class"] == c for r in rows) for c in ("within tolerance", "borderline", "clearly worse")}
    return {"criterion": utility[0]["criterion_id"], "models": rows, "counts": n, "rules": rules}


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def _f(x: Any, nd: int = 2) -> str:
    return f"{float(x):+.{nd}f}" if _finite(x) else "n/a"


def markdown(study: ModelStudy, tables: tuple[str, ...] = ("agreement", "models")) -> str:
    """The tables asked for: ``agreement`` (the rank agreement of each measure with each utility) and ``models``
    (each model's decision and utilities)."""
    by = {(c["measure"], c["utility"]): c for c in study.correlations}
    names = list(study.utilities)
    first = names[0]
    head = "| measure | role | " + " | ".join(f"ρ with {study.utilities[u]} [95 % CI] | τ" for u in names) + f" | verdict ({study.utilities[first]}) |"
    lines = [head, "|---|---|" + "---|---|" * len(names) + "---|"]
    rho = {m: by[(m, first)]["spearman"] for m, u in by if u == first}
    order = sorted({c["measure"] for c in study.correlations}, key=lambda m: (-rho[m] if _finite(rho.get(m)) else 2.0, m))
    roles = {m["id"]: "gate" if m["gate"] else "advisory" for m in study.measures}
    for m in order:
        cells = []
        for u in names:
            c = by.get((m, u))
            cells.append(f"{_f(c['spearman'])} [{_f(c['spearman_ci_low'])}, {_f(c['spearman_ci_high'])}] | {_f(c['kendall'])}"
                         if c else "(utility) | ")
        verdict = by[(m, first)]["label"] if (m, first) in by else "(utility)"
        lines.append(f"| {m} | {roles[m]} | " + " | ".join(cells) + f" | {verdict} |")
    if "agreement" not in tables:
        lines = []
    if "clearance" in tables and study.clearance:
        lines += clearance_markdown(study.clearance)
    if "models" not in tables:
        return "\n".join(lines) + "\n"
    lines += [""] if lines else []
    lines += ["| model | decision | gating criteria that failed | " + " | ".join(f"{study.utilities[u]} (generated − real)" for u in names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    for m in study.models:
        lines.append(f"| {m['label']} | {m['status']} | {', '.join(m['failed_gating']) or '—'} | "
                     + " | ".join(_f(m["measures"][study.utilities[u]]["compared"], 3) for u in names) + " |")
    return "\n".join(lines) + "\n"


def clearance_markdown(c: dict[str, Any]) -> list[str]:
    """The utility criterion's false alarms and misses per rule, and every model's class, verdicts and decision."""
    noise = any("verdict_noise_bound_only" in r for r in c["models"])
    n = c["counts"]
    lines = ["",
             f"{c['criterion']}: {n['within tolerance']} models within the clinical tolerance, {n['borderline']} borderline, "
             f"{n['clearly worse']} clearly worse (upper 95 % CI bound below it)."]
    for rule, t in c["rules"].items():
        lines.append(f"- {rule}: false alarms {len(t['false_alarms'])}/{n['within tolerance']}"
                     + (f" ({', '.join(t['false_alarms'])})" if t["false_alarms"] else "")
                     + f", misses {len(t['misses'])}/{n['clearly worse']}" + (f" ({', '.join(t['misses'])})" if t["misses"] else ""))
    lines += ["", f"| model | {c['criterion']} (generated − real) [95 % CI] | class | verdict |"
              + (" verdict, noise bound alone |" if noise else "") + " decision | gating criteria that failed |",
              "|---|---|---|---|" + ("---|" if noise else "") + "---|---|"]
    for r in c["models"]:
        lines.append(f"| {r['label']} | {_f(r['compared'], 3)} [{_f(r['ci_low'], 3)}, {_f(r['ci_high'], 3)}] | {r['class']} | "
                     f"{r['verdict']} |" + (f" {r.get('verdict_noise_bound_only', 'n/a')} |" if noise else "")
                     + f" {r['status']} | {', '.join(r['failed_gating']) or '—'} |")
    return lines


def figure(study: ModelStudy) -> Any:
    """One panel per measure: its compared quantity against train-on-synthetic Dice (generated − real), one point per
    model, coloured by family, the panel titled with Spearman ρ."""
    from ..figures import FONT, new_figure

    first = next(iter(study.utilities))
    uid = study.utilities[first]
    rho = {c["measure"]: c for c in study.correlations if c["utility"] == first}
    ids = [m["id"] for m in study.measures if m["id"] != uid]
    families = sorted({m["family"] for m in study.models})
    colour = {f: FAMILY_COLOURS[i % len(FAMILY_COLOURS)] for i, f in enumerate(families)}
    ncol = min(4, len(ids))
    nrow = -(-len(ids) // ncol)
    fig = new_figure(3.4 * ncol, 2.6 * nrow + 0.6)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    x = [m["measures"][uid]["compared"] for m in study.models]
    for ax, mid in zip(axes, ids):
        y = [m["measures"][mid]["compared"] for m in study.models]
        for xi, yi, m in zip(x, y, study.models):
            ax.plot([xi], [yi], "o", ms=5, color=colour[m["family"]], mec="black" if m["status"] == "CLEARED" else "none")
        c = rho.get(mid)
        ax.set_title(f"{mid}  ρ {_f(c['spearman'])}" if c else mid, fontsize=FONT)
        ax.tick_params(labelsize=FONT - 1)
        ax.locator_params(nbins=4)
        ax.set_xlabel(f"{uid} (generated − real)", fontsize=FONT - 1)
        ax.set_ylabel(next(m["quantity"] for m in study.measures if m["id"] == mid), fontsize=FONT - 1)
    for ax in axes[len(ids):]:
        ax.set_visible(False)
    handles = [axes[0].plot([], [], "o", color=colour[f], label=f)[0] for f in families]
    fig.legend(handles=handles, loc="lower center", ncol=len(families), fontsize=FONT, frameon=False)
    fig.suptitle(f"each measure (generated vs real) against {uid}, one point per model (black edge: CLEARED)", fontsize=FONT + 1)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return fig


def write_outputs(study: ModelStudy, out: Path) -> dict[str, Path]:
    """``models.json``, ``models.md`` and ``models.png`` in ``out``."""
    from ..figures import png_bytes

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "models.json", "md": out / "models.md", "png": out / "models.png"}
    paths["json"].write_text(json.dumps(study.as_dict(), indent=1) + "\n", encoding="utf-8")
    paths["md"].write_text(markdown(study), encoding="utf-8")
    paths["png"].write_bytes(png_bytes(figure(study)))
    return paths
