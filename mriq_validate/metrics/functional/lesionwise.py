"""Lesion-wise Dice and HD95 of the BraTS 2023 challenges, per image (2D slices or 3D volumes).

What the official code does
---------------------------
The reference is the BraTS 2023 evaluation, https://github.com/rachitsaluja/BraTS-2023-Metrics, ``metrics.py``
(``get_LesionWiseScores``, ``get_LesionWiseResults``; ``eval.py`` before its rename, unchanged since commit 0e272e6 of
2023-08-16), which the challenges' evaluation workflow https://github.com/Sage-Bionetworks-Challenges/brats2023 pins
as a git submodule at commit 43c9052 (``evaluation/lesionwise/BraTS-2023-Metrics``). For one case and one region
(WT = labels 1, 2, 3; TC = 1, 3; ET = 3) it:

1. labels the ground truth's (GT) and the prediction's connected components with ``cc3d.connected_components(...,
   connectivity=26)``;
2. dilates the whole GT mask with ``scipy.ndimage.binary_dilation(structure=generate_binary_structure(3, 2),
   iterations=dilation)`` (the 18-neighbourhood, ``dilation`` times) and labels the dilated mask's 26-connected
   components; every GT voxel takes the label of the dilated component it lies in
   (``get_GTseg_combinedByDilation``). GT components closer than about twice the dilation thus become one lesion;
3. for each such GT lesion, dilates it again the same way; every predicted component that has a voxel inside that
   zone is matched to the lesion. The lesion's prediction is the union of ALL matched components, whole (also their
   parts outside the zone). Per-lesion Dice = 2|P ∩ L| / (|P| + |L|); per-lesion HD95 = DeepMind surface-distance
   ``compute_robust_hausdorff(compute_surface_distances(L, P, spacing), 95)`` (see
   :func:`~.downstream.surface_hd95`: surface elements on the voxel-corner grid, each direction's 95th percentile
   weighted by surface area, no interpolation, the larger of the two directions), infinite when nothing matched;
4. a predicted component matched to no GT lesion is a false positive (FP);
5. lesion volume = voxel count × the NIfTI header's voxel volume (mm³). Lesions with volume ``<= volume_threshold``
   are dropped from the score (neither counted nor scored);
6. per case: infinite HD95 → 374 mm; ``Dice = Σ_kept lesion Dice / (n_kept + n_FP)``;
   ``HD95 = (Σ_kept lesion HD95 + 374 · n_FP) / (n_kept + n_FP)``. So a missed lesion scores Dice 0 and HD95 374 mm,
   and so does each false-positive component. With no kept lesion and no FP (0/0: both empty, or only ignored small
   lesions) the code's ``except``/``isnan`` branch scores Dice 1 and HD95 0; an empty GT with k predicted components
   scores 0 and 374.

The parameters per challenge (``get_LesionWiseResults``), in :data:`BRATS2023_CHALLENGES`: GLI, SSA, PED dilation 3,
threshold 50; MEN dilation 1, threshold 50; MET dilation 1, threshold 2 (the README's table calls the threshold voxels;
the code compares mm³, the same at BraTS's 1 mm isotropic voxels).

Quirks of the official code, kept here because they change the number:

* The matching is not one-to-one. A predicted component that reaches two lesions' zones counts for both, with its
  whole volume in each lesion's Dice and HD95.
* A predicted component that reaches only an ignored (small) lesion is neither scored nor a false positive.
* The volume threshold applies to the merged lesion of step 2, with ``<=`` (a lesion of exactly the threshold is
  ignored); the dilation counts voxels whatever the spacing.
* 374 mm is about the diagonal of a BraTS volume (240 × 240 × 155 at 1 mm: 373.1 mm); it is used whatever the image size.
* The 2023 code runs as written only on the versions of its requirements.txt (NumPy 1.24, pandas 1.3): it calls
  ``DataFrame.append`` (removed in pandas 2), ``np.Inf`` (removed in NumPy 2), and ``DataFrame.replace(np.inf, 374)``
  on a table with a column of arrays, which NumPy 2 rejects once a lesion is missed and pandas 1.5 once a lesion
  matches two components (``benchmarks/lesionwise_reference.py`` supplies these to run it on newer versions).

Later BraTS evaluations differ, and their numbers are not comparable with these:

* BraTS 2024 (https://github.com/rachitsaluja/BraTS-2024-Metrics, ``metrics_GLI.py`` etc. at commit 9a0ab9c, which the
  same workflow pins) also merges the PREDICTION's components by dilation, deletes predicted components of
  ``<= threshold`` voxels before matching, links lesion labels across NETC/SNFH/ET/RC when they touch, uses dilation
  3 or 5 and thresholds 10 (ET) or 20 voxels for GLI, and for GLI scores an infinite HD95 as 337 mm, not 374.
* BraTS 2025 on (https://github.com/BraTS/BraTS_evaluation, ``brats-evaluation`` on PyPI, AGPL, built on
  https://github.com/BrainLesion/panoptica) has no dilation: connected components (26 in 3D; SciPy's default, 4, in
  2D), one-to-one ``MaxBipartiteMatching`` on Dice (threshold 1e-6), lesion-wise Dice = mean Dice over matched pairs only
  (panoptica ``sq_dsc``; misses and false positives enter the separate detection F1, ``rq``), HD95 = the pooled
  percentile of ``hd95_per_image(definition="brats")``, infinite → 373 mm.

2D slices
---------
For N×1×H×W slices the same steps run in the slice plane: components with the 8-neighbourhood, dilation with the
3×3 square (``generate_binary_structure(2, 2)``). These are the in-plane sections of the 3D structures (26- and
18-neighbourhood), so a one-slice 3D volume and its 2D slice have the same lesions, matches and Dice (not the same
HD95: in 3D the slab's top and bottom faces are surface too). HD95 uses contour lengths instead of areas (DeepMind's 2D
surface-distance). The volume threshold is then an area in mm² (pixel count × pixel area); the challenges' numbers were
chosen for volumes, so on slices they are an analogue, not the challenges' rule. Distances and the 374 mm penalty are
in mm as in 3D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ...errors import MetricError
from .downstream import BRATS_EMPTY_HD95_MM, surface_hd95

__all__ = ["BRATS2023_CHALLENGES", "LesionwiseCase", "LesionwiseParameters", "lesionwise_case", "lesionwise_dice_hd95"]


@dataclass(frozen=True)
class LesionwiseParameters:
    """A challenge's lesion-wise settings: dilation iterations (voxels) and the volume (mm³) at or below which a GT
    lesion is ignored."""

    dilation: int
    volume_threshold: float


#: BraTS 2023 settings per challenge (BraTS-2023-Metrics ``metrics.py``, ``get_LesionWiseResults``).
BRATS2023_CHALLENGES: dict[str, LesionwiseParameters] = {
    "BraTS-GLI": LesionwiseParameters(dilation=3, volume_threshold=50.0),
    "BraTS-SSA": LesionwiseParameters(dilation=3, volume_threshold=50.0),
    "BraTS-MEN": LesionwiseParameters(dilation=1, volume_threshold=50.0),
    "BraTS-PED": LesionwiseParameters(dilation=3, volume_threshold=50.0),
    "BraTS-MET": LesionwiseParameters(dilation=1, volume_threshold=2.0),
}


@dataclass(frozen=True)
class LesionwiseCase:
    """The lesion-wise evaluation of one image: one entry per GT lesion (after merging by dilation), in label order.

    ``volume`` is in mm³ (mm² on 2D slices); ``hd95`` holds :data:`~.downstream.BRATS_EMPTY_HD95_MM` for a missed
    lesion. ``score_dice`` and ``score_hd95`` are the BraTS 2023 per-case scores over the lesions larger than
    ``volume_threshold`` and the false positives.
    """

    volume: np.ndarray
    dice: np.ndarray
    hd95: np.ndarray
    detected: np.ndarray
    false_positives: int
    volume_threshold: float

    @property
    def kept(self) -> np.ndarray:
        """Which lesions count (volume above the threshold)."""
        return self.volume > self.volume_threshold

    @property
    def true_positives(self) -> int:
        """Counted lesions with at least one matched predicted component."""
        return int((self.kept & self.detected).sum())

    @property
    def false_negatives(self) -> int:
        """Counted lesions with no matched predicted component."""
        return int((self.kept & ~self.detected).sum())

    @property
    def score_dice(self) -> float:
        """Σ Dice of the counted lesions / (counted lesions + false positives); 1 when both counts are 0."""
        n = int(self.kept.sum()) + self.false_positives
        return float(self.dice[self.kept].sum() / n) if n else 1.0

    @property
    def score_hd95(self) -> float:
        """(Σ HD95 of the counted lesions + 374 mm per false positive) / (counted lesions + false positives); 0 when both
        counts are 0."""
        n = int(self.kept.sum()) + self.false_positives
        return float((self.hd95[self.kept].sum() + BRATS_EMPTY_HD95_MM * self.false_positives) / n) if n else 0.0


def _as_bool_array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.bool().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x).astype(bool)


def _check_settings(where: str, ndim: int, spacing_mm: tuple[float, ...], dilation: int, volume_threshold: float,
                    connectivity: int | None) -> tuple[tuple[float, ...], int]:
    """The spacing as floats and the connectivity rank, checked; MetricError naming the bad value otherwise."""
    if len(spacing_mm) != ndim or not all(isinstance(v, (int, float, np.integer, np.floating)) and v > 0 for v in spacing_mm):
        raise MetricError(f"{where}: spacing {tuple(spacing_mm)} mm; expected {ndim} positive numbers, one per spatial dimension")
    if isinstance(dilation, bool) or not isinstance(dilation, (int, np.integer)) or dilation < 0:
        raise MetricError(f"{where}: dilation must be an integer >= 0 (voxels), got {dilation!r}")
    if isinstance(volume_threshold, bool) or not isinstance(volume_threshold, (int, float, np.integer, np.floating)) \
            or not volume_threshold >= 0 or math.isinf(volume_threshold):
        raise MetricError(f"{where}: volume_threshold must be a finite number >= 0 (mm³, mm² on 2D slices), got {volume_threshold!r}")
    rank = ndim if connectivity is None else connectivity
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= ndim:
        raise MetricError(f"{where}: connectivity must be an integer in [1, {ndim}] (scipy.ndimage.generate_binary_structure rank; "
                          f"{ndim} = {'26' if ndim == 3 else '8'}-neighbourhood), got {connectivity!r}")
    return tuple(float(v) for v in spacing_mm), int(rank)


def lesionwise_case(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, spacing_mm: tuple[float, ...], *,
                    dilation: int = 3, volume_threshold: float = 50.0, connectivity: int | None = None) -> LesionwiseCase:
    """BraTS 2023 lesion-wise evaluation of one image (H×W or D×H×W boolean masks), lesion by lesion.

    Steps as in the module docstring: components of prediction and of the GT dilated ``dilation`` times (the GT's
    voxels grouped by the dilated component they lie in form the lesions), every predicted component reaching a
    lesion's dilated zone matched to it, Dice and surface HD95 (:func:`~.downstream.surface_hd95`) of the lesion and
    the union of its matched components.

    Args:
        pred: predicted mask of one region, H×W or D×H×W, boolean or 0/1.
        target: reference mask of the same shape.
        spacing_mm: pixel (voxel) spacing in mm, one entry per dimension.
        dilation: dilation iterations in voxels (BraTS 2023: 3 for GLI, SSA, PED; 1 for MEN, MET); 0 = no dilation.
        volume_threshold: lesions of at most this volume (mm³; mm² for 2D) are ignored (BraTS 2023: 50; 2 for MET).
        connectivity: rank of the neighbourhood for connected components (``generate_binary_structure``); None = full
            (26 in 3D, 8 in 2D, as BraTS). The dilation uses rank min(2, connectivity): BraTS's 18-neighbourhood in 3D.

    Returns:
        The :class:`LesionwiseCase`.

    Raises:
        MetricError: shapes that differ or are not 2D/3D, or a bad spacing, dilation, threshold or connectivity.

    Example:
        >>> import numpy as np
        >>> t = np.zeros((32, 32), bool)
        >>> t[4:10, 4:10] = t[20:28, 20:28] = True   # two lesions, 36 and 64 px
        >>> p = np.zeros_like(t)
        >>> p[4:10, 4:10] = p[14, 2:5] = True        # the first found exactly, a 3 px false positive far from both
        >>> case = lesionwise_case(p, t, (1.0, 1.0), volume_threshold=10)
        >>> case.dice.tolist(), case.false_positives, round(case.score_dice, 4)
        ([1.0, 0.0], 1, 0.3333)
    """
    p, t = _as_bool_array(pred), _as_bool_array(target)
    if p.shape != t.shape or p.ndim not in (2, 3):
        raise MetricError(f"lesionwise: prediction {p.shape} and target {t.shape} must be one H×W or D×H×W shape")
    spacing, rank = _check_settings("lesionwise", p.ndim, spacing_mm, dilation, volume_threshold, connectivity)
    components = ndimage.generate_binary_structure(p.ndim, rank)
    pred_cc, n_pred = ndimage.label(p, structure=components)
    zone = ndimage.binary_dilation(t, structure=ndimage.generate_binary_structure(p.ndim, min(2, rank)), iterations=dilation) \
        if dilation > 0 and t.any() else t
    # A lesion's dilated zone is its dilated component: dilation distributes over the union of the components a zone joins.
    zone_cc, n_gt = ndimage.label(zone, structure=components)
    lesions = np.where(t, zone_cc, 0)
    touching = (zone_cc > 0) & (pred_cc > 0)
    pairs = np.unique(np.stack([zone_cc[touching], pred_cc[touching]]), axis=1)  # (lesion, predicted component) pairs
    volume = np.bincount(lesions.ravel(), minlength=n_gt + 1)[1:] * float(np.prod(spacing))
    dice, hd95, detected = np.zeros(n_gt), np.full(n_gt, BRATS_EMPTY_HD95_MM), np.zeros(n_gt, bool)
    for k in range(n_gt):
        matched = pairs[1][pairs[0] == k + 1]
        if matched.size == 0:
            continue
        lesion, found = lesions == k + 1, np.isin(pred_cc, matched)
        dice[k] = 2.0 * np.count_nonzero(lesion & found) / (np.count_nonzero(lesion) + np.count_nonzero(found))
        hd95[k], detected[k] = surface_hd95(found, lesion, spacing), True
    false_positives = n_pred - int(np.unique(pairs[1]).size)
    return LesionwiseCase(volume, dice, hd95, detected, false_positives, float(volume_threshold))


def lesionwise_dice_hd95(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, spacing_mm: tuple[float, ...], *,
                         dilation: int = 3, volume_threshold: float = 50.0,
                         connectivity: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BraTS 2023 lesion-wise Dice and HD95 (mm) per image of N×1×H×W (or N×1×D×H×W) boolean masks.

    Per image, :func:`lesionwise_case`'s ``score_dice`` and ``score_hd95``: the sum over GT lesions larger than
    ``volume_threshold`` of their Dice (HD95), a missed lesion scoring 0 (374 mm), plus 0 (374 mm) per false-positive
    component, divided by the number of those lesions plus false positives; 1 (0 mm) when both numbers are 0.

    Args:
        pred: predicted masks, N×1×H×W (or N×1×D×H×W), boolean or 0/1.
        target: reference masks of the same shape.
        spacing_mm: pixel (voxel) spacing in mm, one entry per spatial dimension.
        dilation: dilation iterations in voxels for merging and matching (BraTS 2023 GLI: 3).
        volume_threshold: GT lesions of at most this many mm³ (mm² on 2D slices) are ignored (BraTS 2023 GLI: 50).
        connectivity: neighbourhood rank for connected components; None = full (26 in 3D, 8 in 2D).

    Returns:
        ``(dice, hd95)``: two arrays of N values (float64), Dice in [0, 1] and HD95 in mm (≥ 0).

    Raises:
        MetricError: shapes that differ or are not N×1×(D×)H×W, or a bad spacing, dilation, threshold or connectivity.

    Example:
        >>> import torch
        >>> t = torch.zeros(3, 1, 32, 32, dtype=torch.bool)
        >>> t[:2, :, 4:12, 4:12] = True          # one 8×8 lesion in the first two slices, the third empty
        >>> p = t.clone()
        >>> p[1, :, 24:28, 24:28] = True         # a false-positive blob in the second slice
        >>> dice, hd95 = lesionwise_dice_hd95(p, t, (1.0, 1.0))
        >>> dice.tolist(), hd95.tolist()
        ([1.0, 0.5, 1.0], [0.0, 187.0, 0.0])
    """
    p, t = _as_bool_array(pred), _as_bool_array(target)
    if p.shape != t.shape or p.ndim not in (4, 5) or p.shape[1] != 1:
        raise MetricError(f"lesionwise: prediction {p.shape} and target {t.shape} must be equal N×1×(D×)H×W")
    cases = [lesionwise_case(a[0], b[0], spacing_mm, dilation=dilation, volume_threshold=volume_threshold, connectivity=connectivity)
             for a, b in zip(p, t)]
    return np.array([c.score_dice for c in cases], dtype=np.float64), np.array([c.score_hd95 for c in cases], dtype=np.float64)
