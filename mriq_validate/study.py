"""``mriq-validate study``: the Deo et al. 2025 ("Metrics that matter", arXiv 2505.07175) experiment on the user's data.

Grid: every registered measure that makes sense on the data × every perturbation family at its
:data:`~mriq_validate.perturb.figure.DEFAULT_SWEEPS` strengths (applied to the real test images) and every
builtin stand-in generator. For each (measure, condition):

* ``value``: the measure on the condition's images (full set, no resampling);
* ``baseline``: the measure on the clean real test images;
* ``se``: the measure's resampling standard error on the clean real test images, its noise floor. Per-image
  measures: bootstrap SE (``n_boot`` resamples with replacement). Set-level measures (``resample == "subsample"``):
  SD over ``n_boot`` random 80 % subsets, scaled by ``sqrt(m / (n - m))`` (the delete-d jackknife, Shao & Wu 1989),
  because subsets of 80 % vary less than whole sets of the same size would;
* ``change = value - baseline``; ``worse = change`` signed so that positive means worse; ``z = worse / se``;
* ``detected``: ``worse > 3·se`` (the measure moved beyond its own noise floor, towards worse).

The downstream target is protocol-A Dice (metric ``dice``) of the data's main region (``whole_tumour`` for the tumour
data, ``vessel`` for the vessel data). ``correlation.csv`` gives, for each measure, Spearman and Pearson correlation
between its signed value (higher = worse) and Dice across all conditions, with seeded percentile-bootstrap 95 % CIs
over conditions: a measure aligned with utility has a clearly negative correlation. ``memorisation.csv`` asks whether
each measure gets better as a growing share of the set is duplicated (the memorisation paradox).

Measures that need a user weights file (``pyiqa``) or train one segmenter per condition (``dice_tstr``,
``dice_augmented``: protocol B, about 2–3 min each on 2 CPU cores) are left out and listed in ``study.json``.
Every random draw derives from ``--seed`` through :func:`mriq_validate.seeding.derive_seed`.
"""

from __future__ import annotations

import csv
import html
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MriqError
from .metrics.base import Metric, Sample, create_metric, metric_names
from .models import BUILTIN_MODELS
from .perturb import PerturbContext, apply, get
from .perturb.figure import DEFAULT_SWEEPS
from .seeding import derive_seed, rng_for
from .session import RunContext, RunSettings
from .stats import bootstrap_indices, subsample_indices

STUDY_VERSION = "1"
DETECT_K = 3.0  # |change| beyond 3 bootstrap SEs of the clean-real value, towards worse, counts as "moved"

# Ordinal "true quality" of the builtin stand-ins as training data for segmenting the main region: 0 = best, higher =
# worse (ties allowed). Fixed by construction of each stand-in (models.py), not measured.
TRUE_QUALITY: dict[str, tuple[int, str]] = {
    "real": (0, "held-out real images for the requested masks: the reference itself"),
    "noisy": (1, "Rician sigma 0.08: anatomy and lesion intact, only the signal-to-noise ratio is lower"),
    "blurry": (1, "global Gaussian blur 1.5 px: anatomy and lesion present, fine detail lost"),
    "boundary-blur": (2, "the lesion margin, the clinically delineated structure, is wrong in every image"),
    "collapse": (2, "two anatomies for all outputs: no anatomical diversity, lesion only pasted in"),
    "memoriser": (3, "training copies whose lesion does not match the requested mask, and a privacy leak"),
    "tumour-eraser": (3, "the lesion is absent: the images cannot teach or test its segmentation"),
}

FAMILIES: dict[str, str] = {
    "dice": "downstream", "hd95": "downstream", "region_presence": "downstream",
    "piqe": "no-reference IQA", "niqe_mri": "no-reference IQA",
    "fid": "distribution", "frd": "distribution", "kid": "distribution", "mmd": "distribution",
    "precision": "distribution", "density": "distribution", "recall": "diversity", "coverage": "diversity",
    "vendi": "diversity", "ms_ssim_diversity": "diversity", "copy_fraction": "memorisation",
}
# Measures left out, and why (recorded in study.json).
EXCLUDED: dict[str, str] = {
    "pyiqa": "needs a user-supplied weights file",
    "dice_tstr": "protocol B trains one segmenter per condition (minutes each); too slow for the grid",
    "dice_augmented": "protocol B trains one segmenter per condition (minutes each); too slow for the grid",
}
# Parameters that keep the full grid under 30 min on 2 CPU cores (everything else: the metric's defaults).
FAST_PARAMS: dict[str, dict[str, Any]] = {"ms_ssim_diversity": {"n_pairs": 100}, "kid": {"subsets": 10}}
QUICK_MEASURES = ("dice", "piqe", "fid", "copy_fraction")
QUICK_PERTURBATIONS = ("gaussian", "boundary_blur", "external_duplication")
QUICK_MODELS = ("real", "noisy", "memoriser")
DUPLICATIONS = ("external_duplication", "internal_duplication")
CORR_BOOT = 1000


@dataclass
class StudyConfig:
    """What to run."""

    data: str = "builtin:mni-tumour"
    seed: int = 0
    quick: bool = False
    cache_dir: str = ""
    device: str = "cpu"
    n_boot: int | None = None  # per-image measures; set-level use min(n_boot, 50)
    measures: list[str] | None = None
    perturbations: list[str] | None = None
    models: list[str] | None = None

    def resolved_n_boot(self) -> tuple[int, int]:
        """(per-image, set-level) resample counts for the clean-real noise floors."""
        if self.n_boot is not None:
            return self.n_boot, min(self.n_boot, 50)
        return (20, 10) if self.quick else (200, 50)


