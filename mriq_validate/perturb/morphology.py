"""Localised, mask-driven edits of lesions and vessels. No library offers these.

Each edit changes pixels only inside the lesion region (``lesion_region``: the labels in ``ctx.lesion_labels``,
or every label > 0), or inside a documented dilation of it for edits that grow or in-paint; every other pixel
is bit-identical. :func:`_edit_each` enforces this: an edit returns new values *and* the set of pixels it may
write, and nothing else is copied back. Masks are never changed: they say where the lesion should be, so a
segmenter's Dice against them measures the damage done. :func:`~.base.apply` checks that every mask has a lesion
(these are ``scope="local"``) and returns a copy at the identity strength, so the functions here do neither.

Multi-contrast slices (N×C×H×W): the one mask is used on every contrast channel, and each channel replays the
slice's random draws (a ramp direction, gap positions, the fill's noise), so all contrasts get the same edit; the
values follow each contrast's own intensities. Channel 0 uses the draws a single-contrast slice gets.

Volumes (N×C×D×H×W) are edited as 3D objects, once per volume: distances, dilations and erosions use 3D balls
(6-/26-neighbour steps where a slice uses 4-/8-neighbour ones), the ramp direction is drawn on the sphere, a vessel
gap is a ball that cuts through the whole vessel cross-section, and the healthy fill is in-painted in 3D. Lengths are
in voxels (isotropic). Slices keep their OpenCV morphology and Telea in-painting, so 2D results are unchanged.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import cv2
import numpy as np
import torch
from scipy import ndimage

from .base import Param, PerturbContext, lesion_region, register
from .noise import random_direction

Edit = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@functools.cache
def _square(ndim: int) -> np.ndarray:
    """The full 3^n neighbourhood (8 neighbours in 2D, 26 in 3D)."""
    return np.ones((3,) * ndim, bool)


@functools.cache
def _cross(ndim: int) -> np.ndarray:
    """The face neighbourhood (4 neighbours in 2D, 6 in 3D)."""
    return ndimage.generate_binary_structure(ndim, 1)


def _ball(r: int, ndim: int = 2) -> np.ndarray:
    """Voxels within Euclidean distance r of the centre (a disk in 2D)."""
    grid = np.mgrid[(slice(-r, r + 1),) * ndim]
    return (grid * grid).sum(0) <= r * r


def _edit_each(images: torch.Tensor, region: torch.Tensor, edit: Edit, rng: np.random.Generator) -> torch.Tensor:
    """Apply ``edit(img, lesion, rng) -> (values, where)`` to each channel of each slice (float64 numpy); only
    ``where`` is written back. Every channel of a slice replays the slice's draws: channel 0 draws from ``rng`` (which
    goes on from there), channel c > 0 from a copy of ``rng`` as it was before the slice. Works in numpy throughout
    (one conversion each way), since many small torch ops are slow on busy CPUs."""
    x = images.detach().cpu().numpy()
    out = x.copy()
    lesions = region.detach().cpu().numpy()
    for i in range(x.shape[0]):
        before = copy.deepcopy(rng) if x.shape[1] > 1 else rng
        for c in range(x.shape[1]):
            values, where = edit(x[i, c].astype(np.float64), lesions[i, 0], rng if c == 0 else copy.deepcopy(before))
            out[i, c][where] = values[where]
    return torch.from_numpy(out).to(images.device)


def _dilate(mask: np.ndarray, footprint: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary dilation (slices: OpenCV, ~10× faster than scipy on 192² slices; volumes: scipy); pixels beyond the
    edge count as 0."""
    if mask.ndim != 2:
        return ndimage.binary_dilation(mask, footprint, iterations=iterations)
    return cv2.dilate(mask.astype(np.uint8), footprint.astype(np.uint8), iterations=iterations).astype(bool)


