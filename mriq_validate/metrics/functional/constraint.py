"""Anatomical constraints: does each tumour sub-region have the signal its contrast must give it (the maths of
``constraint_violation``)?

The BraTS annotation protocol defines the tumour sub-regions by how they look on each contrast (Menze et al. 2015,
IEEE TMI 34(10):1993-2024; Bakas et al. 2017, Sci Data 4:170117; Bakas et al. 2018, arXiv:1811.02629), and textbook MRI
contrast says how fluid and oedema look (Bitar et al. 2006, RadioGraphics 26(2):513-537). :data:`RULES` writes those
statements as data: on contrast C, region A is darker (brighter) than region B by at least a margin. A generator that
draws a tumour whose sub-regions have the wrong signal on one contrast (necrosis and enhancing rim swapped on T1, a
lesion missing from one contrast) breaks them, though a segmenter that reads all four contrasts still finds the tumour.

Per image and contrast, with robust statistics (medians):

* the regions are the label masks (label names of the data) and ``normal_brain``: the brain around the lesion, the
  pixels within ``ring_mm`` mm of the lesion (every label > 0) and outside it, inside the image's own brain mask
  (:func:`.intensity.brain_mask`; the whole ring where fewer than ``min_pixels`` of it lie inside);
* a rule applies when both its regions and the ring hold at least ``min_pixels`` pixels (voxels), which the masks
  alone decide, so real and generated images with the same masks are judged on the same rules;
* its excess is ``±(median(A) − median(B)) / median(normal_brain)`` (+ for brighter, − for darker): the contrast
  between the regions as a share of the surrounding brain's signal; the rule is violated when the excess is not
  above the rule's margin. A lesion filled with normal tissue has an excess near 0 against normal brain.

Everything is n-dimensional: slices and volumes alike, distances in mm at the given spacing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from ...errors import MetricError
from .intensity import brain_mask

__all__ = ["MARGIN", "MIN_PIXELS", "NORMAL_BRAIN", "RELATIONS", "RING_MM", "RULES", "Rule", "RuleChecks", "constraint_violations",
           "rules_for"]

NORMAL_BRAIN = "normal_brain"
#: The sign of each relation: brighter means median(A) − median(B) must be positive, darker negative.
RELATIONS: dict[str, float] = {"brighter": 1.0, "darker": -1.0}
#: The smallest contrast a rule demands, as a share of the surrounding normal brain's median signal: a difference of
#: medians over at least MIN_PIXELS pixels, several times the 1-2 % luminance difference an observer sees between large
#: uniform areas, so a rule that holds holds visibly; one margin for every rule, not fitted to any data (the smallest
#: real contrast on the embedded data is 0.084, T1 oedema against normal brain; a lesion in-painted away scores near 0).
MARGIN = 0.05
#: The fewest pixels (voxels) each region of a rule, and the normal-brain ring, must hold for the rule to apply.
MIN_PIXELS = 20
#: The width of the normal-brain ring around the lesion, in mm (5 px at 1.5 mm, 7-8 px at BraTS' 1 mm).
RING_MM = 7.5

_BRATS = ("BraTS annotation protocol (Menze et al. 2015, IEEE TMI 34(10):1993-2024; Bakas et al. 2017, Sci Data 4:170117; "
          "Bakas et al. 2018, arXiv:1811.02629)")
_BITAR = "Bitar et al. 2006, RadioGraphics 26(2):513-537 (fluid and vasogenic oedema: long T1 and T2)"


@dataclass(frozen=True)
class Rule:
    """On ``contrast``, ``region`` is ``relation`` (darker or brighter) than ``than`` by at least ``margin`` of the
    normal brain's median signal; ``source`` says who says so."""

    contrast: str
    region: str
    relation: Literal["darker", "brighter"]
    than: str
    margin: float
    source: str

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS or not 0 <= self.margin < 1 or self.region == self.than:
            raise MetricError(f"rule {self}: expected a relation in {sorted(RELATIONS)}, a margin in [0, 1) and two different regions")

    @property
    def id(self) -> str:
        """``t1: necrotic_core darker than enhancing``."""
        return f"{self.contrast}: {self.region} {self.relation} than {self.than}"

    def as_dict(self) -> dict[str, Any]:
        """The rule for a report (its id first)."""
        return {"id": self.id, **asdict(self)}


