"""Segmentation overlap and boundary distance on label maps: Dice and HD95, per image (MONAI).

The downstream metrics (:mod:`mriq_validate.metrics.downstream`, Deo et al. 2025, arXiv 2505.07175) compute these on
the masks of a region in a segmenter's prediction and in the reference; here they take any pair of mask stacks.
:func:`surface_hd95` is the surface-element HD95 of DeepMind's surface-distance library, which the BraTS 2023
evaluation uses (also per lesion, :mod:`.lesionwise`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import numpy as np
import torch

from ...errors import MetricError

__all__ = ["BRATS_EMPTY_HD95_MM", "HD95_DEFINITIONS", "dice_per_image", "hd95_per_image", "surface_hd95"]


def _check_masks(name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.ndim < 4 or pred.shape[1] != 1:
        raise MetricError(f"{name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} must be equal N×1×(D×)H×W")


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Binary Dice per image (MONAI ``compute_dice``) of boolean N×1×H×W (or N×1×D×H×W) masks.

    ``Dice = 2|P ∩ T| / (|P| + |T|)`` per image (Dice 1945). Empty-vs-empty counts as 1.0 (nothing to find, nothing
    found); empty target with a non-empty prediction as 0.

    Args:
        pred: predicted masks, N×1×H×W (or N×1×D×H×W), boolean or 0/1.
        target: reference masks of the same shape.

    Returns:
        N Dice values in [0, 1] (float64).

    Raises:
        MetricError: the shapes differ or are not N×1×(D×)H×W.

    Example:
        >>> import torch
        >>> t = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
        >>> t[:2, :, 2:6, 2:6] = True  # two 4×4 squares and an empty mask
        >>> p = t.clone()
        >>> p[1, :, 2:6, 2:4] = False  # half of the second square found
        >>> dice_per_image(p, t).round(4).tolist()
        [1.0, 0.6667, 1.0]
    """
    _check_masks("dice", pred, target)
    from monai.metrics import compute_dice

    d = compute_dice(pred.float(), target.float(), include_background=True, ignore_empty=False)
    return d[:, 0].cpu().numpy().astype(np.float64)


BRATS_EMPTY_HD95_MM = 374.0  # what BraTS's evaluation scores when one mask is empty (its stand-in for an infinite HD95)


def _hd95_monai(p: torch.Tensor, t: torch.Tensor, spacing_mm: tuple[float, ...]) -> np.ndarray:
    from monai.metrics import compute_hausdorff_distance

    hd = compute_hausdorff_distance(p.float(), t.float(), include_background=True, percentile=95, spacing=list(spacing_mm))
    return hd[:, 0].cpu().numpy()


def _hd95_pooled(p: torch.Tensor, t: torch.Tensor, spacing_mm: tuple[float, ...]) -> np.ndarray:
    from monai.metrics.utils import get_edge_surface_distance

    out = []
    for a, b in zip(p[:, 0], t[:, 0]):
        _, (pred_to_ref, ref_to_pred), _ = get_edge_surface_distance(a, b, spacing=list(spacing_mm), symmetric=True, warn_empty=False)
        out.append(float(torch.quantile(torch.cat([pred_to_ref, ref_to_pred]).double(), 0.95)))
    return np.array(out)