@dataclass
class Condition:
    """One column of the grid: a perturbation at one strength, or a builtin stand-in."""

    id: str
    kind: str  # "perturbation" | "model"
    family: str  # perturbation name, or "stand-in"
    scope: str
    level: float | None = None
    param: str | None = None
    true_quality: int | None = None
    note: str = ""


@dataclass
class StudyResult:
    """Everything the study measured (``as_dict`` is ``study.json``)."""

    config: dict[str, Any]
    region: str
    measures: list[dict[str, Any]]
    conditions: list[Condition]
    rows: list[dict[str, Any]]
    correlation: list[dict[str, Any]]
    memorisation: list[dict[str, Any]]
    ranking: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    provenance: dict[str, Any]
    findings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return _json_safe({
            "study_version": STUDY_VERSION, "config": self.config, "region": self.region, "measures": self.measures,
            "conditions": [c.__dict__ for c in self.conditions], "sensitivity": self.rows, "correlation": self.correlation,
            "memorisation": self.memorisation, "ranking": self.ranking, "skipped": self.skipped, "findings": self.findings,
            "true_quality": {k: {"rank": v[0], "why": v[1]} for k, v in TRUE_QUALITY.items()},
            "rules": {"detected": f"worse > {DETECT_K:g} x SE of the clean-real value", "z": "worse / SE",
                      "se_set_measures": "SD over 80% subsets x sqrt(m/(n-m)) (delete-d jackknife)",
                      "correlation": "measure signed so higher = worse, vs Dice, across conditions; bootstrap over conditions"},
            "provenance": self.provenance,
        })


def result_from_json(path: Path) -> StudyResult:
    """A :class:`StudyResult` read back from ``study.json`` (to re-render the tables, figures and markdown)."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))

    def inf(v: Any) -> Any:
        return float("nan") if v is None else v

    rows = [{**r, "z": (inf(r["z"]) if r["z"] is not None else (math.copysign(math.inf, r["worse"]) if r["worse"] else 0.0))}
            for r in d["sensitivity"]]
    res = StudyResult(d["config"], d["region"], d["measures"], [Condition(**c) for c in d["conditions"]], rows,
                      [{k: inf(v) for k, v in r.items()} for r in d["correlation"]],
                      [{k: (math.copysign(math.inf, r["worse_at_max_p"]) if k == "z_at_max_p" and v is None else v) for k, v in r.items()}
                       for r in d["memorisation"]], d["ranking"], d["skipped"], d["provenance"])
    rescore(res, int(d["provenance"]["n_test"]))
    return res


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def main_region(data: Any) -> str:
    """The data's main region: ``whole_tumour``/``vessel`` when present, else the region (or label) with most labels."""
    for name in ("whole_tumour", "vessel"):
        if name in data.regions or name in data.labels:
            return name
    if data.regions:
        return max(data.regions, key=lambda r: len(data.regions[r]))
    return next(iter(data.labels))


def select_measures(cfg: StudyConfig, region: str) -> tuple[list[Metric], list[dict[str, str]]]:
    """The measures of the grid (registry instances) and the ones left out with the reason."""
    names = [n for n in metric_names() if n not in EXCLUDED]
    skipped = [{"what": f"measure {n}", "why": EXCLUDED[n]} for n in metric_names() if n in EXCLUDED]
    if cfg.measures is not None:
        names = [n for n in names if n in cfg.measures]
    elif cfg.quick:
        names = [n for n in names if n in QUICK_MEASURES]
    if "dice" not in names:
        names.insert(0, "dice")
    out = []
    for n in names:
        params: dict[str, Any] = dict(FAST_PARAMS.get(n, {}))
        if n in ("dice", "hd95", "region_presence"):
            params["region"] = region
        if n in ("dice", "hd95"):
            params["min_real_dice"] = 0.0  # the study reports Dice whatever it is; the suite's competence gate is separate
        out.append(create_metric(n, params))
    out.sort(key=lambda m: (m.name != "dice", m.name))
    return out, skipped


def _conditions(cfg: StudyConfig, data: Any) -> tuple[list[Condition], list[dict[str, str]]]:
    skipped: list[dict[str, str]] = []
    names = list(cfg.perturbations) if cfg.perturbations is not None else list(DEFAULT_SWEEPS)
    if cfg.quick and cfg.perturbations is None:
        names = [n for n in names if n in QUICK_PERTURBATIONS]
    out: list[Condition] = []
    vessel = "vessel" in data.labels
    for name in names:
        pert = get(name)
        if name.startswith("vessel_") and not vessel:
            skipped.append({"what": f"perturbation {name}", "why": "acts on vessel masks; the data has no vessel label"})
            continue
        levels = DEFAULT_SWEEPS[name]
        if cfg.quick:
            levels = [levels[0], levels[-1]] if len(levels) > 1 else levels
        for lv in levels:
            out.append(Condition(f"{name}@{lv:g}", "perturbation", name, pert.scope, float(lv), pert.strength))
    models = list(cfg.models) if cfg.models is not None else list(BUILTIN_MODELS)
    if cfg.quick and cfg.models is None:
        models = [m for m in models if m in QUICK_MODELS]
    for m in models:
        rank, why = TRUE_QUALITY.get(m, (None, "not ranked"))
        out.append(Condition(f"model:{m}", "model", "stand-in", "model", None, None, rank, why))
    return out, skipped


