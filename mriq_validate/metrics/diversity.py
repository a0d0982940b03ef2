"""Diversity and mode collapse: intra-set MS-SSIM, and what the real-data segmenter finds in the images."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..errors import MetricError
from .base import PerImageMetric, Sample, register_metric

if TYPE_CHECKING:
    from ..session import RunContext

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def ms_ssim_setup(size: int, kernel_size: int = 7) -> tuple[int, tuple[float, ...]]:
    """Kernel and scale weights that fit a ``size``-pixel slice: the most of the 5 standard scales (Wang et al. 2003) for
    which MONAI's ``compute_ms_ssim`` runs, weights renormalised to sum to 1.

    Two conditions must hold for ``s`` scales (MONAI 1.x, ``monai.metrics.regression``): its own size check
    ``size // max(1, s - 1)² > kernel - 1``, and the coarsest scale, after ``s - 1`` halvings by 2 × 2 average pooling
    (``size // 2^(s-1)`` pixels), must hold the kernel of its valid convolution. MetricError naming the size when even
    one scale (plain SSIM) does not fit, i.e. the slice is smaller than the kernel.
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


@register_metric
class MsSsimDiversity(PerImageMetric):
    """Mean MS-SSIM between random pairs of images of the set (MONAI MultiScaleSSIMMetric); higher means less
    diverse. Items are pairs, so the CI resamples pairs."""

    name = "ms_ssim_diversity"
    higher_is_better = False
    valid_range = (-1.0, 1.0)
    summary = "intra-set MS-SSIM over random pairs (MONAI, kernel/scales fitted to the slice); higher = less diverse"
    limitations = (
        "Structural similarity of random pairs of whole images: it sees whole-image mode collapse, not the collapse of a "
        "sub-region or lesion type, and it says nothing about fidelity.",
        "Noise and artefacts lower it, so a degraded set looks more diverse; the number of scales follows the slice size, "
        "so compare values only at one slice size and kernel.",
    )

    def __init__(self, n_pairs: int = 500, kernel_size: int = 7) -> None:
        if n_pairs < 10 or kernel_size < 3 or kernel_size % 2 == 0:
            raise MetricError(f"metric 'ms_ssim_diversity': n_pairs >= 10 and an odd kernel_size >= 3 expected, got {n_pairs}, {kernel_size}")
        self.n_pairs, self.kernel_size = int(n_pairs), int(kernel_size)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "n_pairs": self.n_pairs, "kernel_size": self.kernel_size, "library": "MONAI MultiScaleSSIMMetric",
                "data_range": 1.0, "scales": "as many of 5 as fit the slice (see ms_ssim_setup)"}

    def prepare(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        if len(sample) < 3:
            raise MetricError(f"metric {self.name!r} needs at least 3 images, got {len(sample)}")
        return self.scores(ctx, sample)  # one score per pair

    def scores(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        from monai.metrics import MultiScaleSSIMMetric

        kernel, weights = ms_ssim_setup(min(sample.images.shape[-2:]), self.kernel_size)
        metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=kernel, weights=weights)
        pairs = pair_indices(len(sample), self.n_pairs)
        out = []
        for s in range(0, len(pairs), 100):
            p = torch.as_tensor(pairs[s : s + 100])
            out.append(metric(sample.images[p[:, 0]], sample.images[p[:, 1]]).flatten())
        return torch.cat(out).double().numpy()


@register_metric
class RegionPresence(PerImageMetric):
    """Share of images in which the real-data segmenter finds ``region`` (at least ``min_px`` pixels): a sub-region
    that a generator stops producing (mode collapse of a tumour category) shows up as a lower share than on real data."""

    name = "region_presence"
    higher_is_better = True
    valid_range = (0.0, 1.0)
    needs: ClassVar[tuple[str, ...]] = ("segmenter",)
    summary = "share of images where the real-data segmenter finds the region (sub-region collapse)"
    limitations = (
        "Counts presence only (at least min_px pixels): a lesion of the wrong size, shape or place still counts as present.",
        "Inherits the real-data segmenter's errors: lesions it misses on real images are reported absent on generated "
        "images too, and hallucinated findings count as present.",
    )

    def __init__(self, region: str = "whole_tumour", min_px: int = 5, segmenter: dict[str, Any] | None = None) -> None:
        from ..downstream import SegmenterConfig

        self.region, self.min_px = region, int(min_px)
        self.segmenter = SegmenterConfig.from_params(segmenter, "metric 'region_presence': ")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "min_px": self.min_px, "segmenter": asdict(self.segmenter)}

    def scores(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        found = ctx.data.region_mask(ctx.predict(self.segmenter, sample.images), self.region)
        return (found.flatten(1).sum(1) >= self.min_px).double().numpy()