#: The rules, per contrast (canonical contrast and label names, :mod:`mriq_validate.data.contrasts` and
#: :mod:`mriq_validate.data.label_meanings`).
RULES: tuple[Rule, ...] = (
    Rule("t1", "necrotic_core", "darker", "enhancing", MARGIN, f"{_BITAR}: fluid-like necrosis is darker on T1 than solid enhancing tumour"),
    Rule("t1", "necrotic_core", "darker", NORMAL_BRAIN, MARGIN, f"{_BITAR}: fluid-like necrosis is hypointense on T1"),
    Rule("t1", "oedema", "darker", NORMAL_BRAIN, MARGIN, f"{_BITAR}: vasogenic oedema is hypointense on T1"),
    Rule("t1c", "enhancing", "brighter", "necrotic_core", MARGIN,
         f"{_BRATS}: the enhancing rim is hyperintense on T1c, the necrotic core the low-intensity structure within it"),
    Rule("t1c", "enhancing", "brighter", "oedema", MARGIN,
         f"{_BRATS}: enhancing tumour is hyperintense on T1c; oedema is non-enhancing FLAIR hyperintensity"),
    Rule("t1c", "necrotic_core", "darker", NORMAL_BRAIN, MARGIN, f"{_BRATS}: the necrotic core is hypointense on T1c"),
    Rule("t2", "oedema", "brighter", NORMAL_BRAIN, MARGIN, f"{_BRATS}: oedema is hyperintense on T2; {_BITAR}"),
    Rule("t2", "necrotic_core", "brighter", "enhancing", MARGIN, f"{_BITAR}: fluid-like necrosis is brighter on T2 than solid enhancing tumour"),
    Rule("flair", "oedema", "brighter", NORMAL_BRAIN, MARGIN, f"{_BRATS}: oedema is the hyperintense envelope on FLAIR"),
)


def rules_for(contrast: str, rules: tuple[Rule, ...] = RULES) -> tuple[Rule, ...]:
    """The rules of ``contrast`` (canonical name), in registry order."""
    return tuple(r for r in rules if r.contrast == contrast)


@dataclass(frozen=True)
class RuleChecks:
    """The rules of one contrast checked on N images: per image and rule the excess (NaN where the rule does not
    apply), whether it applies and whether it is violated."""

    rules: tuple[Rule, ...]
    excess: np.ndarray  # N×R float64
    applicable: np.ndarray  # N×R bool
    violated: np.ndarray  # N×R bool

    @property
    def violates(self) -> np.ndarray:
        """Per image, 1.0 when it violates any applicable rule, else 0.0 (also when none applies)."""
        return self.violated.any(1).astype(np.float64)

    @property
    def n_applicable(self) -> np.ndarray:
        """Per image, how many rules apply to it."""
        return self.applicable.sum(1).astype(np.float64)

    @property
    def scores(self) -> np.ndarray:
        """Per image, :attr:`violates`, or NaN where no rule applies (the image was not checked)."""
        return np.where(self.applicable.any(1), self.violates, np.nan)

    def share(self) -> float:
        """The share of violating images among those with at least one applicable rule; NaN when none has one."""
        counted = self.applicable.any(1)
        return float(self.violates[counted].mean()) if counted.any() else float("nan")

    def per_rule(self) -> dict[str, dict[str, float]]:
        """Per rule id: the images it applies to, those that violate it and the rate (NaN when it applies to none)."""
        out = {}
        for k, rule in enumerate(self.rules):
            n, v = int(self.applicable[:, k].sum()), int(self.violated[:, k].sum())
            out[rule.id] = {"applicable": n, "violated": v, "rate": v / n if n else float("nan")}
        return out


def _regions(mask: np.ndarray, image: np.ndarray, labels: dict[str, int], spacing: tuple[float, ...], ring_mm: float,
             min_pixels: int) -> dict[str, np.ndarray]:
    """The boolean region of each label name and of ``normal_brain`` in one image (see the module)."""
    from scipy import ndimage

    out = {name: mask == value for name, value in labels.items()}
    lesion = mask > 0
    if not lesion.any():
        out[NORMAL_BRAIN] = np.zeros(mask.shape, bool)
        return out
    ring = (ndimage.distance_transform_edt(~lesion, sampling=spacing) <= ring_mm) & ~lesion
    inside = ring & brain_mask(image)
    out[NORMAL_BRAIN] = inside if inside.sum() >= min_pixels else ring
    return out