def _noise_floor(metric: Metric, prepared: Any, n_boot: int, seed: int) -> tuple[float, float]:
    """(point value, SE) of the measure on the clean real data; see the module docstring for the SE rule."""
    n = metric.size(prepared)
    point = float(metric.value(prepared, np.arange(n)))
    rng = rng_for(seed, "study", "noise-floor", metric.name)
    if n_boot < 2:
        return point, float("nan")
    if metric.resample == "subsample":
        idx = subsample_indices(n, n_boot, rng)
        m = idx.shape[1]
        reps = np.array([metric.value(prepared, i) for i in idx], dtype=np.float64)
        reps = reps[np.isfinite(reps)]
        return point, float(reps.std(ddof=1) * math.sqrt(m / max(n - m, 1)))
    idx = bootstrap_indices(n, n_boot, rng)
    reps = np.array([metric.value(prepared, i) for i in idx], dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    return point, float(reps.std(ddof=1))


def floor_se(info: dict[str, Any], n: int) -> float:
    """The noise floor used for z: the resampling SE; for a measure whose clean-real value has no spread (SE 0, e.g.
    ``copy_fraction``, 0 on real test images by construction) the binomial SE of its null flag rate alpha,
    ``sqrt(alpha(1-alpha)/n)``, when it declares one; else 0 (any change then counts as infinite z)."""
    se = float(info["se"])
    alpha = (info.get("config") or {}).get("alpha")
    if not se > 0 and alpha:
        return math.sqrt(alpha * (1 - alpha) / n)
    return se


def _score(worse: float, se: float, baseline: float) -> tuple[float, bool]:
    z = worse / se if se > 0 else (math.copysign(math.inf, worse) if abs(worse) > 1e-12 else 0.0)
    return z, bool(worse > DETECT_K * se and abs(worse) > 1e-12 * max(1.0, abs(baseline)))


def rescore(res: "StudyResult", n: int) -> None:
    """Recompute every row's se, z and detected from the measures' noise floors, then memorisation and findings."""
    floors = {m["name"]: floor_se(m, n) for m in res.measures}
    for m in res.measures:
        m["se_used"] = floors[m["name"]]
    for r in res.rows:
        r["se"] = floors[r["measure"]]
        r["z"], r["detected"] = _score(r["worse"], r["se"], r["baseline"])
    res.memorisation = _memorisation(res.rows, res.measures, {m["name"]: (m["baseline"], floors[m["name"]]) for m in res.measures})
    res.findings = findings(res)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x), np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return sums[inv] / counts[inv]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return _pearson(_ranks(x), _ranks(y))


def correlate(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_boot: int = CORR_BOOT) -> dict[str, float]:
    """Spearman and Pearson of x and y with percentile-bootstrap 95 % CIs over the paired items."""
    n = len(x)
    out: dict[str, float] = {"n": n, "spearman": _spearman(x, y), "pearson": _pearson(x, y)}
    idx = rng.integers(0, n, size=(n_boot, n)) if n >= 3 else np.empty((0, n), np.int64)
    for name, fn in (("spearman", _spearman), ("pearson", _pearson)):
        reps = np.array([fn(x[i], y[i]) for i in idx])
        reps = reps[np.isfinite(reps)]
        lo, hi = (np.quantile(reps, [0.025, 0.975]) if reps.size else (np.nan, np.nan))
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(lo), float(hi)
    return out