@functools.lru_cache(maxsize=32)
def _code_to_area(spacing_mm: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's table from a voxel-corner neighbourhood code to its surface area (mm²; contour length in mm in 2D) and
    the code's bit weights, ``monai.metrics.utils.get_code_to_measure_table``, adapted by MONAI from DeepMind's
    surface-distance (https://github.com/google-deepmind/surface-distance)."""
    from monai.metrics.utils import get_code_to_measure_table

    table, kernel = get_code_to_measure_table(list(spacing_mm))
    return np.asarray(table.cpu(), dtype=np.float64), np.asarray(kernel.cpu(), dtype=np.int64)[0, 0]


def _edges_and_areas(a: np.ndarray, b: np.ndarray, spacing_mm: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """Surface elements of two masks on the voxel-corner grid of their joint bounding box (the 2×2(×2) neighbourhoods
    neither all inside nor all outside), with their areas: what MONAI ``get_mask_edges(spacing=...)`` and DeepMind's
    ``compute_surface_distances`` compute (identical arrays), without MONAI's tensor transforms: 0.09 ms against 16 ms
    for a 128×128 slice pair through ``get_mask_edges``."""
    table, kernel = _code_to_area(spacing_mm)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(a | b))
    out = []
    for m in (a, b):
        padded = np.pad(m[box].astype(np.int64), 1)  # every corner of the box, zeros outside
        n = tuple(s - 1 for s in padded.shape)
        code = sum(int(w) * padded[tuple(slice(o, o + k) for o, k in zip(offset, n))] for offset, w in np.ndenumerate(kernel))
        out.append(code)
    edges = [(c != 0) & (c != len(table) - 1) for c in out]
    return edges[0], edges[1], table[out[0]], table[out[1]]


def _area_weighted_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """DeepMind surface-distance ``compute_robust_hausdorff`` for one direction: distances sorted (ties by area), the
    first whose cumulative share of the surface area reaches ``percent`` (no interpolation)."""
    order = np.lexsort((areas, distances))
    cumulative = np.cumsum(areas[order]) / np.sum(areas)
    i = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[order][min(i, len(order) - 1)])


def surface_hd95(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, spacing_mm: tuple[float, ...],
                 percent: float = 95.0) -> float:
    """Robust Hausdorff distance (mm) of two non-empty boolean masks of one image, 2D or 3D, as DeepMind's
    surface-distance ``compute_robust_hausdorff(compute_surface_distances(target, pred, spacing), 95)`` computes it,
    the HD95 of the BraTS 2023 evaluation (https://github.com/rachitsaluja/BraTS-2023-Metrics, ``metrics.py``).

    Surface elements lie on the voxel-corner grid (the 2×2(×2) neighbourhoods that are neither all inside nor all
    outside), each weighted by its area (contour length in 2D) at ``spacing_mm``; every element's distance is the
    Euclidean distance to the nearest surface element of the other mask. Each direction's ``percent`` percentile is
    area-weighted without interpolation; the result is the larger of the two directions.

    Args:
        pred: a boolean H×W or D×H×W mask with at least one voxel.
        target: a boolean mask of the same shape with at least one voxel.
        spacing_mm: voxel spacing in mm, one entry per dimension.
        percent: the percentile (95 for HD95).

    Returns:
        The distance in mm.

    Raises:
        MetricError: shapes or spacing that do not match, or an empty mask.

    Example:
        >>> import numpy as np
        >>> t = np.zeros((16, 16), bool)
        >>> t[4:8, 4:8] = True
        >>> surface_hd95(np.roll(t, 2, axis=1), t, (1.0, 1.0))  # 2 px to the right
        2.0
    """
    a, b = (m.bool().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m).astype(bool) for m in (pred, target))
    if a.shape != b.shape or a.ndim not in (2, 3) or len(spacing_mm) != a.ndim:
        raise MetricError(f"surface_hd95: masks {tuple(a.shape)} and {tuple(b.shape)} with spacing {tuple(spacing_mm)} mm; expected two "
                          f"masks of one 2D or 3D shape and one spacing per dimension")
    if not (a.any() and b.any()):
        raise MetricError("surface_hd95: a mask is empty; the distance to an empty surface is infinite (callers score it)")
    spacing = tuple(float(v) for v in spacing_mm)
    edges_a, edges_b, areas_a, areas_b = _edges_and_areas(a, b, spacing)
    from scipy.ndimage import distance_transform_edt

    a_to_b = distance_transform_edt(~edges_b, sampling=spacing)[edges_a]
    b_to_a = distance_transform_edt(~edges_a, sampling=spacing)[edges_b]
    return max(_area_weighted_percentile(a_to_b, areas_a[edges_a], percent), _area_weighted_percentile(b_to_a, areas_b[edges_b], percent))


def _hd95_surface(p: torch.Tensor, t: torch.Tensor, spacing_mm: tuple[float, ...]) -> np.ndarray:
    return np.array([surface_hd95(a, b, spacing_mm) for a, b in zip(p[:, 0], t[:, 0])])


#: The HD95 definitions (``hd95`` parameter ``definition``): how the two masks' boundary distances become one number, and
#: what one empty mask scores. ``monai`` and ``brats`` use the same boundary pixels (a mask minus its erosion, MONAI
#: ``get_mask_edges``), Euclidean distances at the pixel spacing, and the linearly interpolated 95th percentile;
#: ``brats2023`` uses surface elements on the voxel-corner grid weighted by area (:func:`surface_hd95`).
HD95_DEFINITIONS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor, tuple[float, ...]], np.ndarray], str]] = {
    "monai": (_hd95_monai, "MONAI compute_hausdorff_distance percentile=95 per slice, mm at the data's spacing: the larger of the "
                           "two one-way 95th percentiles of boundary distances; both empty = 0 mm, one empty = image diagonal (mm)"),
    "brats": (_hd95_pooled, "95th percentile of both directions' boundary distances pooled (medpy hd95, panoptica, used by the "
                            "BraTS 2025 evaluation) per slice, mm at the data's spacing; both empty = 0 mm, one empty = 374 mm "
                            "(BraTS 2023 evaluation's value for an infinite HD95)"),
    "brats2023": (_hd95_surface, "DeepMind surface-distance compute_robust_hausdorff(95) as the BraTS 2023 evaluation computes it, per "
                                 "slice, mm at the data's spacing: surface elements on the voxel-corner grid, each direction's 95th "
                                 "percentile weighted by surface area (no interpolation), the larger direction; both empty = 0 mm, "
                                 "one empty = 374 mm"),
}


