"""Anatomical constraints as a metric: the share of images whose tumour breaks a rule of its contrast (maths and the
rule registry in :mod:`.functional.constraint`)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..arrays import batches
from ..contract import MeasureContext
from ..errors import MetricError
from .base import PerImageMetric, Sample, batch_size, check_int, check_number, register_metric
from .functional import constraint as F


@register_metric
class ConstraintViolation(PerImageMetric):
    """The share of images that violate an anatomical rule of their contrast (see :mod:`.functional.constraint`).

    Per image (a slice or a volume) and contrast: 1 when it violates any rule of that contrast that applies to it, 0
    when it violates none, NaN when no rule applies (it was not checked: a lesion without a necrotic core and an enhancing
    rim of 20 pixels has no T1c rule). The set value is the share of violating images among the checked ones; the
    unchecked ones are counted (``n_missing`` of the report's per-item spread) but kept out of the denominator, which
    would otherwise dilute the rate with images that could not violate anything. Lower is better. Every resample takes
    its own denominator. A sample of several contrasts at once (the study) scores each image by the mean over the
    contrasts that checked it.
    """

    name = "constraint_violation"
    channels = "each"
    functional = staticmethod(F.constraint_violations)
    higher_is_better = False
    valid_range = (0.0, 1.0)
    needs = ("masks",)
    summary = ("share of images whose tumour sub-regions break a rule of their contrast (e.g. necrosis darker than the "
               "enhancing rim on T1, oedema brighter than normal brain on FLAIR; medians, margin 5 % of normal brain)")
    limitations: ClassVar[tuple[str, ...]] = (
        "It compares the median signal of the masked sub-regions and of the brain around the lesion: shape, texture, "
        "position and a lesion drawn outside its mask are not seen (the masks say where to look).",
        "A rule applies only where both its regions hold at least min_pixels (20) pixels: small lesions, thin rims and "
        "images without necrosis are not checked by the rules that need them (the necrosis rules apply to 45-50 % of "
        "the embedded slices); a median needs only half a region right, so a lesion erased on less than half its area passes.",
        "One margin (5 % of the surrounding brain's median) for every rule: subtle real contrasts, such as oedema on T1 "
        "(nearly iso-intense in some low-grade gliomas), may fall below it on real cohorts; the reference check reports "
        "the real violation share, and the gate compares generated with real images, not with zero.",
        "The rules are those of adult glioma sub-regions (necrotic core, oedema, enhancing) on T1, T1c, T2 and FLAIR; a "
        "contrast without rules (DWI, PD, ...) is an error, and the resection cavity and other tumour types have no rules.",
        "On per-image normalised intensities the top of the scale saturates (the 99th-percentile clip), which can hide a "
        "'brighter than' contrast; no rule asks the enhancing rim to be brighter than normal brain on T1c for that reason.",
    )

    def __init__(self, min_pixels: int = F.MIN_PIXELS, ring_mm: float = F.RING_MM) -> None:
        self.min_pixels = check_int(self.name, "min_pixels", min_pixels, 5)
        self.ring_mm = check_number(self.name, "ring_mm", ring_mm, lambda v: 0 < v <= 50, "of mm in (0, 50]")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "min_pixels": self.min_pixels, "ring_mm": self.ring_mm, "statistic": "median of each region",
                "normal_brain": f"pixels within {self.ring_mm:g} mm of the lesion (any label > 0), outside it, inside the image's own "
                                "brain mask (log-Otsu; the whole ring where under min_pixels of it lie inside)",
                "excess": "±(median(A) − median(B)) / median(normal_brain), + for brighter, − for darker; a rule is violated "
                          "when its excess is not above its margin",
                "applicable": "both regions and the normal-brain ring hold at least min_pixels pixels (voxels); the masks alone decide",
                "value": "share of images violating any applicable rule of the contrast, among the images with at least one "
                         "(the others score NaN: not checked)",
                "rules": [r.as_dict() for r in F.RULES]}

    def contrast_name(self, ctx: MeasureContext, sample: Sample) -> str:
        """The contrast ``sample`` holds (one channel); MetricError when the rules have none for it."""
        contrasts = tuple(ctx.data.contrasts)
        name = contrasts[sample.channel if sample.channel is not None else 0]
        if not F.rules_for(name):
            covered = sorted({r.contrast for r in F.RULES})
            raise MetricError(f"metric {self.name!r} has no rule for contrast {name!r} (its rules cover {covered}); give the "
                              f"suite's data block the contrasts it can check, e.g. `contrasts: {covered}`")
        return name

    def checks(self, ctx: MeasureContext, sample: Sample) -> F.RuleChecks:
        """The rules of ``sample``'s contrast checked on each of its images (one contrast)."""
        return F.constraint_violations(sample.images, sample.masks, self.contrast_name(ctx, sample), dict(ctx.data.labels),
                                       spacing=tuple(float(s) for s in ctx.data.spacing_mm), ring_mm=self.ring_mm,
                                       min_pixels=self.min_pixels)

    def scores(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        return self.checks(ctx, sample).scores

    def prepare(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        """Per image: 1.0 (violates a rule), 0.0 (violates none) or NaN (no rule applies); MetricError when no image of
        ``sample`` has a rule that applies."""
        self.check_sample(sample)
        if sample.channel is None and sample.images.shape[1] > 1:
            each = np.stack([self.prepare(ctx, sample.contrast(c, name)) for c, name in enumerate(ctx.data.contrasts)])
            checked = np.isfinite(each).sum(0)
            return np.where(checked > 0, np.nansum(each, 0) / np.maximum(checked, 1), np.nan)
        s = np.concatenate([self.scores(ctx, Sample(sample.images[sl], None if sample.masks is None else sample.masks[sl], sample.origin,
                                                    sample.channel)) for sl in batches(len(sample), batch_size(ctx, len(sample)))])
        if not np.isfinite(s).any():
            raise MetricError(f"metric {self.name!r}: no rule applies to any of the {len(sample)} {sample.origin} images (each "
                              f"rule needs at least {self.min_pixels} pixels in both its regions and in the normal-brain ring; "
                              f"the data's labels are {sorted(ctx.data.labels)})")
        return s

    def compute(self, prepared: np.ndarray, index: np.ndarray) -> float:
        v = prepared[index]
        checked = np.isfinite(v)
        return float(v[checked].mean()) if checked.any() else float("nan")