def run_study(cfg: StudyConfig, progress: Callable[[str], None] | None = None) -> StudyResult:
    """Run the grid (see the module docstring)."""
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    settings = RunSettings(model="builtin:real", data=cfg.data, device=cfg.device, seed=cfg.seed, cache_dir=cfg.cache_dir)
    base = RunContext(settings, cfg.data, progress=say)
    data = base.data
    region = main_region(data)
    measures, skipped = select_measures(cfg, region)
    conditions, skipped_c = _conditions(cfg, data)
    skipped += skipped_c
    nb_img, nb_set = cfg.resolved_n_boot()
    say(f"study: data {cfg.data} ({len(data.train)} train / {len(data.test)} test slices), main region {region!r}, "
        f"{len(measures)} measures x {len(conditions)} conditions, seed {cfg.seed}{' (quick)' if cfg.quick else ''}")

    real = base.real("test")
    baseline: dict[str, tuple[float, float]] = {}
    for m in measures:
        t = time.perf_counter()
        prep = base.prepare(m, real)
        baseline[m.name] = _noise_floor(m, prep, nb_set if m.resample == "subsample" else nb_img, cfg.seed)
        say(f"study: clean real {m.name} = {baseline[m.name][0]:.4g} (SE {baseline[m.name][1]:.3g}) [{time.perf_counter() - t:.1f} s]")

    lesion = tuple(data.labels.values())
    pctx = PerturbContext(data.train.images, data.train.masks, data.test.covariates, lesion_labels=lesion)
    rows: list[dict[str, Any]] = []
    done_conditions: list[Condition] = []
    for k, cond in enumerate(conditions, 1):
        t = time.perf_counter()
        try:
            if cond.kind == "perturbation":
                assert cond.param is not None
                seed = derive_seed(cfg.seed, "study", cond.family, cond.level)
                out = apply(cond.family, real.images, real.masks, seed=seed, ctx=pctx, **{cond.param: cond.level})
                subject = Sample(out.images, out.masks, f"real test + {cond.id}")
            else:
                name = cond.id.split(":", 1)[1]
                mctx = RunContext(RunSettings(model=f"builtin:{name}", data=cfg.data, device=cfg.device, seed=cfg.seed,
                                              cache_dir=cfg.cache_dir), cfg.data, progress=say)
                subject, _ = mctx.generated("test")
                if subject.masks is None:
                    raise MriqError(f"stand-in {name} returned no masks")
        except MriqError as exc:
            skipped.append({"what": f"condition {cond.id}", "why": str(exc).splitlines()[0]})
            say(f"study: [{k}/{len(conditions)}] {cond.id}: skipped ({str(exc).splitlines()[0][:120]})")
            continue
        done_conditions.append(cond)
        for m in measures:
            b, se = baseline[m.name]
            try:
                prep = base.prepare(m, subject)  # measurement does not depend on the model: one shared memo
                v = float(m.value(prep, np.arange(m.size(prep))))
            except MriqError as exc:
                skipped.append({"what": f"{m.name} on {cond.id}", "why": str(exc).splitlines()[0]})
                continue
            sign = -1.0 if m.higher_is_better else 1.0
            change = v - b
            worse = sign * change
            z, detected = _score(worse, se, b)
            rows.append({"measure": m.name, "family": FAMILIES.get(m.name, "other"), "condition": cond.id,
                         "condition_kind": cond.kind, "perturbation": cond.family, "scope": cond.scope, "level": cond.level,
                         "value": v, "baseline": b, "change": change, "worse": worse, "se": se, "z": z, "detected": detected})
        dice = next((r["value"] for r in rows if r["condition"] == cond.id and r["measure"] == "dice"), float("nan"))
        say(f"study: [{k}/{len(conditions)}] {cond.id}: Dice {dice:.3f} [{time.perf_counter() - t:.1f} s, total {time.perf_counter() - t0:.0f} s]")

    measure_info = [{"name": m.name, "family": FAMILIES.get(m.name, "other"), "higher_is_better": m.higher_is_better,
                     "kind": m.kind, "resample": m.resample, "config": m.config(), "baseline": baseline[m.name][0],
                     "se": baseline[m.name][1], "n_boot": nb_set if m.resample == "subsample" else nb_img} for m in measures]
    correlation = _correlations(rows, measures, done_conditions, cfg.seed)
    memo = _memorisation(rows, measures, baseline)
    ranking = _ranking(rows, measures, done_conditions, cfg.seed)
    from .report import package_versions

    provenance = {"seed": cfg.seed, "data_spec": cfg.data, "data_digests": data.digests(), "n_train": len(data.train),
                  "n_test": len(data.test), "image_shape": list(data.image_shape), "packages": package_versions(),
                  "python": platform.python_version(), "device": cfg.device, "runtime_s": round(time.perf_counter() - t0, 1),
                  "segmenters": base.provenance().get("segmenters", {}), "argv": sys.argv[1:]}
    config = {"data": cfg.data, "seed": cfg.seed, "quick": cfg.quick, "n_boot_per_image": nb_img, "n_boot_set": nb_set,
              "region": region, "detect_k": DETECT_K, "correlation_n_boot": CORR_BOOT}
    res = StudyResult(config, region, measure_info, done_conditions, rows, correlation, memo, ranking, skipped, provenance)
    rescore(res, len(real))
    say(f"study: done in {time.perf_counter() - t0:.0f} s")
    return res


def _correlations(rows: list[dict[str, Any]], measures: list[Metric], conds: list[Condition], seed: int) -> list[dict[str, Any]]:
    """Per measure: correlation of its signed value (higher = worse) with Dice across all conditions."""
    dice = {r["condition"]: r["value"] for r in rows if r["measure"] == "dice"}
    out = []
    for m in measures:
        if m.name == "dice":
            continue
        sign = -1.0 if m.higher_is_better else 1.0
        pairs = [(sign * r["value"], dice[r["condition"]]) for r in rows if r["measure"] == m.name and r["condition"] in dice]
        if len(pairs) < 3:
            continue
        x, y = np.array(pairs).T
        c = correlate(x, y, rng_for(seed, "study", "correlation", m.name))
        aligned = bool(np.isfinite(c["spearman_ci_high"]) and c["spearman_ci_high"] < 0)
        out.append({"measure": m.name, "family": FAMILIES.get(m.name, "other"), **c,
                    "label": "aligned with Dice" if aligned else "advisory only"})
    return out


def _memorisation(rows: list[dict[str, Any]], measures: list[Any], baseline: dict[str, tuple[float, float]]) -> list[dict[str, Any]]:
    """Per measure and duplication kind: the dose-response over p, and whether it improves (the paradox)."""
    out = []
    for dup in DUPLICATIONS:
        for m in measures:
            name = m["name"] if isinstance(m, dict) else m.name
            rs = sorted((r for r in rows if r["measure"] == name and r["perturbation"] == dup), key=lambda r: r["level"])
            if not rs:
                continue
            b, se = baseline[name]
            ps = [0.0] + [r["level"] for r in rs]
            worse = [0.0] + [r["worse"] for r in rs]
            z_max = rs[-1]["z"]
            trend = _spearman(np.array(ps), np.array(worse))
            verdict = "improves (paradox)" if z_max < -DETECT_K else ("worsens (detects)" if z_max > DETECT_K else "flat (blind)")
            out.append({"measure": name, "family": FAMILIES.get(name, "other"), "duplication": dup,
                        "p": ";".join(f"{p:g}" for p in ps), "value": ";".join(f"{v:.6g}" for v in [b] + [r["value"] for r in rs]),
                        "worse_at_max_p": rs[-1]["worse"], "z_at_max_p": z_max, "spearman_worse_vs_p": trend, "verdict": verdict})
    return out