def hd95_per_image(pred: torch.Tensor, target: torch.Tensor, spacing_mm: tuple[float, ...], definition: str = "monai") -> np.ndarray:
    """95th-percentile Hausdorff distance in mm per image of boolean N×1×H×W (or N×1×D×H×W) masks.

    Boundary pixels of each mask (the mask minus its erosion; ``brats2023``: surface elements, see below), Euclidean
    distances to the other mask's boundary with pixel ``spacing_mm``, 95th percentile with linear interpolation;
    ``definition`` (:data:`HD95_DEFINITIONS`) decides how the two directions combine and what an empty mask scores:

    * ``monai`` (default): what MONAI ``compute_hausdorff_distance`` / ``HausdorffDistanceMetric(percentile=95)``
      computes, the larger of the two one-way percentiles (prediction→reference, reference→prediction). Empty masks,
      which MONAI scores as NaN/inf, are decided here: both empty → 0 mm (nothing to find, nothing found); exactly one
      empty → the image diagonal in mm (the largest distance possible inside the image).
    * ``brats``: the percentile of both directions' distances pooled, as medpy's ``hd95`` and panoptica compute it (the
      BraTS 2025 evaluation uses panoptica). Both empty → 0 mm; exactly one empty → 374 mm, the value BraTS 2023's
      evaluation substitutes for an infinite HD95.
    * ``brats2023``: what BraTS 2023's evaluation computes (DeepMind surface-distance, :func:`surface_hd95`): the larger
      one-way percentile, like ``monai``, but of surface elements on the voxel-corner grid weighted by their area, without
      interpolation. Both empty → 0 mm; exactly one empty → 374 mm.

    ``monai`` and ``brats`` differ most when one direction has a tail the other lacks (a small far-away false positive):
    MONAI's takes that direction's percentile, pooling dilutes it with the other direction's distances.

    Args:
        pred: predicted masks, N×1×H×W (or N×1×D×H×W), boolean or 0/1.
        target: reference masks of the same shape.
        spacing_mm: pixel (voxel) spacing in mm, one entry per spatial dimension.
        definition: ``"monai"``, ``"brats"`` or ``"brats2023"`` (:data:`HD95_DEFINITIONS`).

    Returns:
        N distances in mm (float64, ≥ 0).

    Raises:
        MetricError: an unknown definition, shapes that differ, or a spacing of the wrong length.

    Example:
        >>> import torch
        >>> t = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
        >>> t[:, :, 8:16, 8:16] = True
        >>> p = t.clone()
        >>> p[1] = p[1].roll(4, dims=-1)  # the second prediction 4 px to the right
        >>> hd95_per_image(p, t, (1.0, 1.0)).tolist()  # mm at 1 mm pixels
        [0.0, 4.0]
    """
    if definition not in HD95_DEFINITIONS:
        raise MetricError(f"hd95: definition {definition!r} unknown; expected one of {sorted(HD95_DEFINITIONS)}")
    _check_masks("hd95", pred, target)
    dims = pred.ndim - 2
    if len(spacing_mm) != dims:
        raise MetricError(f"hd95: spacing {tuple(spacing_mm)} mm does not match the {dims} spatial dimensions of the masks")
    p, t = pred.bool().cpu(), target.bool().cpu()
    spacing = tuple(float(v) for v in spacing_mm)
    one_empty = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape[2:], spacing)))) if definition == "monai" else BRATS_EMPTY_HD95_MM
    has_p, has_t = p.flatten(1).any(1), t.flatten(1).any(1)
    out = np.where(has_p | has_t, one_empty, 0.0)
    both = (has_p & has_t).nonzero().flatten()
    if both.numel():
        with warnings.catch_warnings():  # MONAI's own use of a deprecated argument of get_mask_edges
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            out[both.numpy()] = HD95_DEFINITIONS[definition][0](p[both], t[both], spacing)
    return out.astype(np.float64)
