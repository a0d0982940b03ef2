"""Generators whose tumours are wrong on ONE contrast (T1) only, through the public model contract
(``--mriq-model tests/models/one_contrast_defects.py:NAME``): the real images for the requested masks (``builtin:real``'s
lookup), then on T1 alone

* ``core_swap_t1``: the necrotic core and the enhancing rim trade intensities (each region takes the other's intensity
  distribution, rank for rank), so on T1 the necrosis is bright and the rim dark;
* ``small_lesions_erased_t1``: the smallest lesions (whole-tumour area, or volume, in the lowest quartile of the
  training masks') are erased, lesion and its 1-px partial-volume edge (``one_contrast_erase``, channel t1).

T1c, T2 and FLAIR stay real, so a segmenter that reads all four contrasts still finds every tumour. The model runs in
the gate's model process; it reads the embedded data from the cache the tests use (``$MRIQ_CACHE_DIR``).
"""

from __future__ import annotations

import numpy as np
import torch

from mriq_validate.builtin_models import RealLookup
from mriq_validate.cache import DiskCache, default_cache_dir
from mriq_validate.contract import ModelContext
from mriq_validate.data import load_data
from mriq_validate.perturb import PerturbContext, apply


def _real(ctx: ModelContext) -> RealLookup:
    """``builtin:real`` on the embedded data of the run's dimensionality, with the run's contrasts."""
    spec = "builtin:mni-tumour-3d" if len(ctx.image_shape) == 4 else "builtin:mni-tumour"
    return RealLookup(load_data(spec, DiskCache(default_cache_dir())).select(list(ctx.contrasts)))


def swap_regions(image: np.ndarray, mask: np.ndarray, a: int, b: int) -> np.ndarray:
    """``image`` with the intensities of labels ``a`` and ``b`` traded: each pixel of one region takes the value at its
    rank's quantile of the other region's intensities; unchanged when either region is empty."""
    out = image.copy()
    ra, rb = mask == a, mask == b
    if not ra.any() or not rb.any():
        return out
    for src, dst in ((ra, rb), (rb, ra)):
        values = image[src]
        ranks = (np.argsort(np.argsort(values)) + 0.5) / values.size
        out[src] = np.quantile(image[dst], ranks)
    return out


class CoreSwapT1:
    """Real images with necrotic core and enhancing rim swapped on T1."""

    def __init__(self, ctx: ModelContext) -> None:
        self.real, self.t1 = _real(ctx), ctx.contrasts.index("t1")
        self.core, self.rim = ctx.labels["necrotic_core"], ctx.labels["enhancing"]

    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        images = self.real.generate(masks, seed=seed).clone()
        for i in range(len(images)):
            t1 = images[i, self.t1].numpy()
            images[i, self.t1] = torch.from_numpy(swap_regions(t1, masks[i, 0].numpy(), self.core, self.rim))
        return images


class SmallLesionsErasedT1:
    """Real images with the lowest-quartile lesions erased on T1."""

    def __init__(self, ctx: ModelContext) -> None:
        self.real, self.t1 = _real(ctx), ctx.contrasts.index("t1")
        self.lesion = tuple(ctx.labels.values())
        self.largest = float(np.percentile((ctx.train_masks > 0).flatten(1).sum(1).numpy(), 25))

    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        images = self.real.generate(masks, seed=seed).clone()
        small = torch.from_numpy(np.flatnonzero((masks > 0).flatten(1).sum(1).numpy() <= self.largest))
        if len(small):
            images[small] = apply("one_contrast_erase", images[small], masks[small], seed=seed, channel=self.t1,
                                  ctx=PerturbContext(lesion_labels=self.lesion)).images
        return images


def core_swap_t1(ctx: ModelContext) -> CoreSwapT1:
    return CoreSwapT1(ctx)


def small_lesions_erased_t1(ctx: ModelContext) -> SmallLesionsErasedT1:
    return SmallLesionsErasedT1(ctx)