def _ranking(rows: list[dict[str, Any]], measures: list[Metric], conds: list[Condition], seed: int) -> list[dict[str, Any]]:
    """Per measure: Spearman between its signed value and the stand-ins' ordinal true quality (positive = agrees)."""
    truth = {c.id: c.true_quality for c in conds if c.kind == "model" and c.true_quality is not None}
    if len(truth) < 3:
        return []
    out = []
    for m in measures:
        sign = -1.0 if m.higher_is_better else 1.0
        rs = [r for r in rows if r["measure"] == m.name and r["condition"] in truth]
        if len(rs) < 3:
            continue
        x = np.array([sign * r["value"] for r in rs])
        y = np.array([truth[r["condition"]] for r in rs], dtype=np.float64)
        order = [r["condition"].split(":", 1)[1] for r in sorted(rs, key=lambda r: sign * r["value"])]
        out.append({"measure": m.name, "family": FAMILIES.get(m.name, "other"), "spearman_vs_true_quality": _spearman(x, y),
                    "order_best_first": " > ".join(order)})
    return out


# ---------------------------------------------------------------- findings (computed from the numbers)


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "inf" if isinstance(x, float) and x == math.inf else ("-inf" if isinstance(x, float) and x == -math.inf else "n/a")
    return f"{x:.{nd}g}" if isinstance(x, float) else str(x)


def findings(res: StudyResult) -> dict[str, Any]:
    """The four questions of the brief, answered from the measured numbers."""
    rows = res.rows
    nr_dist = [m["name"] for m in res.measures if m["family"] in ("no-reference IQA", "distribution", "diversity")]

    def group(perts: tuple[str, ...]) -> dict[str, Any]:
        sel = [r for r in rows if r["perturbation"] in perts]
        if not sel:
            return {}
        strongest = {p: max(r["level"] for r in sel if r["perturbation"] == p) if p != "poisson" else
                     min(r["level"] for r in sel if r["perturbation"] == p) for p in {r["perturbation"] for r in sel}}
        top = [r for r in sel if r["level"] == strongest[r["perturbation"]]]
        per = {}
        for name in nr_dist + ["dice"]:
            rr = [r for r in sel if r["measure"] == name]
            tt = [r for r in top if r["measure"] == name]
            if rr:
                per[name] = {"detected": sum(r["detected"] for r in rr), "of": len(rr),
                             "detected_at_strongest": sum(r["detected"] for r in tt), "of_strongest": len(tt),
                             "max_z": max((r["z"] for r in rr), default=float("nan"))}
        nr = {k: v for k, v in per.items() if k != "dice"}
        return {"perturbations": sorted(strongest), "per_measure": per,
                "nr_detection_rate": sum(v["detected"] for v in nr.values()) / max(1, sum(v["of"] for v in nr.values())),
                "nr_detection_rate_strongest": sum(v["detected_at_strongest"] for v in nr.values()) / max(1, sum(v["of_strongest"] for v in nr.values())),
                "dice_detection_rate": (per["dice"]["detected"] / per["dice"]["of"]) if "dice" in per else float("nan")}

    out: dict[str, Any] = {
        "global_noise": group(("gaussian", "rician", "poisson")),
        "localised_edits": group(("boundary_blur", "gradient")),
    }
    memo = [r for r in res.memorisation if r["duplication"] == "external_duplication" and r["measure"] in ("fid", "kid", "frd", "mmd")]
    out["duplication"] = {r["measure"]: {"z_at_max_p": r["z_at_max_p"], "verdict": r["verdict"], "values": r["value"], "p": r["p"]} for r in memo}
    rk = {r["measure"]: r["spearman_vs_true_quality"] for r in res.ranking}
    if rk:
        nr_rk = {k: v for k, v in rk.items() if k in nr_dist}
        finite = [v for v in nr_rk.values() if math.isfinite(v)]
        out["ranking"] = {"dice": rk.get("dice"), "nr_median": float(np.median(finite)) if finite else float("nan"),
                          "nr_better_than_dice": sorted(k for k, v in nr_rk.items() if math.isfinite(v) and v > (rk.get("dice") or -2)),
                          "per_measure": rk}
    return out


# ---------------------------------------------------------------- outputs

SENS_COLUMNS = ["measure", "family", "condition", "condition_kind", "perturbation", "scope", "level", "value", "baseline",
                "change", "worse", "se", "z", "detected"]
CORR_COLUMNS = ["measure", "family", "n", "spearman", "spearman_ci_low", "spearman_ci_high", "pearson", "pearson_ci_low",
                "pearson_ci_high", "label"]
MEMO_COLUMNS = ["measure", "family", "duplication", "p", "value", "worse_at_max_p", "z_at_max_p", "spearman_worse_vs_p", "verdict"]


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "inf" if v == math.inf else ("-inf" if v == -math.inf else ("" if math.isnan(v) else repr(round(v, 10))))
    return "" if v is None else v


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])


