"""Memorisation as a metric: the share of images flagged as copies of training images (conformal NN rule)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MetricError
from .base import PerImageMetric, Sample, register_metric
from .features import features, make_extractor
from .memorisation import copy_flags

if TYPE_CHECKING:
    from ..session import RunContext


@register_metric
class CopyFraction(PerImageMetric):
    """Fraction of images closer to a training image than held-out real test images are (calibrated at ``alpha``).

    Per image: 1 when its nearest-training-image distance is below the ``⌊α(m+1)⌋``-th smallest held-out→train
    distance (see :mod:`.memorisation`), else 0. For images drawn anew from the data distribution the expected
    value is at most ``alpha``; the real test images' own value (the baseline) is 0 by construction.
    """

    name = "copy_fraction"
    higher_is_better = False
    valid_range = (0.0, 1.0)
    needs = ("train", "reference")
    summary = "share of images flagged as training copies (NN distance below the held-out real null)"

    def __init__(self, alpha: float = 0.01, features: dict[str, Any] | None = None) -> None:
        if not 0 < alpha < 0.5:
            raise MetricError(f"metric 'copy_fraction': alpha must be in (0, 0.5), got {alpha!r}")
        self.alpha = float(alpha)
        self.features = dict(features or {"extractor": "pixels"})

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha, "features": self.features, "training_set": "real train split",
                "null": "real test split → train NN distances", "rule": "conformal NN test (memorisation.py)"}

    def scores(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        ext = make_extractor(ctx, self.features)
        train, test = ctx.data.train, ctx.data.test
        out = copy_flags(features(ctx, ext, sample.images, None), features(ctx, ext, train.images, None),
                         features(ctx, ext, test.images, None), alpha=self.alpha)
        return out["flags"].astype(np.float64)