def _check_one(image: np.ndarray, mask: np.ndarray, rules: tuple[Rule, ...], labels: dict[str, int], spacing: tuple[float, ...],
               ring_mm: float, min_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(excess, applicable) of ``rules`` on one image."""
    regions = _regions(mask, image, labels, spacing, ring_mm, min_pixels)
    enough = {name: int(r.sum()) >= min_pixels for name, r in regions.items()}
    excess = np.full(len(rules), np.nan)
    applicable = np.zeros(len(rules), bool)
    if not enough[NORMAL_BRAIN]:
        return excess, applicable
    medians: dict[str, float] = {}

    def median(name: str) -> float:
        if name not in medians:
            medians[name] = float(np.median(image[regions[name]]))
        return medians[name]

    normal = max(median(NORMAL_BRAIN), 1e-12)  # a black surrounding: no contrast can be shown against it
    for k, rule in enumerate(rules):
        if enough.get(rule.region) and enough.get(rule.than):
            applicable[k] = True
            excess[k] = RELATIONS[rule.relation] * (median(rule.region) - median(rule.than)) / normal
    return excess, applicable


def constraint_violations(images: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor, contrast: str,
                          labels: dict[str, int], *, spacing: tuple[float, ...] | None = None, rules: tuple[Rule, ...] = RULES,
                          ring_mm: float = RING_MM, min_pixels: int = MIN_PIXELS) -> RuleChecks:
    """Check the rules of ``contrast`` on each image: which apply, their excess, which are violated (see the module).

    Args:
        images: N×1×H×W slices or N×1×D×H×W volumes of one contrast (or N×H×W), intensities in [0, 1].
        masks: the label masks, N×1×... or N×..., the same spatial shape.
        contrast: the images' contrast (canonical name: t1, t1c, t2, flair); a contrast without rules checks none.
        labels: label name → mask value (e.g. ``{"necrotic_core": 1, "oedema": 2, "enhancing": 3}``); a rule naming a
            label the data lack does not apply.
        spacing: pixel (voxel) size in mm per spatial axis; 1 mm when None.
        rules: the rule registry (default :data:`RULES`).
        ring_mm: the width of the normal-brain ring around the lesion, mm.
        min_pixels: the fewest pixels (voxels) each region of a rule and the ring need for it to apply.

    Returns:
        A :class:`RuleChecks` over the rules of ``contrast``.

    Raises:
        MetricError: shapes that do not match, NaN/inf images, a spacing of the wrong length, bad ``ring_mm`` or
        ``min_pixels``.

    Example:
        >>> import numpy as np
        >>> yy, xx = np.mgrid[:48, :48]
        >>> brain = ((yy - 24) ** 2 + (xx - 24) ** 2 <= 22**2)
        >>> mask = np.zeros((48, 48), int)
        >>> mask[((yy - 24) ** 2 + (xx - 24) ** 2) <= 8**2] = 2  # oedema
        >>> mask[((yy - 24) ** 2 + (xx - 24) ** 2) <= 3**2] = 1  # necrotic core
        >>> t2 = np.where(brain, 0.5, 0.0) + 0.3 * (mask == 2) + 0.45 * (mask == 1)  # oedema bright on T2
        >>> erased = np.where(brain, 0.5, 0.0)  # the lesion filled with normal tissue
        >>> labels = {"necrotic_core": 1, "oedema": 2, "enhancing": 3}
        >>> checks = constraint_violations(np.stack([t2, erased])[:, None], np.stack([mask, mask])[:, None], "t2", labels)
        >>> [r.id for r in checks.rules]
        ['t2: oedema brighter than normal_brain', 't2: necrotic_core brighter than enhancing']
        >>> checks.excess.round(2).tolist()  # the second rule does not apply: there is no enhancing rim
        [[0.6, nan], [0.0, nan]]
        >>> checks.scores.tolist(), checks.share()
        ([0.0, 1.0], 0.5)
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    x, m = np.asarray(images, dtype=np.float64), np.asarray(masks)
    if x.ndim >= 4 and x.shape[1] == 1:
        x = x[:, 0]
    if m.ndim >= 4 and m.shape[1] == 1:
        m = m[:, 0]
    if x.ndim not in (3, 4) or x.shape != m.shape:
        raise MetricError(f"images {tuple(np.shape(images))} and masks {tuple(np.shape(masks))}: expected one contrast, "
                          f"N×1×H×W (N×1×D×H×W) images and masks of the same shape")
    if not np.all(np.isfinite(x)):
        raise MetricError("images: contain NaN or inf")
    spacing = (1.0,) * (x.ndim - 1) if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != x.ndim - 1 or not all(s > 0 for s in spacing):
        raise MetricError(f"spacing {spacing}: expected {x.ndim - 1} positive sizes in mm, one per spatial axis")
    if isinstance(ring_mm, bool) or not isinstance(ring_mm, (int, float)) or not 0 < ring_mm < np.inf:
        raise MetricError(f"ring_mm: expected a positive number of mm, got {ring_mm!r}")
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, (int, np.integer)) or min_pixels < 1:
        raise MetricError(f"min_pixels: expected an integer >= 1, got {min_pixels!r}")
    own = rules_for(contrast, rules)
    excess = np.full((len(x), len(own)), np.nan)
    applicable = np.zeros((len(x), len(own)), bool)
    if own:
        for i in range(len(x)):
            excess[i], applicable[i] = _check_one(x[i], m[i], own, labels, spacing, float(ring_mm), int(min_pixels))
    margins = np.array([r.margin for r in own])
    violated = applicable & ~(excess > margins)
    return RuleChecks(own, excess, applicable, violated)
