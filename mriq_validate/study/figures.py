"""The study's figures: z-score heatmap, dose-response per perturbation family, correlation with Dice."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..figures import new_figure
from .result import DETECT_K, StudyResult


def _z_matrix(res: StudyResult) -> tuple[list[str], list[str], np.ndarray]:
    ms = [m["name"] for m in res.measures]
    cs = [c.id for c in res.conditions]
    z = np.full((len(ms), len(cs)), np.nan)
    for r in res.rows:
        z[ms.index(r["measure"]), cs.index(r["condition"])] = r["z"]
    return ms, cs, z


def heatmap_figure(res: StudyResult) -> Any:
    """z-scores (towards worse) of every measure under every condition, clipped to ±20."""
    ms, cs, z = _z_matrix(res)
    fig = new_figure(max(6.0, 0.17 * len(cs) + 2), max(2.5, 0.28 * len(ms) + 1.5))
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
    fams = [f for f in dict.fromkeys(c.family for c in res.conditions if c.kind == "perturbation")]
    if not fams:
        return None
    ncol = 4
    nrow = math.ceil(len(fams) / ncol)
    fig = new_figure(3.0 * ncol, 2.3 * nrow + 0.6)
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
    if not res.correlation:
        return None
    rs = sorted(res.correlation, key=lambda r: r["spearman"] if math.isfinite(r["spearman"]) else 2)
    fig = new_figure(6.5, 0.3 * len(rs) + 1.2)
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
