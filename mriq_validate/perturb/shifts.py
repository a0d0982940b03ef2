"""Distribution shifts on a whole set: external and internal duplication, mode collapse, density shift.

Every set-level edit keeps N and the positions of the items it does not touch: it *overwrites* chosen slots
(image and mask together) with other items, so item i of the output is either item i of the input or a
replacement. Which slots were replaced is visible only in the returned tensors (compare with the input) and is
replayed exactly by the same seed. Counts use :func:`n_of` (round half up), e.g. p = 0.15 of N = 10 → 2. Items move
whole: every contrast channel with its mask; an item is a slice (C×H×W) or a whole volume (C×D×H×W), and the
training items in :class:`~.base.PerturbContext` must be of the same shape.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
from scipy import ndimage

from ..errors import MetricError
from .base import Param, PerturbContext, lesion_region, register


def n_of(fraction: float, n: int) -> int:
    """round(fraction·n), halves rounded up (so the count never depends on banker's rounding)."""
    return int(math.floor(fraction * n + 0.5))


def _overwrite(images: torch.Tensor, masks: torch.Tensor, slots: np.ndarray, src_images: torch.Tensor,
               src_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out_i, out_m = images.clone(), masks.clone()
    if len(slots):
        t = torch.as_tensor(slots, dtype=torch.long)
        out_i[t] = src_images.to(images.dtype)
        out_m[t] = src_masks.to(masks.dtype)
    return out_i, out_m


def _draw(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
    """k items of ``pool``: without replacement where the pool is big enough, with replacement otherwise."""
    return rng.choice(pool, size=k, replace=k > len(pool))


# ---------------------------------------------------------------------------------------------- duplication

Augment = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _aug_noise(img: np.ndarray, mask: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return img + rng.normal(0.0, 0.01, img.shape), mask


def _aug_rotate(img: np.ndarray, mask: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A rotation in the H×W plane (the axial plane, about the inferior-superior axis, for a D×H×W volume)."""
    angle = rng.uniform(-10.0, 10.0)
    return (ndimage.rotate(img, angle, axes=(-1, -2), reshape=False, order=1, mode="constant"),
            ndimage.rotate(mask, angle, axes=(-1, -2), reshape=False, order=0, mode="constant"))


def _aug_scale(img: np.ndarray, mask: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return img * rng.uniform(0.9, 1.1), mask


def _aug_blend(img: np.ndarray, mask: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = rng.uniform(0.6, 0.8)
    return a * img + (1 - a) * other, mask


# The light disguises of Mem-index ``create_contamination.py``; one is drawn per duplicated item.
AUGMENTATIONS: tuple[Augment, ...] = (_aug_noise, _aug_rotate, _aug_scale, _aug_blend)


@register(
    "external_duplication",
    params=(
        Param("p", 0.15, 0.0, 1.0, identity=0.0, doc="fraction of the set replaced by training items (count round(p·N))"),
        Param("augment", 0, 0, 1, identity=None, doc="0: exact copies; 1: each copy lightly disguised", integer=True),
    ),
    scope="set",
    strength="p",
    changes_mask=True,
)
def external_duplication(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, p: float, augment: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Memorisation: round(p·N) random slots are overwritten with training images and their masks from
    ``ctx.train_images`` / ``ctx.train_masks`` (drawn without replacement while the training set suffices).
    With augment = 1 each copy gets one disguise drawn at random: noise N(0, 0.01), a rotation of ±10°
    (in the axial H×W plane for a volume; mask rotated too, nearest neighbour), intensity ×U(0.9, 1.1), or a blend α·train + (1-α)·replaced item,
    α ~ U(0.6, 0.8) (mask of the training item) (Mem-index ``create_contamination.py``); every contrast of a copy gets
    the same disguise. Valid p: 0 to 1."""
    n = images.shape[0]
    k = n_of(p, n)
    if k == 0:
        return images.clone(), masks.clone()
    if ctx.train_images is None or ctx.train_masks is None or len(ctx.train_images) == 0:
        raise MetricError("perturbation 'external_duplication' needs the training images and masks (ctx.train_images/train_masks)")
    if tuple(ctx.train_images.shape[1:]) != tuple(images.shape[1:]):
        raise MetricError(f"perturbation 'external_duplication': training images {tuple(ctx.train_images.shape[1:])} do not "
                          f"match the evaluated images {tuple(images.shape[1:])}")
    slots = rng.choice(n, size=k, replace=False)
    src = _draw(rng, np.arange(len(ctx.train_images)), k)
    src_t = torch.as_tensor(src, dtype=torch.long)
    new_i, new_m = ctx.train_images[src_t].clone(), ctx.train_masks[src_t].clone()
    if augment:
        for j, slot in enumerate(slots):
            aug = AUGMENTATIONS[int(rng.integers(len(AUGMENTATIONS)))]
            before = copy.deepcopy(rng) if images.shape[1] > 1 else rng
            mask = new_m[j, 0].numpy().copy()
            for c in range(images.shape[1]):  # every contrast: the same disguise (channel c > 0 replays the draws)
                img, msk = aug(new_i[j, c].double().numpy(), mask, images[slot, c].double().numpy(), rng if c == 0 else copy.deepcopy(before))
                new_i[j, c] = torch.from_numpy(np.clip(img, 0.0, 1.0)).to(new_i.dtype)
                if c == 0:
                    new_m[j, 0] = torch.from_numpy(np.ascontiguousarray(msk)).to(new_m.dtype)
    return _overwrite(images, masks, slots, new_i, new_m)


@register(
    "internal_duplication",
    params=(Param("p", 0.15, 0.0, 0.95, identity=0.0, doc="fraction of the set overwritten by copies of other items (count round(p·N) < N)"),),
    scope="set",
    strength="p",
    changes_mask=True,
)
def internal_duplication(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced diversity: round(p·N) random slots are overwritten with exact copies (image and mask) of items
    drawn, with replacement, from the slots that are kept, so the set holds N - round(p·N) distinct items
    (Mem-index ``create_contamination.py``). Valid p: 0 to 0.95; round(p·N) must be below N."""
    n = images.shape[0]
    k = n_of(p, n)
    if k == 0:
        return images.clone(), masks.clone()
    if k >= n:
        raise MetricError(f"perturbation 'internal_duplication': p={p} of {n} images leaves no item to copy from; use a smaller p or more images")
    slots = rng.choice(n, size=k, replace=False)
    keep = np.setdiff1d(np.arange(n), slots)
    src = torch.as_tensor(rng.choice(keep, size=k, replace=True), dtype=torch.long)
    return _overwrite(images, masks, slots, images[src], masks[src])


# ---------------------------------------------------------------------------------------------- category shifts


def _covariate(ctx: PerturbContext, name: str, n: int) -> np.ndarray | None:
    values = ctx.covariates.get(name) if isinstance(ctx.covariates, Mapping) else None
    if values is None:
        return None
    values = np.asarray(values)
    if len(values) != n:
        raise MetricError(f"covariate {name!r} has {len(values)} values but the set has {n} images")
    return values


def _large(masks: torch.Tensor, ctx: PerturbContext) -> np.ndarray:
    px = _covariate(ctx, "tumour_px", masks.shape[0])
    if px is None:
        px = lesion_region(masks, ctx).flatten(1).sum(1).numpy()
    return px > np.median(px)


def _has_label(covariate: str, label: int) -> Callable[[torch.Tensor, PerturbContext], np.ndarray]:
    def member(masks: torch.Tensor, ctx: PerturbContext) -> np.ndarray:
        flag = _covariate(ctx, covariate, masks.shape[0])
        return flag.astype(bool) if flag is not None else (masks == label).flatten(1).any(1).numpy()

    return member


# code -> (description, membership test). Covariates (aligned with the images) are used when given, else the masks.
CATEGORIES: dict[int, tuple[str, Callable[[torch.Tensor, PerturbContext], np.ndarray]]] = {
    0: ("large tumours (tumour_px, or lesion pixels, above the set's median)", _large),
    1: ("necrosis present (has_necrosis, or any mask label 1)", _has_label("has_necrosis", 1)),
    2: ("enhancing tumour present (has_enhancing, or any mask label 3)", _has_label("has_enhancing", 3)),
}


@register(
    "mode_collapse",
    params=(
        Param("fraction", 0.5, 0.0, 1.0, identity=0.0, doc="share of the category's items removed (1 = category gone)"),
        Param("category", 0, 0, 2, identity=None, doc="0 large tumours, 1 necrosis present, 2 enhancing present", integer=True),
    ),
    scope="set",
    strength="fraction",
    changes_mask=True,
)
def mode_collapse(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, fraction: float, category: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mode collapse: the category's share of the set is cut by ``fraction``. round(fraction·n_cat) random items
    of the category are overwritten by copies (image and mask) of items outside it, drawn with replacement;
    N is kept. Categories (integer code, since parameters are numbers): 0 = large tumours (covariate
    ``tumour_px`` above its median, else lesion pixel count), 1 = necrosis present (``has_necrosis``, else mask
    label 1), 2 = enhancing tumour present (``has_enhancing``, else mask label 3). Valid fraction: 0 to 1."""
    member = CATEGORIES[category][1](masks, ctx)
    inside, outside = np.flatnonzero(member), np.flatnonzero(~member)
    k = n_of(fraction, len(inside))
    if k == 0:
        return images.clone(), masks.clone()
    if len(outside) == 0:
        raise MetricError(f"perturbation 'mode_collapse': every image is in category {category} "
                          f"({CATEGORIES[category][0]}), so none is left to replace them with")
    slots = rng.choice(inside, size=k, replace=False)
    src = torch.as_tensor(rng.choice(outside, size=k, replace=True), dtype=torch.long)
    return _overwrite(images, masks, slots, images[src], masks[src])


@register(
    "density_shift",
    params=(
        Param("weight", 0.8, 0.0, 1.0, identity=None, doc="target share of the set from site `site` (identity: its current share)"),
        Param("site", 0, 0, 2, identity=None, doc="simulated scanner site (covariate `site`) whose share is set", integer=True),
    ),
    scope="set",
    strength="weight",
    changes_mask=True,
)
def density_shift(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, weight: float, site: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scanner density shift: the set is resampled so that round(weight·N) items come from ``site`` (covariate
    ``site`` in ``ctx.covariates``, aligned with the images). If the site has too few items, random other-site
    slots are overwritten by copies of site items (without replacement while they last); if too many, random
    site slots are overwritten by copies of other-site items. N and untouched slots are kept. Valid weight: 0 to 1."""
    sites = _covariate(ctx, "site", images.shape[0])
    if sites is None:
        raise MetricError("perturbation 'density_shift' needs the covariate 'site' aligned with the images (ctx.covariates)")
    n = images.shape[0]
    target = n_of(weight, n)
    ours, others = np.flatnonzero(sites == site), np.flatnonzero(sites != site)
    short = target - len(ours)
    if short == 0:
        return images.clone(), masks.clone()
    donors, victims = (ours, others) if short > 0 else (others, ours)
    if len(donors) == 0:
        raise MetricError(f"perturbation 'density_shift': weight={weight} for site {site} needs images "
                          f"{'from' if short > 0 else 'not from'} site {site}, and the set has none")
    slots = rng.choice(victims, size=abs(short), replace=False)
    src = torch.as_tensor(_draw(rng, donors, abs(short)), dtype=torch.long)
    return _overwrite(images, masks, slots, images[src], masks[src])
