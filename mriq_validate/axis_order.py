"""Volumes answered in X×Y×Z order where the shape cannot tell: D = W (the embedded 3D grid 64×72×64, the default
NIfTI grid 96×112×96).

Volumes are D×H×W (D the axial index inferior to superior, each D-slice as a 2D slice, anterior at the top); a model
that works on NIfTI arrays in RAS X×Y×Z returns ``xyz[w, H-1-h, d]`` for ``out[d, h, w]`` (D and W swapped, H flipped).
Where D ≠ W that is a shape error; where D = W only the content shows it. The statistic compares the brain's structure
in the generated batch with the reference (training) volumes', as returned and with D and W exchanged back:

1. the mean volume over items and channels (D×H×W), generated and reference;
2. its structure: the volume minus its Gaussian blur at ``SIGMA_MM`` (a high-pass that removes the head's outline,
   which alone looks alike along D and along W, and keeps ventricles, brainstem, cortex and the left-right symmetry);
3. the Pearson correlation with the reference's structure, as returned (``as_is``) and with D and W exchanged, with or
   without the H flip, the better of the two (``swapped``).

The batch is flagged when ``swapped`` exceeds ``as_is`` by ``MARGIN`` and is itself at least ``MIN_CORR``. Measured:

* embedded 3D data (``builtin:mni-tumour-3d``, 64×72×64 at 3 mm, σ = 4 voxels, reference = 32 of its 45 training
  volumes), 140 batches (each of the 19 test volumes alone and all 19 at once, from each of the 7 builtin stand-ins):
  faithful ``as_is`` ≥ 0.60 and ``swapped - as_is`` ≤ −0.29; D↔W swapped ≥ +0.29; X×Y×Z (swap and H flip) ≥ +0.41;
* the default NIfTI grid (96×112×96 at 2 mm, σ = 6 voxels; a synthetic BraTS 2021 cohort of ``data.cohort_writer``,
  6 train volumes, each of 4 test volumes alone): ≤ −0.36 faithful, ≥ +0.36 swapped, ≥ +0.54 X×Y×Z;
* the volume-gate test's coarse grid (32×40×32 at 6 mm, σ = 2 voxels, 7 stand-ins): ≤ −0.27, ≥ +0.27, ≥ +0.42.

``MARGIN`` = 0.15 is about half the smallest separation, ``MIN_CORR`` = 0.3 half the smallest faithful correlation;
noise, constants and D↔W-symmetric volumes score near 0 (or not at all) on both and are never flagged. Deterministic
(no sampling) and cheap: three Gaussian filters of one volume per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

SIGMA_MM = 12.0  # the high-pass scale: 4 voxels on the embedded 3 mm grid, where the margins above were measured
DEFAULT_SIGMA_VOXELS = 4.0  # when the voxel size is not known
MARGIN = 0.15
MIN_CORR = 0.3
MAX_REFERENCE_ITEMS = 32  # evenly spaced training volumes for the reference mean (a mapped cohort is not read whole)
#: What a model working in RAS X×Y×Z must do to its N×C×X×Y×Z output (the inverse of the above).
FIX = "x.permute(0, 1, 4, 3, 2).flip(3)"


@dataclass(frozen=True)
class AxisOrderScores:
    """Correlations of the generated batch's structure with the reference's: as returned, and with D and W exchanged."""

    as_is: float
    swapped: float

    @property
    def flagged(self) -> bool:
        """Whether the batch looks D↔W swapped (NaN scores, e.g. of a constant batch, never are)."""
        return bool(self.swapped >= MIN_CORR and self.swapped - self.as_is >= MARGIN)


def mean_volume(images: torch.Tensor, max_items: int | None = MAX_REFERENCE_ITEMS) -> np.ndarray:
    """The mean D×H×W volume (float64) over the channels and up to ``max_items`` evenly spaced items of N×C×D×H×W
    ``images``, read one item at a time."""
    n = images.shape[0]
    picks = np.unique(np.linspace(0, n - 1, min(n, max_items or n)).round().astype(int))
    total = np.zeros(tuple(images.shape[2:]), np.float64)
    for i in picks:
        total += images[int(i)].detach().to("cpu", torch.float64).sum(0).numpy()
    return total / (len(picks) * images.shape[1])


def _sigma(spacing_mm: Sequence[float]) -> tuple[float, ...]:
    if len(spacing_mm) == 3 and all(s > 0 for s in spacing_mm):
        return tuple(SIGMA_MM / float(s) for s in spacing_mm)
    return (DEFAULT_SIGMA_VOXELS,) * 3


def structure(volume: np.ndarray, spacing_mm: Sequence[float] = ()) -> np.ndarray:
    """``volume`` minus its Gaussian blur at :data:`SIGMA_MM`."""
    from scipy import ndimage

    return volume - ndimage.gaussian_filter(volume, _sigma(spacing_mm))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def axis_order_scores(generated: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float] = ()) -> AxisOrderScores:
    """The scores of a generated mean volume against the reference mean volume (both D×H×W, D = W, from
    :func:`mean_volume`); ``spacing_mm`` (D, H, W) sets the high-pass scale in voxels."""
    ref = structure(reference, spacing_mm)
    back = generated.transpose(2, 1, 0)  # D and W exchanged back
    return AxisOrderScores(_corr(structure(generated, spacing_mm), ref),
                           max(_corr(structure(np.ascontiguousarray(b), spacing_mm), ref) for b in (back, back[:, ::-1])))


def axis_order_message(scores: AxisOrderScores, source: str) -> str:
    """The error for a flagged batch: what was seen, the convention, and the fix."""
    return (f"{source} returned volumes that seem to be in X×Y×Z order (D and W swapped): their brain structure matches the "
            f"reference volumes' with D and W exchanged (correlation {scores.swapped:.2f}) far better than as returned "
            f"({scores.as_is:.2f}). Volumes are N×C×D×H×W, D the axial slice index inferior to superior, each D-slice H×W "
            f"oriented as the data's 2D slices (anterior at the top); a model that works on RAS X×Y×Z arrays (NIfTI order) "
            f"should return {FIX}")
