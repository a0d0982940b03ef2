"""Defects of one contrast: the lesion erased from one contrast of an item, the others left as they are.

A generator can draw a tumour that is right on three contrasts and wrong on the fourth; a segmenter that reads all
four contrasts still finds it, so downstream Dice does not see the defect. This is the one family that breaks the rule
of :mod:`.base` that every contrast gets the same edit, on purpose: each item is edited on one contrast only.

``channel`` names the contrast by its index in the data's contrast order (the embedded data: 0 t1, 1 t1c, 2 t2,
3 flair); -1 edits one contrast per item, spread evenly (item ``i`` of a seeded shuffle of ``i mod C``), so that every
contrast is broken on a share 1/C of the items and a measure decided on each contrast can show it moved on each.
The edit is :func:`~.morphology.lesion_erase`'s fill (in-painting from the surrounding tissue plus matched noise) of
the lesion and a ``halo`` of px (voxels) around it: a lesion's partial-volume edge spills beyond its label (by about
a pixel in the embedded data and in BraTS), and a generator that leaves a lesion out leaves its edge out too, whereas
in-painting from that edge leaves a faint copy of the lesion (on FLAIR, a fill 7 % brighter than the brain around it on
the embedded data). Every pixel beyond dilate(M, halo), and every other contrast, is bit-identical; masks are never
changed.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import MetricError
from .base import Param, PerturbContext, lesion_region, register
from .morphology import dilate_ball, healthy_fill


def one_contrast_channels(n: int, channels: int, channel: int, rng: np.random.Generator) -> np.ndarray:
    """The channel each of ``n`` items is edited on: ``channel`` for all, or (``channel`` = -1) ``i mod channels``
    over a shuffle drawn from ``rng``; MetricError naming the channel when the images do not have it."""
    if channel >= channels:
        raise MetricError(f"perturbation 'one_contrast_erase': channel={channel}, but the images have {channels} channel(s) "
                          f"(contrasts); expected -1 (one contrast per item) or 0 <= channel <= {channels - 1}")
    if channel >= 0:
        return np.full(n, channel)
    return rng.permutation(np.arange(n) % channels)


@register(
    "one_contrast_erase",
    params=(
        Param("amount", 1.0, 0.0, 1.0, identity=0.0, doc="blend weight of the healthy fill on the chosen contrast (1 = lesion erased there)"),
        Param("channel", -1, -1, 15, doc="the contrast to erase the lesion from (index in the data's contrast order); -1: one per item, "
                                        "each contrast on an equal share of the items", integer=True),
        Param("halo", 1, 0, 5, doc="px (voxels in 3D) beyond the lesion erased with it: its partial-volume edge", integer=True),
    ),
    scope="local",
    strength="amount",
)
def one_contrast_erase(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, amount: float,
                       channel: int, halo: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Erase the lesion from ONE contrast of each item: on that contrast, inside E = dilate(M, halo) (the lesion and its
    partial-volume edge), I' = (1 - amount)·I + amount·healthy_fill(I) (as ``lesion_erase``: in-painting from the
    tissue around E plus matched noise); the other contrasts are left untouched, so a segmenter reading all of them
    still finds the lesion. ``channel`` -1 (default) spreads the erased contrast evenly over the items (a seeded
    shuffle), ``channel`` c erases contrast c of every item. The mask is kept. Only pixels of dilate(M, halo) on the
    chosen contrast change (a ball of radius ``halo``, in 3D too). Valid amount: 0 to 1."""
    region = lesion_region(masks, ctx).detach().cpu().numpy()
    which = one_contrast_channels(images.shape[0], images.shape[1], channel, rng)
    x = images.detach().cpu().numpy()
    out = x.copy()
    for i, c in enumerate(which):
        img, m = x[i, c].astype(np.float64), region[i, 0]
        erased = dilate_ball(m, halo) if halo else m
        out[i, c][erased] = ((1 - amount) * img + amount * healthy_fill(img, erased, rng))[erased]
    return torch.from_numpy(out).to(images.device), masks