def write_outputs(res: StudyResult, out: Path) -> dict[str, Path]:
    """Write sensitivity.csv, correlation.csv, memorisation.csv, ranking.csv, study.json, study.html, study.md and
    the figures (PNG) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f for k, f in (("sensitivity", "sensitivity.csv"), ("correlation", "correlation.csv"),
                                     ("memorisation", "memorisation.csv"), ("ranking", "ranking.csv"), ("json", "study.json"),
                                     ("html", "study.html"), ("md", "study.md"))}
    _write_csv(paths["sensitivity"], SENS_COLUMNS, res.rows)
    _write_csv(paths["correlation"], CORR_COLUMNS, res.correlation)
    _write_csv(paths["memorisation"], MEMO_COLUMNS, res.memorisation)
    _write_csv(paths["ranking"], ["measure", "family", "spearman_vs_true_quality", "order_best_first"], res.ranking)
    paths["json"].write_text(json.dumps(res.as_dict(), indent=1, sort_keys=False, default=str), encoding="utf-8")
    from .figures import data_uri, png_bytes

    figs = {"heatmap": heatmap_figure(res), "dose_response": dose_response_grid(res), "correlation": correlation_figure(res)}
    pngs = {k: png_bytes(f) for k, f in figs.items() if f is not None}
    (out / "figures").mkdir(exist_ok=True)
    for k, b in pngs.items():
        (out / "figures" / f"study_{k}.png").write_bytes(b)
        paths[f"fig_{k}"] = out / "figures" / f"study_{k}.png"
    paths["html"].write_text(render_html(res, {k: data_uri(b) for k, b in pngs.items()}), encoding="utf-8")
    paths["md"].write_text(render_markdown(res, "figures"), encoding="utf-8")
    return paths


# ---------------------------------------------------------------- figures


def _z_matrix(res: StudyResult) -> tuple[list[str], list[str], np.ndarray]:
    ms = [m["name"] for m in res.measures]
    cs = [c.id for c in res.conditions]
    z = np.full((len(ms), len(cs)), np.nan)
    for r in res.rows:
        z[ms.index(r["measure"]), cs.index(r["condition"])] = r["z"]
    return ms, cs, z


def heatmap_figure(res: StudyResult) -> Any:
    """z-scores (towards worse) of every measure under every condition, clipped to ±20."""
    from .figures import _figure

    ms, cs, z = _z_matrix(res)
    fig = _figure(max(6.0, 0.17 * len(cs) + 2), max(2.5, 0.28 * len(ms) + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    zc = np.clip(np.where(np.isfinite(z), z, np.sign(np.nan_to_num(z, nan=0.0, posinf=1, neginf=-1)) * 20), -20, 20)
    im = ax.imshow(zc, cmap="RdBu_r", vmin=-20, vmax=20, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(ms)), ms, fontsize=7)
    ax.set_xticks(range(len(cs)), cs, fontsize=5, rotation=90)
    for i in range(len(ms)):
        for j in range(len(cs)):
            if np.isfinite(z[i, j]) and abs(z[i, j]) <= DETECT_K:
                ax.plot(j, i, marker=".", color="0.4", markersize=2)
    cb = fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    cb.set_label("z = change towards worse / SE (clipped ±20)", fontsize=7)
    ax.set_title(f"Sensitivity of each measure ({res.config['data']}, seed {res.config['seed']}); dots: |z| ≤ {DETECT_K:g} (not moved)", fontsize=8)
    return fig


def dose_response_grid(res: StudyResult) -> Any | None:
    """One panel per perturbation family: z of each measure against strength (Dice bold black)."""
    from .figures import _figure

    fams = [f for f in dict.fromkeys(c.family for c in res.conditions if c.kind == "perturbation")]
    if not fams:
        return None
    ncol = 4
    nrow = math.ceil(len(fams) / ncol)
    fig = _figure(3.0 * ncol, 2.3 * nrow + 0.6)
    names = [m["name"] for m in res.measures]
    cmap = __import__("matplotlib").colormaps["tab20"]
    for k, fam in enumerate(fams):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        for i, name in enumerate(names):
            rs = sorted((r for r in res.rows if r["perturbation"] == fam and r["measure"] == name), key=lambda r: r["level"])
            if not rs:
                continue
            zs = np.clip([r["z"] if math.isfinite(r["z"]) else math.copysign(50, r["z"]) for r in rs], -50, 50)
            style = {"color": "black", "lw": 2.2, "zorder": 5} if name == "dice" else {"color": cmap(i % 20), "lw": 0.9}
            ax.plot([r["level"] for r in rs], zs, marker="o", markersize=2.5, label=name, **style)
        ax.axhspan(-DETECT_K, DETECT_K, color="0.85", zorder=0)
        ax.set_title(fam, fontsize=8)
        ax.tick_params(labelsize=6)
        if fam == "poisson":
            ax.set_xscale("log")
            ax.invert_xaxis()
        ax.set_ylabel("z (towards worse)", fontsize=6)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), fontsize=6, frameon=False)
    fig.suptitle("Dose-response: z of each measure vs perturbation strength (grey band: within ±3 SE; clipped ±50)", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return fig


def correlation_figure(res: StudyResult) -> Any | None:
    """Spearman (and Pearson) of each measure (signed higher = worse) with Dice, with 95 % CIs."""
    from .figures import _figure

    if not res.correlation:
        return None
    rs = sorted(res.correlation, key=lambda r: r["spearman"] if math.isfinite(r["spearman"]) else 2)
    fig = _figure(6.5, 0.3 * len(rs) + 1.2)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(rs))
    for off, key, col in ((-0.18, "spearman", "#0969da"), (0.18, "pearson", "#bf8700")):
        v = np.array([r[key] for r in rs], dtype=float)
        lo = np.array([r[f"{key}_ci_low"] for r in rs], dtype=float)
        hi = np.array([r[f"{key}_ci_high"] for r in rs], dtype=float)
        ax.barh(y + off, np.nan_to_num(v), height=0.34, color=col, label=key)
        ax.errorbar(np.nan_to_num(v), y + off, xerr=[np.nan_to_num(v - lo), np.nan_to_num(hi - v)], fmt="none", ecolor="black", lw=0.7)
    ax.set_yticks(y, [r["measure"] for r in rs], fontsize=7)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("correlation with Dice across conditions (measure signed: higher = worse; aligned ⇒ negative)", fontsize=7)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    return fig


# ---------------------------------------------------------------- HTML and markdown


def _table_html(columns: list[str], rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)) if isinstance(r.get(c), float) else str(_cell(r.get(c))))}</td>"
                                    for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(res: StudyResult, images: dict[str, str]) -> str:
    """A self-contained page: findings, figures (base64 PNGs) and the tables."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>mriq-validate study: {html.escape(res.config['data'])}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;font-size:13px}table{border-collapse:collapse;font-size:11px}"
             "td,th{border:1px solid #ccc;padding:2px 5px;text-align:right}img{max-width:100%}</style></head><body>",
             f"<h1>Metric study on {html.escape(res.config['data'])}</h1>",
             f"<p>seed {res.config['seed']}; main region <b>{html.escape(res.region)}</b>; {len(res.measures)} measures × "
             f"{len(res.conditions)} conditions; runtime {res.provenance['runtime_s']} s{' (quick)' if res.config['quick'] else ''}.</p>",
             "<h2>Findings</h2>", "<pre>" + html.escape(_findings_text(res)) + "</pre>"]
    for key, title in (("heatmap", "Sensitivity heatmap"), ("dose_response", "Dose-response per perturbation family"),
                       ("correlation", "Correlation with Dice")):
        if key in images:
            parts.append(f"<h2>{title}</h2><img alt='{key}' src='{images[key]}'>")
    parts += ["<h2>Correlation with Dice</h2>", _table_html(CORR_COLUMNS, res.correlation),
              "<h2>Stand-in ranking vs true quality</h2>", _table_html(["measure", "spearman_vs_true_quality", "order_best_first"], res.ranking),
              "<h2>Memorisation</h2>", _table_html(MEMO_COLUMNS, res.memorisation),
              "<h2>Sensitivity</h2>", _table_html(SENS_COLUMNS, res.rows),
              "<h2>Skipped</h2>", _table_html(["what", "why"], res.skipped),
              "<h2>Provenance</h2><pre>" + html.escape(json.dumps(_json_safe(res.provenance), indent=1, default=str)) + "</pre></body></html>"]
    return "".join(parts)


