"""Volume and slice preprocessing of Deo et al. 2025 (GenMed ``src/data_preprocessing/utils.py``), as pure functions.

Per volume: reorient to RAS from the affine (nibabel's ``io_orientation``, as ``as_closest_canonical`` does), so LPS
and RAS files give the same slices. Per case: keep the axial slices with a lesion (or with brain), the same slices
for every contrast. Per slice and contrast: clip to the 1st-99th percentile, min-max scale to [0, 1], centre crop
(zero-pad when smaller).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PREPROCESSING = {
    "orientation": "reoriented to RAS from each file's affine (LPS and RAS files give the same slices); axial slices "
                   "(axis 2), anterior at the top",
    "slices": "lesion: axial slices with any label; all: slices where more than 10% of the pixels are non-zero in some "
              "contrast (brain); the same slices for every contrast of a case",
    "intensity": "per slice and contrast: clip to [p1, p99], then min-max to [0, 1] (eps 1e-6)",
    "crop": "centre crop, zero-padded where the slice is smaller",
}
BRAIN_FRACTION = 0.1  # a slice is "brain" when more than this fraction of its pixels is non-zero in some contrast


def normalise_slice(x: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0, eps: float = 1e-6,
                    within: np.ndarray | None = None) -> np.ndarray:
    """Clip ``x`` (a slice or a volume) to its [low_pct, high_pct] percentiles and min-max scale to [0, 1] (float32).

    With ``within`` (a boolean mask of ``x``'s shape, e.g. the brain), the percentiles are those of the voxels inside it
    and everything outside it is 0 (the background of skull-stripped data stays 0, as nnU-Net normalises within the
    non-zero mask: Isensee et al. 2021, Nat Methods 18:203); an empty mask gives all zeros."""
    if within is None:
        lo, hi = np.percentile(x, [low_pct, high_pct])
        y = np.clip(x, lo, hi)
        return ((y - lo) / (hi - lo + eps)).astype(np.float32)
    out = np.zeros(x.shape, np.float32)
    if within.any():
        out[within] = normalise_slice(x[within], low_pct, high_pct, eps)
    return out


def centre_crop(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop the last two axes of ``x`` to ``size``, zero-padding axes that are smaller."""
    out = x
    for axis, target in zip((-2, -1), size):
        n = out.shape[axis]
        if n > target:
            start = (n - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
        elif n < target:
            before = (target - n) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, target - n - before)
            out = np.pad(out, pad)
    return out


def axial_to_display(slice_xy: np.ndarray) -> np.ndarray:
    """Turn a RAS axial slice indexed [x, y] (the first two axes; further axes are kept) into an image indexed
    [row, col] with anterior at the top: ``out[r, c] = slice_xy[c, Y - 1 - r]``."""
    return np.rot90(slice_xy).copy()


def to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """``volume`` (3D) reordered so its axes run Right, Anterior, Superior; the new affine; the original axis codes
    (e.g. ``"LPS"``). The closest canonical orientation of the affine, as nibabel's ``as_closest_canonical``."""
    from nibabel.orientations import aff2axcodes, apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    codes = "".join(c or "?" for c in aff2axcodes(affine))
    return apply_orientation(volume, ornt), affine @ inv_ornt_aff(ornt, volume.shape), codes


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) of an affine."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def case_slices(volumes: Sequence[np.ndarray], label: np.ndarray | None, crop: tuple[int, int],
                slices: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept axial slices of one case (RAS volumes X×Y×Z, one per contrast, and its label volume or None):
    images K×C×H×W float32 (normalised per slice and contrast, cropped), masks K×H×W int32 (the label values as
    given, zero without a label), and the kept slice indices K. ``slices`` is ``"lesion"`` (slices with any label)
    or ``"all"`` (slices with brain, :data:`BRAIN_FRACTION`)."""
    stack = np.stack(volumes)  # C×X×Y×Z
    if slices == "lesion":
        if label is None:
            raise ValueError("slices='lesion' needs a label volume")
        keep = np.flatnonzero(label.reshape(-1, label.shape[2]).any(axis=0))
    else:
        brain = (stack != 0).any(axis=0)
        keep = np.flatnonzero(brain.reshape(-1, brain.shape[2]).mean(axis=0) > BRAIN_FRACTION)
    h, w = crop
    images = np.zeros((len(keep), stack.shape[0], h, w), np.float32)
    masks = np.zeros((len(keep), h, w), np.int32)
    for i, z in enumerate(keep):
        for c in range(stack.shape[0]):
            images[i, c] = centre_crop(normalise_slice(axial_to_display(stack[c, :, :, z])), crop)
        if label is not None:
            masks[i] = centre_crop(axial_to_display(label[:, :, z]), crop)
    return images, masks, keep.astype(np.int32)
