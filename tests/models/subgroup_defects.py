"""Generators that are faithful except in one subgroup: the tests of ``by:`` (mriq_validate.subgroups).

Both return the held-out real images for the requested masks, as ``builtin:real`` does, and fade the lesions of one
subgroup towards healthy tissue (the ``lesion_erase`` perturbation at a partial ``amount``, every contrast alike):

- ``site_defect``: only where the mask's real counterpart comes from simulated site 2 (a generator sees masks only, so
  it looks the site of a mask up in the embedded data, as a held-out test case may);
- ``small_lesion_defect``: only lesions smaller than the first quartile of the training masks' whole-tumour areas.

The amounts are sized so that the damaged subgroup loses about twice DICE-WT's tolerance (0.1 Dice) while the pooled
loss stays about half of it: the pooled criterion passes and the subgroup criterion fails (tests/test_subgroups.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch

from mriq_validate.builtin_models import RealLookup
from mriq_validate.cache import DiskCache, default_cache_dir
from mriq_validate.data import load_data
from mriq_validate.perturb import PerturbContext, apply

DATA = "builtin:mni-tumour"
SITE_AMOUNT = 0.65  # site 2: Dice -0.12 there, -0.03 pooled
SMALL_AMOUNT = 0.5  # lesions below the training Q1: Dice -0.10 in the test Q1, -0.03 pooled
DAMAGED_SITE = 2


def _key(mask: torch.Tensor) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(mask.to(torch.uint8).numpy()), digest_size=16).digest()


class SubgroupDefect(RealLookup):
    """Real images for the masks, with the lesions faded by ``amount`` where ``damaged(mask)`` holds."""

    def __init__(self, data, damaged: Callable[[torch.Tensor], bool], amount: float) -> None:
        super().__init__(data)
        self.damaged, self.amount = damaged, amount
        self.lesion = tuple(data.labels.values())

    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        images = super().generate(masks, seed=seed).clone()
        hit = np.flatnonzero([self.damaged(m) for m in masks])
        if hit.size:
            idx = torch.as_tensor(hit)
            images[idx] = apply("lesion_erase", images[idx], masks[idx], seed=seed, ctx=PerturbContext(lesion_labels=self.lesion),
                                amount=self.amount).images
        return images


def _data(ctx):
    return load_data(DATA, DiskCache(default_cache_dir()), contrasts=list(ctx.contrasts) or None)


def site_defect(ctx) -> SubgroupDefect:
    """Faithful, except that lesions of site 2 are faded (amount 0.65)."""
    data = _data(ctx)
    site = {_key(split.masks[i]): int(split.covariates["site"][i]) for split in (data.train, data.test) for i in range(len(split))}
    return SubgroupDefect(data, lambda m: site.get(_key(m)) == DAMAGED_SITE, SITE_AMOUNT)


def small_lesion_defect(ctx) -> SubgroupDefect:
    """Faithful, except that lesions smaller than the training masks' first quartile of area are faded (amount 0.5)."""
    data = _data(ctx)
    cutoff = float(np.quantile((ctx.train_masks > 0).flatten(1).sum(1).numpy(), 0.25))
    return SubgroupDefect(data, lambda m: float((m > 0).sum()) < cutoff, SMALL_AMOUNT)
