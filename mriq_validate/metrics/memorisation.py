"""Memorisation as a metric: the share of images flagged as copies of training images (conformal NN rule; the maths
in :mod:`.functional.memorisation`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..contract import MeasureContext
from ..arrays import batches, gather
from ..cache import content_hash
from ..errors import MetricError
from ..seeding import derive_seed
from .base import PerImageMetric, Sample, check_int, check_number, register_metric
from .features import FEATURES_VERSION, Extractor, check_features, features, make_extractor
from .functional.pairwise import capped_rows
from .functional.memorisation import CopyInvariance, _null_size, conformal_flags, copy_distances, copy_embedding, copy_flags


COPY_VERSION = "copy/1"  # bump when copy_embedding or copy_distances change what they compute (keys the cache)
# Volumes: a 16³ thumbnail (4096 values, 4× a slice's 32²) and shifts of up to ±1 of its voxels (1/16 of the field of
# view, after the 3D centroid is centred), so the (4·max_shift + 1)³ = 125 shift searches stay affordable (±2 would be
# 729, ~6× slower); a size or max_shift given in the parameters applies to volumes too.
VOLUME_SIZE, VOLUME_MAX_SHIFT = 16, 1
# The training set is searched in blocks of about this many bytes of copy embeddings (the embedded data's are one block).
REFERENCE_BLOCK_BYTES = 64 << 20


@register_metric
class CopyFraction(PerImageMetric):
    """Fraction of images closer to a training image than held-out real test images are (calibrated at ``alpha``).

    Per image: 1 when its nearest-training-image distance is below the ``⌊α(m+1)⌋``-th smallest held-out→train
    distance (see :mod:`.functional.memorisation`), else 0. For images drawn anew from the data distribution the expected
    value is at most ``alpha``; the real test images' own value (the baseline) is 0 by construction. With the default
    ``pixels`` features the distance is invariant to flips (``flips``) and to shifts of up to ``max_shift`` thumbnail
    pixels, for the held-out and the evaluated images alike.

    Cost: each evaluated and held-out image is searched against every training image (blocks of
    :data:`REFERENCE_BLOCK_BYTES`), so the evaluated and the held-out sets are each cut to a random subset of
    ``max_items`` images (seeded by the run seed and the metric's name) and the time grows linearly with the training set.
    The flagged share is a proportion: its precision is set by the number of images tested, not by the cohort's size,
    while the training side must be searched whole (any training image may be the one copied). The default 256 gives
    the share a standard error of at most 0.031 (0.006 at a share of 0.01), calibrates α = 0.01 on the 2nd smallest of
    256 held-out distances, leaves the embedded data (128 test slices, 19 test volumes) whole, and makes the cost
    256 × (training-set size): linear in the cohort. A suite that needs more precision on a large cohort raises it.
    """

    name = "copy_fraction"
    batched = False  # one search of the training set for all (at most max_items) evaluated images, not one per batch
    channels = "each"
    functional = staticmethod(copy_flags)
    higher_is_better = False
    valid_range = (0.0, 1.0)
    summary = "share of images flagged as training copies (NN distance below the held-out real null; flip/shift invariant)"
    limitations = (
        "Detects near-copies of whole training images in a low-resolution thumbnail space (32 × 32 by default), up to "
        "intensity gain and offset, "
        "small rotations, flips and shifts of up to max_shift thumbnail pixels; heavily augmented (large rotations, "
        "crops, elastic deformation), partial or patch-level copies can escape it.",
        "Its false-flag rate α holds for images exchangeable with the held-out real test split; held-out images that "
        "are near-duplicates of training images (adjacent slices of one patient in both splits) raise the threshold "
        "and hide copies, so split by patient.",
        "Blind to memorisation in other spaces (a copied lesion on new anatomy, copied texture) and says nothing about "
        "fidelity or utility: a model that never copies can still be useless.",
        "On a set larger than max_items (256 by default) it tests a seeded random max_items of the generated images, so "
        "a low copying rate (a few percent) needs a larger max_items to be told apart from α.",
    )

    def __init__(self, alpha: float = 0.01, features: dict[str, Any] | None = None, flips: bool | None = None,
                 max_shift: int | None = None, max_items: int | None = None) -> None:
        self.alpha = check_number(self.name, "alpha", alpha, lambda a: 0 < a < 0.5, "in (0, 0.5)")
        fewest = int(np.ceil(1 / self.alpha - 1 - 1e-9))  # the conformal threshold's α(m+1) ≥ 1 on max_items held-out images
        # a max_items given below what alpha needs is refused here; the default is checked with the held-out data (scores)
        self.max_items = 256 if max_items is None else check_int(self.name, "max_items", max_items, max(fewest, 2))
        self.features = dict(features or {"extractor": "pixels"})
        self._size = check_features(self.features, "metric 'copy_fraction': features: ").get("size", 32)
        pixels = self.features.get("extractor", "segmenter") == "pixels"
        if not pixels:  # a learnt extractor (the segmenter's encoder) takes every contrast at once
            self.channels = "joint"  # type: ignore[misc]
        if not pixels and (flips or max_shift):
            raise MetricError(f"metric 'copy_fraction': flips and max_shift act on the thumbnails of the 'pixels' extractor, "
                              f"not on {self.features.get('extractor', 'segmenter')!r} features; remove them or use pixels")
        self._volume_size = self._size if "size" in self.features else VOLUME_SIZE
        try:
            self.invariance = (CopyInvariance(flips=True if flips is None else flips, max_shift=4 if max_shift is None else max_shift)
                               if pixels else None)
            self.volume_invariance = (CopyInvariance(flips=True if flips is None else flips,
                                                     max_shift=VOLUME_MAX_SHIFT if max_shift is None else max_shift) if pixels else None)
        except MetricError as exc:
            raise MetricError(f"metric 'copy_fraction': {exc}") from None

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha, "features": self.features, "training_set": "real train split",
                "max_items": self.max_items, "subset": "evaluated and held-out sets larger than max_items: a random subset "
                "of max_items images each (seeded by the run seed and the metric's name); the training set is searched whole",
                "null": "real test split → train NN distances", "rule": "conformal NN test (memorisation.py)",
                "invariance": self.invariance.config(self._size) if self.invariance else "none (features other than pixels)",
                **({"volumes": {"thumbnail": f"{self._volume_size}³, pose: 3D centroid and in-plane principal axes",
                                "flips": "in-plane only (left-right, anterior-posterior, both)" if self.volume_invariance.flips else "none",
                                "max_shift_thumbnail_voxels": self.volume_invariance.max_shift}} if self.volume_invariance else {})}

    def capped(self, sample: Sample, run_seed: int, role: str) -> Sample:
        """``sample``, or a random subset of ``max_items`` of its images (seeded by the run seed, the metric's name and the
        set's role: generated and real test images of one size keep the same items and stay paired)."""
        if len(sample) <= self.max_items:
            return sample
        rows = capped_rows(len(sample), self.max_items, derive_seed(run_seed, self.name, "max_items", role))
        assert rows is not None
        return Sample(gather(sample.images, rows), None if sample.masks is None else gather(sample.masks, rows),
                      f"{sample.origin} (random {self.max_items} of {len(sample)})", sample.channel)

    def prepare(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        if self.channels == "each" and sample.channel is None and sample.images.shape[1] > 1:
            return super().prepare(ctx, sample)  # comes back here for each contrast, which is cut there (one channel)
        return super().prepare(ctx, self.capped(sample, ctx.seed, "evaluated"))

    def scores(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        train = Sample(sample.same_contrasts(ctx.data.train.images), ctx.data.train.masks, "")
        held_out = Sample(sample.same_contrasts(ctx.data.test.images), ctx.data.test.masks, "")
        test = self.capped(held_out, ctx.seed, "held-out")
        try:  # too few held-out items for alpha: said before any distance is computed
            _null_size(self.alpha, len(test), len(held_out))
        except MetricError as exc:
            raise MetricError(f"metric 'copy_fraction': {str(exc).removeprefix('null_feats: ')}") from None
        ext = make_extractor(ctx, self.features)  # also validates the pixels options
        if self.invariance is None:
            gen, ref, null = (features(ctx, ext, x.images, None) for x in (sample, train, test))
            return copy_flags(gen, ref, null, alpha=self.alpha)["flags"].astype(np.float64)
        dims = sample.images.ndim - 2
        size, inv = (self._size, self.invariance) if dims == 2 else (self._volume_size, self.volume_invariance)
        assert inv is not None

        def nearest(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            """Each image's copy distance to its nearest training image and that image's index, the training set taken
            a block at a time (embedded anew per block: ~0.3 ms a slice); between blocks, ties go to the earlier one."""
            query = copy_embedding(images, size, inv)
            best, best_index = np.full(len(query), np.inf), np.zeros(len(query), dtype=np.int64)
            for block in batches(len(train), max(1, REFERENCE_BLOCK_BYTES // (8 * query.shape[1]))):
                d, i = copy_distances(query, copy_embedding(train.images[block], size, inv), inv, spatial_dims=dims)
                better = d < best
                best[better], best_index[better] = d[better], i[better] + block.start
            return best, best_index

        # the held-out → train distances are the same for every sample of a run: computed once, kept in the cache
        null = Extractor("copy-null", lambda x, m: nearest(x)[0][:, None],
                         content_hash(FEATURES_VERSION, COPY_VERSION, "null", train.images, size, inv.flips, inv.max_shift),
                         {"extractor": "copy null"})
        d_null = features(ctx, null, test.images, None)[:, 0]
        d_gen, nn_index = nearest(sample.images)
        return conformal_flags(d_gen, nn_index, d_null, self.alpha)["flags"].astype(np.float64)
