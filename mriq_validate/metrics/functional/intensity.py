"""Brain intensity: where the image's brain sits on the [0, 1] intensity scale (the maths of ``brain_intensity``).

A safety net for images read at the wrong scale (12-bit values in 16-bit files divided by 65535, a wrong bit depth,
a generator's output range mapped wrongly): the downstream segmenter normalises each image, so Dice does not see a
set that is 16 times too dark, and the no-reference measures of Deo et al. 2025 (arXiv 2505.07175) are not built to.

Per image (a slice, or a volume as a whole): a brain (foreground) mask is derived from the image itself by Otsu's threshold
(Otsu, IEEE Trans. SMC 1979) on log-intensity, largest connected component, holes filled; the score is a percentile of the
intensities inside it. The same mask says which axial slices of a volume hold brain (:func:`axial_brain_slices`), the
slices on which measures of 2D images score a volume.
Multiplying an image by c > 0 shifts its log-intensities by log c, so the mask does not change and the percentile
scales by exactly c: the ratio of the generated to the real value reads off a global scaling error directly.
"""

from __future__ import annotations

import numpy as np
import torch

from ...data.preprocess import BRAIN_FRACTION
from ...errors import MetricError

__all__ = ["axial_brain_slices", "brain_mask", "brain_percentile", "otsu_threshold"]

LOG_EPS = 1e-3  # log(x + LOG_EPS·max(x)): relative to the image's maximum, so the mask is scale-invariant
OTSU_BINS = 256


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold (maximum between-class variance) of ``values`` over ``bins`` equal bins spanning their range;
    the values' minimum when they are all equal."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)
    m0 = np.cumsum(counts * centres)[:-1]
    total, mean_total = float(counts.sum()), float((counts * centres).sum())
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_total * w0 / total - m0) ** 2 / (w0 * w1)
    return float(edges[1 + int(np.nanargmax(np.where(w0 * w1 > 0, between, -1.0)))])


def brain_mask(image: np.ndarray) -> np.ndarray:
    """The brain (foreground) of a 2D or 3D image: log-intensity above Otsu's threshold, largest connected component (face
    connectivity), holes filled. Unchanged when the image is multiplied by any c > 0; empty for an image without signal
    (max ≤ 0)."""
    from scipy import ndimage

    x = np.asarray(image, dtype=np.float64)
    top = float(x.max())
    if top <= 0:
        return np.zeros(x.shape, dtype=bool)
    logs = np.log(np.clip(x, 0.0, None) + LOG_EPS * top)
    mask = logs >= otsu_threshold(logs) if np.ptp(logs) > 0 else np.ones(x.shape, dtype=bool)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def brain_percentile(images: np.ndarray | torch.Tensor, q: float = 95.0) -> np.ndarray:
    """The ``q``-th percentile of each image's intensities inside its own :func:`brain_mask`; 0 for an image without
    signal (it has no brain to measure, and no intensity). Multiplying an image by c > 0 multiplies its value by c.
    A volume is one image: its brain mask is found in 3D and the percentile is over all its brain voxels.

    Args:
        images: N×H×W, N×1×H×W or N×1×D×H×W intensities (array or tensor).
        q: the percentile, in (0, 100).

    Returns:
        N values (float64).

    Raises:
        MetricError: ``q`` outside (0, 100), or images of another shape or with NaN/inf.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> img = np.zeros((1, 1, 64, 64))
        >>> img[0, 0, 16:48, 16:48] = rng.uniform(0.4, 0.8, size=(32, 32))  # a "brain" on a dark background
        >>> brain_percentile(img, 50).round(3).tolist(), (brain_percentile(img / 16, 50) * 16).round(3).tolist()
        ([0.611], [0.611])
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 100:
        raise MetricError(f"q: expected a percentile in (0, 100), got {q!r}")
    shape = np.shape(images)
    if len(shape) not in (3, 4, 5) or (len(shape) > 3 and shape[1] != 1):
        raise MetricError(f"images: expected N×H×W, N×1×H×W or N×1×D×H×W, got shape {shape}")
    x = np.asarray(images, dtype=np.float64).reshape(shape[0], *shape[2 if len(shape) > 3 else 1:])
    if not np.all(np.isfinite(x)):
        raise MetricError("images: contain NaN or inf")
    out = np.zeros(len(x))
    for i, img in enumerate(x):
        mask = brain_mask(img)
        if mask.any():
            out[i] = np.percentile(img[mask], q)
    return out


def axial_brain_slices(volumes: torch.Tensor) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The axial slices of ``volumes`` that hold brain: those with more than :data:`~mriq_validate.data.preprocess.BRAIN_FRACTION`
    of their pixels inside the volume's :func:`brain_mask` (of the channel mean when there are several contrasts), the
    rule by which the 2D data keep a volume's slices, on a mask that ignores a generator's faint background; every slice
    of a volume without brain (a blank volume is scored, not skipped).

    Args:
        volumes: N×C×D×H×W, D the axial slice index.

    Returns:
        The slices K×C×H×W (each oriented as a 2D slice), the volume each came from (K,) and its index along D (K,).

    Raises:
        MetricError: volumes not N×C×D×H×W.

    Example:
        >>> import torch
        >>> v = torch.zeros(2, 1, 8, 16, 16)
        >>> v[0, :, 2:6, 4:12, 4:12] = 1.0  # a cube: 64 of 256 pixels in slices 2 to 5
        >>> slices, volume, depth = axial_brain_slices(v)
        >>> tuple(slices.shape), volume.tolist(), depth.tolist()
        ((12, 1, 16, 16), [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7])
    """
    if volumes.ndim != 5:
        raise MetricError(f"volumes: expected N×C×D×H×W, got shape {tuple(volumes.shape)}")
    grey = volumes.detach().cpu().to(torch.float64).mean(1).numpy()
    owner, depth = [], []
    for i, v in enumerate(grey):
        share = brain_mask(v).mean(axis=(1, 2))
        keep = np.flatnonzero(share > BRAIN_FRACTION)
        keep = keep if keep.size else np.arange(v.shape[0])
        owner.append(np.full(keep.size, i))
        depth.append(keep)
    owner_a, depth_a = np.concatenate(owner), np.concatenate(depth)
    return volumes[torch.as_tensor(owner_a), :, torch.as_tensor(depth_a)], owner_a, depth_a