def _findings_text(res: StudyResult) -> str:
    f = res.findings
    lines = []
    g = f.get("global_noise") or {}
    if g:
        pm = g["per_measure"]
        moved = sorted(k for k, v in pm.items() if k != "dice" and v["detected_at_strongest"] > 0)
        lines.append(f"1. Global noise ({', '.join(g['perturbations'])}): no-reference/distribution/diversity measures moved beyond 3 SE "
                     f"in {g['nr_detection_rate']:.0%} of (measure, level) cells, {g['nr_detection_rate_strongest']:.0%} at the strongest level "
                     f"(moved there: {', '.join(moved) or 'none'}); Dice moved in {g['dice_detection_rate']:.0%} of levels.")
    loc = f.get("localised_edits") or {}
    if loc:
        pm = loc["per_measure"]
        moved = sorted(k for k, v in pm.items() if k != "dice" and v["detected"] > 0)
        lines.append(f"2. Localised edits ({', '.join(loc['perturbations'])}): no-reference/distribution/diversity measures moved in "
                     f"{loc['nr_detection_rate']:.0%} of cells ({loc['nr_detection_rate_strongest']:.0%} at the strongest level; "
                     f"any move: {', '.join(moved) or 'none'}); Dice moved in {loc['dice_detection_rate']:.0%} of levels "
                     f"(max z {_fmt(pm.get('dice', {}).get('max_z'))}).")
    dup = f.get("duplication") or {}
    if dup:
        lines.append("3. External duplication from the training set (p up to the largest level): " + "; ".join(
            f"{k}: {v['verdict']} (z at max p {_fmt(v['z_at_max_p'])}; values {v['values']} at p {v['p']})" for k, v in dup.items()) + ".")
    rk = f.get("ranking")
    if rk:
        lines.append(f"4. Stand-in ranking vs true quality (Spearman, positive = agrees): Dice {_fmt(rk['dice'])}; median of the "
                     f"no-reference/distribution/diversity measures {_fmt(rk['nr_median'])}; measures ranking better than Dice: "
                     f"{', '.join(rk['nr_better_than_dice']) or 'none'}.")
    return "\n".join(lines)


