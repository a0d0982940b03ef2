"""Diversity and mode collapse as metrics: intra-set MS-SSIM, and what the real-data segmenter finds in the images
(maths in :mod:`.functional.diversity`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from ..contract import MeasureContext
from ..errors import MetricError
from ..segmenter import SegmenterConfig
from .base import PerImageMetric, Sample, check_int, check_region, register_metric
from .functional import diversity as F



@register_metric
class MsSsimDiversity(PerImageMetric):
    """Mean MS-SSIM between random pairs of images of the set (MONAI MultiScaleSSIMMetric); higher means less
    diverse. Items are pairs, so the CI resamples pairs."""

    name = "ms_ssim_diversity"
    channels = "each"
    functional = staticmethod(F.ms_ssim_pairs)
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
        self.n_pairs = check_int(self.name, "n_pairs", n_pairs, 10)
        self.kernel_size = check_int(self.name, "kernel_size", kernel_size, 3)
        if self.kernel_size % 2 == 0:
            raise MetricError(f"metric 'ms_ssim_diversity': kernel_size must be odd, got {kernel_size!r}")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "n_pairs": self.n_pairs, "kernel_size": self.kernel_size, "library": "MONAI MultiScaleSSIMMetric",
                "data_range": 1.0, "scales": "as many of 5 as fit the slice (see ms_ssim_setup)",
                "volumes": "compared in 3D (3D windows and pooling, MONAI spatial_dims=3), scales fitted to the shortest axis"}

    def prepare(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        if len(sample) < 3:
            raise MetricError(f"metric {self.name!r} needs at least 3 images, got {len(sample)}")
        if (mean := self.contrast_mean(ctx, sample)) is not None:
            return mean  # the same pairs on each contrast, each pair's score averaged over them
        return self.scores(ctx, sample)  # one score per pair

    def scores(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        return F.ms_ssim_pairs(sample.images, self.n_pairs, self.kernel_size)


@register_metric
class RegionPresence(PerImageMetric):
    """Share of images in which the real-data segmenter finds ``region`` (at least ``min_px`` pixels, voxels in a volume): a sub-region
    that a generator stops producing (mode collapse of a tumour category) shows up as a lower share than on real data."""

    name = "region_presence"
    functional = staticmethod(F.region_presence)
    higher_is_better = True
    valid_range = (0.0, 1.0)
    summary = "share of images where the real-data segmenter finds the region (sub-region collapse)"
    limitations = (
        "Counts presence only (at least min_px pixels): a lesion of the wrong size, shape or place still counts as present.",
        "Inherits the real-data segmenter's errors: lesions it misses on real images are reported absent on generated "
        "images too, and hallucinated findings count as present.",
    )

    def __init__(self, region: str = "whole_tumour", min_px: int = 5, segmenter: dict[str, Any] | None = None) -> None:
        self.region = check_region(self.name, region)
        self.min_px = check_int(self.name, "min_px", min_px, 1)
        self.segmenter = SegmenterConfig.from_params(segmenter, "metric 'region_presence': ")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "min_px": self.min_px, "segmenter": asdict(self.segmenter)}

    def scores(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        return F.region_presence(ctx.data.region_mask(ctx.predict(self.segmenter.resolve(ctx.data.spatial_dims, "metric 'region_presence': "), sample.images), self.region), self.min_px)
