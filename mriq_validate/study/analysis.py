"""The study's tables, computed from the (measure, condition) rows: sensitivity scores, correlation with Dice,
memorisation dose-response, stand-in ranking, and the findings that answer the paper's questions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..metrics import Metric
from ..seeding import rng_for
from ..stats import correlate, correlation
from .grid import Condition, family
from .result import CORR_BOOT, DETECT_K, StudyResult

DUPLICATIONS = ("external_duplication", "internal_duplication")
NR_FAMILIES = ("no-reference IQA", "distribution", "diversity")


def floor_se(info: dict[str, Any], n: int) -> float:
    """The noise floor used for z: the resampling SE; for a measure whose clean-real value has no spread (SE 0, e.g.
    ``copy_fraction``, 0 on real test images by construction) the binomial SE of its null flag rate alpha,
    ``sqrt(alpha(1-alpha)/n)``, when it declares one; else 0 (any change then counts as infinite z)."""
    se = float(info["se"])
    alpha = (info.get("config") or {}).get("alpha")
    if not se > 0 and alpha:
        return math.sqrt(alpha * (1 - alpha) / n)
    return se


def score(worse: float, se: float, baseline: float) -> tuple[float, bool]:
    """(z, detected): ``worse / se`` (±inf for a change over a zero floor), and whether ``worse > DETECT_K·se`` beyond
    rounding noise of the baseline."""
    z = worse / se if se > 0 else (math.copysign(math.inf, worse) if abs(worse) > 1e-12 else 0.0)
    return z, bool(worse > DETECT_K * se and abs(worse) > 1e-12 * max(1.0, abs(baseline)))


def rescore(res: StudyResult, n: int) -> None:
    """Recompute every row's se, z and detected from the measures' noise floors (``n`` real test items), then the
    memorisation table and the findings."""
    floors = {m["name"]: floor_se(m, n) for m in res.measures}
    for m in res.measures:
        m["se_used"] = floors[m["name"]]
    for r in res.rows:
        r["se"] = floors[r["measure"]]
        r["z"], r["detected"] = score(r["worse"], r["se"], r["baseline"])
    res.memorisation = memorisation(res.rows, [m["name"] for m in res.measures],
                                    {m["name"]: m["baseline"] for m in res.measures})
    res.findings = findings(res)


def _worse_sign(m: Metric) -> float:
    return -1.0 if m.higher_is_better else 1.0


def correlations(rows: list[dict[str, Any]], measures: list[Metric], seed: int) -> list[dict[str, Any]]:
    """Per measure: Spearman and Pearson of its signed value (higher = worse) with Dice across all conditions, with
    bootstrap CIs over conditions; "aligned with Dice" when the Spearman CI lies entirely below 0."""
    dice = {r["condition"]: r["value"] for r in rows if r["measure"] == "dice"}
    out = []
    for m in measures:
        if m.name == "dice":
            continue
        pairs = [(_worse_sign(m) * r["value"], dice[r["condition"]]) for r in rows if r["measure"] == m.name and r["condition"] in dice]
        if len(pairs) < 3:
            continue
        x, y = np.array(pairs).T
        c = correlate(x, y, rng_for(seed, "study", "correlation", m.name), n_boot=CORR_BOOT)
        aligned = bool(np.isfinite(c["spearman_ci_high"]) and c["spearman_ci_high"] < 0)
        out.append({"measure": m.name, "family": family(m.name), **c, "label": "aligned with Dice" if aligned else "advisory only"})
    return out


def memorisation(rows: list[dict[str, Any]], names: list[str], baseline: dict[str, float]) -> list[dict[str, Any]]:
    """Per measure and duplication kind: the dose-response over p, and whether it improves (the paradox)."""
    out = []
    for dup in DUPLICATIONS:
        for name in names:
            rs = sorted((r for r in rows if r["measure"] == name and r["perturbation"] == dup), key=lambda r: r["level"])
            if not rs:
                continue
            ps = [0.0] + [r["level"] for r in rs]
            worse = [0.0] + [r["worse"] for r in rs]
            z_max = rs[-1]["z"]
            verdict = "improves (paradox)" if z_max < -DETECT_K else ("worsens (detects)" if z_max > DETECT_K else "flat (blind)")
            out.append({"measure": name, "family": family(name), "duplication": dup,
                        "p": ";".join(f"{p:g}" for p in ps), "value": ";".join(f"{v:.6g}" for v in [baseline[name]] + [r["value"] for r in rs]),
                        "worse_at_max_p": rs[-1]["worse"], "z_at_max_p": z_max,
                        "spearman_worse_vs_p": correlation("spearman", np.array(ps), np.array(worse)), "verdict": verdict})
    return out


def ranking(rows: list[dict[str, Any]], measures: list[Metric], conds: list[Condition]) -> list[dict[str, Any]]:
    """Per measure: Spearman between its signed value and the stand-ins' ordinal true quality (positive = agrees)."""
    truth = {c.id: c.true_quality for c in conds if c.kind == "model" and c.true_quality is not None}
    if len(truth) < 3:
        return []
    out = []
    for m in measures:
        sign = _worse_sign(m)
        rs = [r for r in rows if r["measure"] == m.name and r["condition"] in truth]
        if len(rs) < 3:
            continue
        x = np.array([sign * r["value"] for r in rs])
        y = np.array([truth[r["condition"]] for r in rs], dtype=np.float64)
        order = [r["condition"].split(":", 1)[1] for r in sorted(rs, key=lambda r: sign * r["value"])]
        out.append({"measure": m.name, "family": family(m.name), "spearman_vs_true_quality": correlation("spearman", x, y),
                    "order_best_first": " > ".join(order)})
    return out


def _detection(rows: list[dict[str, Any]], perts: tuple[str, ...], names: list[str]) -> dict[str, Any]:
    """Detection counts of ``names`` (and Dice) under the perturbations ``perts``, overall and at the strongest level."""
    sel = [r for r in rows if r["perturbation"] in perts]
    if not sel:
        return {}
    strongest = {p: max(r["level"] for r in sel if r["perturbation"] == p) if p != "poisson" else
                 min(r["level"] for r in sel if r["perturbation"] == p) for p in {r["perturbation"] for r in sel}}
    top = [r for r in sel if r["level"] == strongest[r["perturbation"]]]
    per = {}
    for name in names + ["dice"]:
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


def findings(res: StudyResult) -> dict[str, Any]:
    """The four questions of the brief (global noise, localised edits, duplication, ranking), answered from the numbers."""
    nr_dist = [m["name"] for m in res.measures if m["family"] in NR_FAMILIES]
    out: dict[str, Any] = {
        "global_noise": _detection(res.rows, ("gaussian", "rician", "poisson"), nr_dist),
        "localised_edits": _detection(res.rows, ("boundary_blur", "gradient"), nr_dist),
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