def paper_comparison(res: StudyResult) -> list[str]:
    """Each qualitative claim of Deo et al. 2025 against this run: agrees / disagrees, with the numbers.

    The claims are those of the paper's abstract (arXiv 2505.07175): poor correlation with downstream task suitability,
    insensitivity to localised anatomical details, misleading scores under memorisation; and, from the abstract in the
    authors' repository README (github.com/YashDeo-York/GenMed), sensitivity to global distributional characteristics
    and downstream evaluation being "more discriminative and better aligned with practical model utility"."""
    f, out = res.findings, []
    g = f.get("global_noise") or {}
    if g:
        ok = g["nr_detection_rate_strongest"] >= 0.5
        out.append(f"- Claim: NR and distribution measures are sensitive to global noise. **{'Agrees' if ok else 'Disagrees'}**: "
                   f"{g['nr_detection_rate_strongest']:.0%} of them moved beyond 3 SE at the strongest noise level "
                   f"({g['nr_detection_rate']:.0%} over all levels, where the mildest levels move few of them).")
    loc = f.get("localised_edits") or {}
    if loc:
        pm = loc["per_measure"]
        moved = sorted(k for k, v in pm.items() if k != "dice" and v["detected"] > 0)
        ok = loc["nr_detection_rate"] <= 0.2 and loc["dice_detection_rate"] > loc["nr_detection_rate"]
        out.append(f"- Claim: profound insensitivity to localised edits (boundary blur, internal gradient), which Dice detects. "
                   f"**{'Agrees' if ok else 'Partly disagrees'}**: NR/distribution/diversity measures moved in "
                   f"{loc['nr_detection_rate']:.0%} of cells (Dice: {loc['dice_detection_rate']:.0%} of levels)"
                   + (f"; measures that did move at some level: {', '.join(moved)}." if moved else "; none of them moved at any level."))
    dup = f.get("duplication") or {}
    if dup:
        worse = sorted(k for k, v in dup.items() if v["verdict"].startswith("worsens"))
        better = sorted(k for k, v in dup.items() if v["verdict"].startswith("improves"))
        ok = not worse
        out.append(f"- Claim: memorisation (copies of training images) leaves FID/KID as good or better. **{'Agrees' if ok else 'Disagrees'}**: "
                   f"under external duplication up to the largest p, improved beyond 3 SE: {', '.join(better) or 'none'}; "
                   f"worsened beyond 3 SE: {', '.join(worse) or 'none'}; the rest stayed within noise (values per p in the table below). "
                   f"A flat or falling FID is what makes memorisation invisible to it.")
    rk = f.get("ranking")
    if rk:
        nr_corr = [r for r in res.correlation if r["family"] in ("no-reference IQA", "distribution", "diversity")]
        aligned = sorted(r["measure"] for r in nr_corr if r["label"] == "aligned with Dice")
        ok = (rk["dice"] or -2) > rk["nr_median"]
        out.append(f"- Claim: Dice ranks generators closer to their true utility than NR measures. **{'Agrees' if ok else 'Disagrees'}**: "
                   f"Spearman with true quality over the stand-ins: Dice {_fmt(rk['dice'])}, NR/distribution/diversity median "
                   f"{_fmt(rk['nr_median'])} (better than Dice: {', '.join(rk['nr_better_than_dice']) or 'none'}).")
        ok2 = len(aligned) <= len(nr_corr) / 2
        out.append(f"- Claim: NR measures correlate poorly with downstream Dice. **{'Agrees' if ok2 else 'Disagrees'}**: "
                   f"{len(aligned)} of {len(nr_corr)} NR/distribution/diversity measures have a Spearman CI entirely below 0 across "
                   f"all {len(res.conditions)} conditions ({', '.join(aligned) or 'none'})."
                   + ("" if ok2 else " Global perturbations lower Dice and move these measures together, so they dominate a "
                      "correlation across the whole grid; the localised-edit and duplication findings above show where the "
                      "measures and Dice part ways."))
    return out


def _md_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    def c(v: Any) -> str:
        return _fmt(v) if isinstance(v, float) else str(_cell(v))

    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] +
                     ["| " + " | ".join(c(r.get(k)) for k in columns) + " |" for r in rows])


def render_markdown(res: StudyResult, fig_dir: str = "figures") -> str:
    """The generated part of docs/study.md: findings, the correlation and ranking tables, the figure."""
    corr = [{**r, "spearman [95% CI]": f"{_fmt(r['spearman'], 2)} [{_fmt(r['spearman_ci_low'], 2)}, {_fmt(r['spearman_ci_high'], 2)}]",
             "pearson [95% CI]": f"{_fmt(r['pearson'], 2)} [{_fmt(r['pearson_ci_low'], 2)}, {_fmt(r['pearson_ci_high'], 2)}]"}
            for r in sorted(res.correlation, key=lambda r: r["spearman"] if math.isfinite(r["spearman"]) else 2)]
    tq = [{"stand-in": k, "true quality (0 best)": v[0], "why": v[1]} for k, v in TRUE_QUALITY.items()]
    return "\n\n".join([
        f"Generated by `mriq-validate study --data {res.config['data']} --seed {res.config['seed']}"
        f"{' --quick' if res.config['quick'] else ''}` in {res.provenance['runtime_s']} s "
        f"({len(res.measures)} measures × {len(res.conditions)} conditions, main region `{res.region}`).",
        "### Findings (numbers from this run)\n\n" + _findings_text(res),
        "### Against the paper's claims (Deo et al. 2025, arXiv 2505.07175, abstract)\n\n" + "\n".join(paper_comparison(res)),
        "### Correlation with Dice across conditions\n\nMeasure signed so that higher = worse; a measure aligned with "
        "downstream utility has a clearly negative correlation (CI entirely below 0).\n\n" +
        _md_table(["measure", "family", "n", "spearman [95% CI]", "pearson [95% CI]", "label"], corr),
        "### Stand-in ranking\n\nTrue quality (defined in `mriq_validate/study.py`, `TRUE_QUALITY`):\n\n" +
        _md_table(["stand-in", "true quality (0 best)", "why"], tq) + "\n\nSpearman between each measure (higher = worse) "
        "and true quality across the stand-ins (positive = ranks them correctly):\n\n" +
        _md_table(["measure", "family", "spearman_vs_true_quality", "order_best_first"], res.ranking),
        "### Memorisation (duplication from the training set / within the set)\n\n" +
        _md_table(["measure", "duplication", "p", "value", "z_at_max_p", "verdict"], res.memorisation),
        f"![z-score heatmap]({fig_dir}/study_heatmap.png)\n\n![dose-response]({fig_dir}/study_dose_response.png)\n\n"
        f"![correlation]({fig_dir}/study_correlation.png)",
        "Skipped: " + ("; ".join(f"{s['what']} ({s['why']})" for s in res.skipped) or "nothing") + ".",
    ]) + "\n"
