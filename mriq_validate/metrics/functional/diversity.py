"""Diversity and mode collapse: intra-set MS-SSIM over random pairs, and the presence of a region per image."""

from __future__ import annotations

import numpy as np
import torch

from ...arrays import gather
from ...errors import MetricError

__all__ = ["MS_SSIM_WEIGHTS", "ms_ssim_pairs", "ms_ssim_setup", "pair_indices", "region_presence"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003
# pairs scored per MONAI call: 100 slice pairs (a few MB), 8 volume pairs (at 64×72×64, 19 volumes' 171 pairs: peak
# rise 285 MB, against 2236 MB at 100 a call; the values moved by at most 6e-8, float32 rounding of MONAI's
# convolutions split differently over 2 threads, and not at all on one thread).
PAIRS_PER_CALL = {2: 100, 3: 8}


def ms_ssim_setup(size: int, kernel_size: int = 7) -> tuple[int, tuple[float, ...]]:
    """Kernel and scale weights that fit an image whose shortest side is ``size`` pixels (a slice, or a volume: MONAI
    checks each spatial axis alike): the most of the 5 standard scales (Wang et al. 2003) for which MONAI's
    ``compute_ms_ssim`` runs, weights renormalised to sum to 1.

    Two conditions must hold for ``s`` scales on every axis (MONAI 1.x, ``monai.metrics.regression``): its own size check
    ``size // max(1, s - 1)² > kernel - 1``, and the coarsest scale, after ``s - 1`` halvings by 2 × 2 (× 2) average
    pooling (``size // 2^(s-1)`` pixels), must hold the kernel of its valid convolution. MetricError naming the size when
    even one scale (plain SSIM) does not fit, i.e. the image is smaller than the kernel.
    """
    for scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        if size // max(1, scales - 1) ** 2 > kernel_size - 1 and size // 2 ** (scales - 1) >= kernel_size:
            w = np.array(MS_SSIM_WEIGHTS[:scales])
            return kernel_size, tuple(float(x) for x in w / w.sum())
    raise MetricError(f"metric 'ms_ssim_diversity': a {size}-pixel slice is smaller than the {kernel_size}-pixel SSIM kernel; "
                      f"set params.kernel_size to an odd number ≤ {size}")


def pair_indices(n: int, n_pairs: int) -> np.ndarray:
    """``n_pairs`` deterministic pairs (i, j), i ≠ j, depending only on n (so equal-size sets are paired alike)."""
    rng = np.random.default_rng(n)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n
    return np.stack([i, j], 1)


def ms_ssim_pairs(images: torch.Tensor, n_pairs: int = 500, kernel_size: int = 7) -> np.ndarray:
    """MS-SSIM (Wang et al. 2003; MONAI ``MultiScaleSSIMMetric``, data range 1) of ``n_pairs`` pairs of distinct images of
    one set, the pairs from :func:`pair_indices`; their mean is the set's intra-set similarity (higher = less diverse).
    Volumes are compared in 3D (MONAI ``spatial_dims=3``: 3D Gaussian windows, 2 × 2 × 2 pooling between scales). SSIM is
    symmetric, so for volumes each unordered pair drawn is computed once (a 64 × 72 × 64 pair costs about 0.2 s on 2
    CPU cores; 20 volumes have 190).

    Args:
        images: N×1×H×W grey images or N×1×D×H×W grey volumes in [0, 1], N ≥ 2.
        n_pairs: how many pairs to score.
        kernel_size: the odd SSIM kernel size; the scales are those that fit the slice (:func:`ms_ssim_setup`).

    Returns:
        ``n_pairs`` MS-SSIM values in [-1, 1] (float64), one per pair.

    Raises:
        MetricError: fewer than 2 images, not N×1×H×W or N×1×D×H×W, or an image smaller than the kernel.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> base = torch.rand(1, 1, 64, 64, generator=g)
        >>> collapsed = (base + 0.01 * torch.rand(8, 1, 64, 64, generator=g)).clamp(0, 1)  # 8 near-identical images
        >>> diverse = torch.rand(8, 1, 64, 64, generator=g)
        >>> bool(ms_ssim_pairs(collapsed, 20).mean() > 0.95), bool(ms_ssim_pairs(diverse, 20).mean() < 0.2)
        (True, True)
    """
    from monai.metrics import MultiScaleSSIMMetric

    if images.ndim not in (4, 5) or images.shape[1] != 1 or images.shape[0] < 2:
        raise MetricError(f"images: expected N×1×H×W grey images or N×1×D×H×W grey volumes with N ≥ 2, got shape {tuple(images.shape)}")
    kernel, weights = ms_ssim_setup(min(images.shape[2:]), kernel_size)
    metric = MultiScaleSSIMMetric(spatial_dims=images.ndim - 2, data_range=1.0, kernel_size=kernel, weights=weights)
    pairs = pair_indices(images.shape[0], n_pairs)
    if images.ndim == 5:  # a volume pair is costly: each unordered pair once (slices keep their batches, bit for bit)
        pairs, which = np.unique(np.sort(pairs, axis=1), axis=0, return_inverse=True)
    else:
        which = np.arange(len(pairs))
    out = []
    step = PAIRS_PER_CALL[images.ndim - 2]
    for s in range(0, len(pairs), step):
        p = pairs[s : s + step]  # random rows of a possibly mapped set: gathered without mapping most of its file
        out.append(metric(gather(images, p[:, 0]), gather(images, p[:, 1])).flatten())
    return torch.cat(out).double().numpy()[which.reshape(-1)]


def region_presence(region_masks: torch.Tensor, min_px: int = 5) -> np.ndarray:
    """Whether each image's region mask holds at least ``min_px`` pixels: 1.0 (present) or 0.0 (absent). Its mean over a
    set is the share of images where the region was found; a generator that stops producing a sub-region scores below
    real data.

    Args:
        region_masks: N×1×H×W (or N×1×D×H×W) boolean masks of the region, e.g. in a segmenter's prediction.
        min_px: the fewest pixels that count as present, ≥ 1.

    Returns:
        N values, 0.0 or 1.0 (float64).

    Raises:
        MetricError: ``min_px`` is not a positive integer, or the masks are not N×1×...

    Example:
        >>> import torch
        >>> m = torch.zeros(3, 1, 16, 16, dtype=torch.bool)
        >>> m[0, :, 4:8, 4:8] = True  # 16 px
        >>> m[1, :, 4, 4:7] = True  # 3 px: below min_px
        >>> region_presence(m, min_px=5).tolist()
        [1.0, 0.0, 0.0]
    """
    if isinstance(min_px, bool) or not isinstance(min_px, int) or min_px < 1:
        raise MetricError(f"min_px: expected an integer >= 1, got {min_px!r}")
    if region_masks.ndim < 4 or region_masks.shape[1] != 1:
        raise MetricError(f"region_masks: expected N×1×H×W (or N×1×D×H×W), got shape {tuple(region_masks.shape)}")
    return (region_masks.flatten(1).sum(1) >= min_px).double().numpy()