def _erode(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Binary erosion; pixels beyond the image edge count as background (as scipy's default)."""
    if mask.ndim != 2:
        return ndimage.binary_erosion(mask, footprint)
    return cv2.erode(mask.astype(np.uint8), footprint.astype(np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def dilate_ball(mask: np.ndarray, r: int) -> np.ndarray:
    """dilate(M, ball of radius r): pixels within Euclidean distance r of M. Volumes via the exact distance
    transform (the same set as the ball footprint, in O(voxels) whatever r)."""
    if mask.ndim == 2:
        return _dilate(mask, _ball(r))
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    return ndimage.distance_transform_edt(~mask) <= r


def erode_ball(mask: np.ndarray, r: int) -> np.ndarray:
    """erode(M, ball of radius r): pixels of M farther than r from every non-M pixel (beyond the edge counts as
    background)."""
    if mask.ndim == 2:
        return _erode(mask, _ball(r))
    inner = (slice(1, -1),) * mask.ndim
    return ndimage.distance_transform_edt(np.pad(mask, 1))[inner] > r


def boundary_band(region: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of the region's edge: dilate(M, w) minus erode(M, w) (ball footprint)."""
    return dilate_ball(region, width) & ~erode_ball(region, width)


def noise_sd(img: np.ndarray, where: np.ndarray) -> float:
    """Robust std (1.4826·MAD) of the high-pass residual I - G_1px * I over ``where``: the noise/texture level,
    insensitive to the few large residuals at tissue edges."""
    if not where.any():
        return 0.0
    resid = (img - ndimage.gaussian_filter(img, 1.0))[where]
    return float(1.4826 * np.median(np.abs(resid - np.median(resid))))


def _propagate(vals: np.ndarray, known: np.ndarray, allowed: np.ndarray, steps: int, alternate: bool) -> np.ndarray:
    """Fill ``allowed`` pixels layer by layer from the ``known`` ones, at most ``steps`` layers: each layer is the
    unknown allowed pixels next to known ones (4-/6-neighbour steps alternating with 8-/26-neighbour ones when
    ``alternate``, else 8-/26-neighbour steps), and each new pixel gets the mean of its known 3^n neighbours.
    ``vals`` and ``known`` are updated in place; returns the last layer written."""
    nd = vals.ndim
    kernel = np.ones((3,) * nd)
    last = np.zeros_like(known)
    for step in range(steps):
        layer = _dilate(known, _cross(nd) if alternate and step % 2 == 0 else _square(nd)) & ~known & allowed
        if not layer.any():
            break
        total = ndimage.convolve(vals * known, kernel, mode="constant")
        count = ndimage.convolve(known.astype(np.float64), kernel, mode="constant")
        vals[layer] = total[layer] / count[layer]
        known |= layer
        last = layer
    return last


def inpaint(img: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``img`` with ``region`` in-painted from the surrounding pixels. Slices: OpenCV's Telea fast-marching method
    (Telea 2004, radius 5, on 8-bit values). Volumes (OpenCV in-paints 2D only): onion-peel filling in 3D, layer by
    layer from the boundary inward, each voxel the mean of its already known 26 neighbours (the layer order of
    Telea's fast marching without its distance weights), within the region's bounding box."""
    if img.ndim == 2:
        u8 = np.clip(img * 255.0, 0, 255).astype(np.uint8)
        return cv2.inpaint(u8, region.astype(np.uint8), 5, cv2.INPAINT_TELEA).astype(np.float64) / 255.0
    out = img.copy()
    idx = np.nonzero(region)
    if not idx[0].size:
        return out
    box = tuple(slice(max(int(a.min()) - 1, 0), int(a.max()) + 2) for a in idx)
    vals, known = out[box], ~region[box]  # views: out is filled in place
    if known.any():
        _propagate(vals, known, region[box], sum(region.shape), alternate=False)
    return out


def healthy_fill(img: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Plausible healthy tissue inside ``region``: in-painting from the surrounding tissue (:func:`inpaint`: Telea
    on slices, 3D onion-peel in volumes), plus noise with the (robust) high-frequency std of a ring of tissue at 3-6 px
    from the lesion, so the fill is neither unnaturally smooth nor noisier than its surroundings."""
    fill = inpaint(img, region)
    ring = dilate_ball(region, 6) & ~dilate_ball(region, 2) & (img > 0.02)
    return np.clip(fill + rng.normal(0.0, noise_sd(img, ring), img.shape), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------- lesion edits


@register(
    "boundary_blur",
    params=(
        Param("sigma", 2.0, 0.0, 8.0, identity=0.0, doc="Gaussian std (px; voxels, isotropic, in 3D) of the blur inside the band"),
        Param("width", 2, 1, 10, doc="half-width (px; voxels in 3D) of the band around the lesion edge", integer=True),
    ),
    scope="local",
    strength="sigma",
)
def boundary_blur(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, sigma: float, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blur the lesion border: inside the band dilate(M, width) \\ erode(M, width) only, I is replaced by its
    Gaussian-smoothed value (Deo et al. 2025, arXiv 2505.07175: localised morphological alterations). Changes stay
    within dilate(M, width). In a volume the band is 3D (ball footprint) and the blur an isotropic 3D Gaussian.
    Valid sigma: 0 to 8 px."""
    region = lesion_region(masks, ctx)

    def edit(img: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return ndimage.gaussian_filter(img, sigma), boundary_band(m, width)

    return _edit_each(images, region, edit, rng), masks


@register(
    "gradient",
    params=(Param("alpha", 0.25, 0.0, 1.0, identity=0.0, doc="ramp amplitude: intensity changes by up to ±alpha·I across the lesion"),),
    scope="local",
    strength="alpha",
)
def gradient(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Change the intensity gradient inside the lesion: I' = I·(1 + alpha·g) on M, where g is a linear ramp across
    the lesion's bounding box, in a direction drawn from ``rng`` per image (on the sphere for a volume), normalised to
    [-1, 1] at the box corners (Deo et al. 2025, arXiv 2505.07175: localised morphological alterations). Only pixels
    of M change. Valid alpha: 0 to 1."""
    region = lesion_region(masks, ctx)

    def edit(img: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        at = np.nonzero(m)
        centre = [(a.min() + a.max()) / 2 for a in at]
        u = random_direction(rng, m.ndim)
        half = sum(abs(u[d]) * (a.max() - a.min()) / 2 for d, a in enumerate(at))
        grid = np.indices(img.shape)
        g = sum((grid[d] - centre[d]) * u[d] for d in range(m.ndim)) / max(half, 0.5)
        return img * (1 + alpha * np.clip(g, -1, 1)), m

    return _edit_each(images, region, edit, rng), masks


@register(
    "texture_flatten",
    params=(Param("beta", 0.5, 0.0, 1.0, identity=0.0, doc="blend weight towards the lesion mean (1 = flat lesion)"),),
    scope="local",
    strength="beta",
)
def texture_flatten(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten the lesion's internal texture: I' = (1 - beta)·I + beta·mean(I | M) on M (per image), which keeps the
    lesion's mean intensity but removes its heterogeneity (Deo et al. 2025, arXiv 2505.07175: localised morphological alterations). Only pixels of M change.
    The mean is each contrast's own. Valid beta: 0 to 1."""
    region = lesion_region(masks, ctx)
    x = images.double()
    w = region.double()
    spatial = tuple(range(2, x.ndim))
    mean = (x * w).sum(spatial, keepdim=True) / w.sum(spatial, keepdim=True)  # per image and contrast
    flat = ((1 - beta) * x + beta * mean).to(images.dtype)
    return torch.where(region, flat, images), masks


@register(
    "lesion_erase",
    params=(Param("amount", 1.0, 0.0, 1.0, identity=0.0, doc="blend weight of the healthy fill (1 = lesion fully erased)"),),
    scope="local",
    strength="amount",
)
def lesion_erase(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, amount: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Erase the lesion: inside the mask, I' = (1 - amount)·I + amount·healthy_fill(I) (Telea in-painting from
    the surrounding tissue plus matched noise). The mask is kept: it says where the lesion should be, so a
    segmenter's Dice against it measures the damage. Only pixels of M change. Valid amount: 0 to 1."""
    region = lesion_region(masks, ctx)

    def edit(img: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return (1 - amount) * img + amount * healthy_fill(img, m, rng), m

    return _edit_each(images, region, edit, rng), masks


def _grow(img: np.ndarray, m: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Propagate lesion intensities k px outward, one layer at a time (each new pixel = mean of its already
    filled 3^n neighbours), within the head (filled ``img > 0.02``), plus noise matching the lesion's texture."""
    support = ndimage.binary_fill_holes(img > 0.02) | m
    vals = img.copy()
    cur = m.copy()
    last = _propagate(vals, cur, support, k, alternate=True)
    ring = cur & ~m
    vals[ring] += rng.normal(0.0, noise_sd(img, m), int(ring.sum()))
    vals[last] = 0.5 * vals[last] + 0.5 * img[last]  # partial-volume edge on the new outer border
    return vals, ring


@register(
    "lesion_resize",
    params=(Param("k", 2, -5, 5, identity=0, doc="signed rim width in px: > 0 grows the lesion's appearance, < 0 shrinks it", integer=True),),
    scope="local",
    strength="k",
)
def lesion_resize(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow or shrink the lesion by |k| px in the IMAGE only; the mask is kept unchanged, so it no longer matches
    the lesion (the error a segmenter trained on these images would learn).

    k > 0: lesion intensities are propagated outward layer by layer (morphological propagation, each new pixel
    the mean of its filled neighbours, plus lesion-matched noise) into the k-px shell around M within the head;
    layers alternate 4- and 8-neighbour steps (6- and 26-neighbour in a volume), so the shell is an octagonal
    dilation (within k px in chessboard distance of M).
    k < 0: the outer |k|-px rim M \\ erode(M, |k|) is replaced by healthy tissue (``healthy_fill`` of M); a lesion
    thinner than 2|k| px disappears. Changes stay within that shell (k > 0) or within M (k < 0). Valid k: -5 to 5."""
    region = lesion_region(masks, ctx)

    def edit(img: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if k > 0:
            return _grow(img, m, k, rng)
        rim = m & ~erode_ball(m, -k)
        return healthy_fill(img, m, rng), rim

    return _edit_each(images, region, edit, rng), masks
