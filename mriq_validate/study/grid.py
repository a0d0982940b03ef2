"""The study's grid: which measures (rows) and which conditions (columns) it runs, and the stand-ins' true quality."""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any

from ..metrics import Metric, create_metric, metric_names
from ..models import BUILTIN_MODELS
from ..perturb import get
from ..perturb.sweeps import DEFAULT_SWEEPS

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


def family(measure: str) -> str:
    """The measure's family in the study's tables (``other`` when not listed in :data:`FAMILIES`)."""
    return FAMILIES.get(measure, "other")


def main_region(data: Any) -> str:
    """The data's main region: ``whole_tumour``/``vessel`` when present, else the region (or label) with most labels."""
    for name in ("whole_tumour", "vessel"):
        if name in data.regions or name in data.labels:
            return name
    if data.regions:
        return max(data.regions, key=lambda r: len(data.regions[r]))
    return next(iter(data.labels))


def copy_alpha(n_test: int) -> float:
    """The conformal copy test's alpha for ``n_test`` held-out items: 0.01, or the smallest hundredth the test allows
    when there are fewer than 99 (it needs alpha·(n_test + 1) ≥ 1; e.g. 0.05 for 19 test volumes)."""
    return max(0.01, math.ceil(100 / (n_test + 1)) / 100)


def select_measures(cfg: StudyConfig, region: str, n_test: int) -> tuple[list[Metric], list[dict[str, str]]]:
    """The measures of the grid (registry instances, Dice first) and the ones left out with the reason; ``n_test``
    held-out real items set the copy test's alpha (:func:`copy_alpha`)."""
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
        if n == "copy_fraction":
            params["alpha"] = copy_alpha(n_test)
        if n in ("dice", "hd95"):
            params["min_real_dice"] = 0.0  # the study reports Dice whatever it is; the suite's competence gate is separate
        out.append(create_metric(n, params))
    out.sort(key=lambda m: (m.name != "dice", m.name))
    return out, skipped


def conditions(cfg: StudyConfig, data: Any) -> tuple[list[Condition], list[dict[str, str]]]:
    """The grid's columns (every perturbation at its :data:`DEFAULT_SWEEPS` levels, then the stand-ins) and the
    perturbations left out with the reason."""
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
