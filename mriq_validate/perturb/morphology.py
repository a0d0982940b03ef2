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
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import cv2
import numpy as np
import torch
from scipy import ndimage

from .base import Param, PerturbContext, lesion_region, register

Edit = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
_SQUARE = np.ones((3, 3), bool)
_CROSS = ndimage.generate_binary_structure(2, 1)


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


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
    """Binary dilation (OpenCV: ~10× faster than scipy on 192² slices; pixels beyond the edge count as 0)."""
    return cv2.dilate(mask.astype(np.uint8), footprint.astype(np.uint8), iterations=iterations).astype(bool)


def _erode(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Binary erosion; pixels beyond the image edge count as background (as scipy's default)."""
    return cv2.erode(mask.astype(np.uint8), footprint.astype(np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def boundary_band(region: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of the region's edge: dilate(M, w) minus erode(M, w)."""
    fp = _disk(width)
    return _dilate(region, fp) & ~_erode(region, fp)


def noise_sd(img: np.ndarray, where: np.ndarray) -> float:
    """Robust std (1.4826·MAD) of the high-pass residual I - G_1px * I over ``where``: the noise/texture level,
    insensitive to the few large residuals at tissue edges."""
    if not where.any():
        return 0.0
    resid = (img - ndimage.gaussian_filter(img, 1.0))[where]
    return float(1.4826 * np.median(np.abs(resid - np.median(resid))))


def healthy_fill(img: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Plausible healthy tissue inside ``region``: OpenCV Telea inpainting from the surrounding tissue, plus noise
    with the (robust) high-frequency std of a ring of tissue 3-6 px from the lesion, so the fill is neither
    unnaturally smooth nor noisier than its surroundings."""
    u8 = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    fill = cv2.inpaint(u8, region.astype(np.uint8), 5, cv2.INPAINT_TELEA).astype(np.float64) / 255.0
    ring = _dilate(region, _disk(6)) & ~_dilate(region, _disk(2)) & (img > 0.02)
    return np.clip(fill + rng.normal(0.0, noise_sd(img, ring), img.shape), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------- lesion edits


@register(
    "boundary_blur",
    params=(
        Param("sigma", 2.0, 0.0, 8.0, identity=0.0, doc="Gaussian std (px) of the blur inside the band"),
        Param("width", 2, 1, 10, doc="half-width (px) of the band around the lesion edge", integer=True),
    ),
    scope="local",
    strength="sigma",
)
def boundary_blur(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, sigma: float, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blur the lesion border: inside the band dilate(M, width) \\ erode(M, width) only, I is replaced by its
    Gaussian-smoothed value (Deo et al. 2025, arXiv 2505.07175: localised morphological alterations). Changes stay within dilate(M, width). Valid sigma: 0 to 8 px."""
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
    the lesion's bounding box, in a direction drawn from ``rng`` per image, normalised to [-1, 1] at the box corners
    (Deo et al. 2025, arXiv 2505.07175: localised morphological alterations). Only pixels of M change. Valid alpha: 0 to 1."""
    region = lesion_region(masks, ctx)

    def edit(img: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = np.nonzero(m)
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        theta = rng.uniform(0, 2 * np.pi)
        u = np.array([np.sin(theta), np.cos(theta)])
        half = abs(u[0]) * (ys.max() - ys.min()) / 2 + abs(u[1]) * (xs.max() - xs.min()) / 2
        yy, xx = np.indices(img.shape)
        g = ((yy - cy) * u[0] + (xx - cx) * u[1]) / max(half, 0.5)
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
    mean = (x * w).sum((2, 3), keepdim=True) / w.sum((2, 3), keepdim=True)  # per slice and contrast
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
    filled 3×3 neighbours), within the head (filled ``img > 0.02``), plus noise matching the lesion's texture."""
    support = ndimage.binary_fill_holes(img > 0.02) | m
    vals = img.copy()
    cur = m.copy()
    kernel = np.ones((3, 3))
    last = np.zeros_like(m)
    for step in range(k):
        layer = _dilate(cur, _CROSS if step % 2 == 0 else _SQUARE) & ~cur & support
        if not layer.any():
            break
        total = ndimage.convolve(vals * cur, kernel, mode="constant")
        count = ndimage.convolve(cur.astype(np.float64), kernel, mode="constant")
        vals[layer] = total[layer] / count[layer]
        cur |= layer
        last = layer
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
    layers alternate 4- and 8-neighbour steps, so the shell is an octagonal dilation (within k px in
    chessboard distance of M).
    k < 0: the outer |k|-px rim M \\ erode(M, |k|) is replaced by healthy tissue (``healthy_fill`` of M); a lesion
    thinner than 2|k| px disappears. Changes stay within that shell (k > 0) or within M (k < 0). Valid k: -5 to 5."""
    region = lesion_region(masks, ctx)

    def edit(img: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if k > 0:
            return _grow(img, m, k, rng)
        rim = m & ~_erode(m, _disk(-k))
        return healthy_fill(img, m, rng), rim

    return _edit_each(images, region, edit, rng), masks


# ---------------------------------------------------------------------------------------------- vessel edits


def _neighbour_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per 8-neighbour code: Zhang–Suen deletion tables for both sub-iterations, the neighbour count B and the
    crossing number A (0→1 transitions around the cycle P2..P9)."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1  # P2, P3, ..., P9 (clockwise from north)
    b = bits.sum(1)
    a = ((bits == 0) & (np.roll(bits, -1, axis=1) == 1)).sum(1)
    p2, p4, p6, p8 = bits[:, 0], bits[:, 2], bits[:, 4], bits[:, 6]
    base = (b >= 2) & (b <= 6) & (a == 1)
    return base & (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0), base & (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0), b, a


_ZS_FIRST, _ZS_SECOND, _NB_COUNT, _CROSSING = _neighbour_tables()
_ZS_WEIGHTS = np.array([[128, 1, 2], [64, 0, 4], [32, 16, 8]])  # P9 P2 P3 / P8 . P4 / P7 P6 P5


def _neighbour_code(binary: np.ndarray) -> np.ndarray:
    return ndimage.correlate(binary.astype(np.int64), _ZS_WEIGHTS, mode="constant")


def skeletonize(region: np.ndarray) -> np.ndarray:
    """One-pixel-wide, 8-connected centreline of a binary region (Zhang & Suen 1984 thinning)."""
    out = np.zeros(region.shape, bool)
    if not region.any():
        return out
    ys, xs = np.nonzero(region)
    box = (slice(max(ys.min() - 1, 0), ys.max() + 2), slice(max(xs.min() - 1, 0), xs.max() + 2))
    out[box] = _thin(region[box].astype(bool))
    return out


def _thin(region: np.ndarray) -> np.ndarray:
    skel = region.copy()
    while True:
        changed = False
        for table in (_ZS_FIRST, _ZS_SECOND):
            delete = skel & table[_neighbour_code(skel)]
            if delete.any():
                skel &= ~delete
                changed = True
        if not changed:
            return skel


def local_background(img: np.ndarray, vessels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Background estimate at every pixel: a Gaussian-weighted (sigma 3 px) mean of the non-vessel pixels
    (outside dilate(V, 2)), plus noise with the high-frequency std of the tissue ringing the vessels."""
    free = ~_dilate(vessels, _SQUARE, iterations=2)
    w = ndimage.gaussian_filter(free.astype(np.float64), 3.0)
    bg = ndimage.gaussian_filter(img * free, 3.0) / np.maximum(w, 1e-6)
    ring = _dilate(vessels, _SQUARE, iterations=5) & free
    return np.clip(bg + rng.normal(0.0, noise_sd(img, ring), img.shape), 0.0, 1.0)


def _vessel_gaps(v: np.ndarray, gaps: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Union of up to ``gaps`` cuts across the vessel: each the pixels of dilate(V, 1) within a disk of radius
    max(length/2, local half-width + 1) of a random centreline pixel; centres at least 2·radius + length apart."""
    dt = ndimage.distance_transform_edt(v)
    ridge = v & (dt >= ndimage.grey_dilation(dt, footprint=_SQUARE))
    near = _dilate(v, _SQUARE)
    yy, xx = np.indices(v.shape)
    cut = np.zeros_like(v)
    free = ridge.copy()
    for _ in range(gaps):
        cand = np.argwhere(free)
        if len(cand) == 0:
            break
        cy, cx = cand[rng.integers(len(cand))]
        r = max(length / 2, dt[cy, cx] + 1.0)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        cut |= near & (d2 <= r * r)
        free &= d2 > (2 * r + length) ** 2
    return cut


@register(
    "vessel_break",
    params=(
        Param("gaps", 3, 0, 20, identity=0, doc="number of gaps cut into the vessel tree (fewer if the tree is too short)", integer=True),
        Param("length", 5, 2, 20, doc="length of each gap along the vessel, px", integer=True),
    ),
    scope="local",
    strength="gaps",
)
def vessel_break(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, gaps: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Break vessels: ``gaps`` cuts of ``length`` px across the vessel at random centreline points, each
    in-painted with the local background (a Gaussian-weighted mean of nearby non-vessel tissue plus matched
    noise), so a connected tree falls apart (Deo et al. 2025, arXiv 2505.07175: localised morphological alterations, vessel break). The vessel label is
    ``ctx.lesion_labels`` (or every label > 0). Changes stay within dilate(V, 1). Valid gaps: 0 to 20."""
    region = lesion_region(masks, ctx)

    def edit(img: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return local_background(img, v, rng), _vessel_gaps(v, gaps, length, rng)

    return _edit_each(images, region, edit, rng), masks


def _prunable(v: np.ndarray, min_area: int) -> np.ndarray:
    """Vessel pixels of terminal branches (skeleton segments with a free end) and of isolated pieces (components
    without a junction) whose area is below ``min_area``. Junction neighbourhoods are kept."""
    skel = skeletonize(v)
    code = _neighbour_code(skel)
    junction = skel & (_CROSSING[code] >= 3)  # branch points by crossing number (robust to staircase corners)
    ends = skel & (_CROSSING[code] <= 1) & (_NB_COUNT[code] <= 3)
    segments, n_seg = ndimage.label(skel & ~_dilate(junction, _SQUARE), structure=_SQUARE)
    if n_seg == 0:
        return np.zeros_like(v)
    # every vessel pixel belongs to the segment of its nearest skeleton pixel (0: a junction neighbourhood)
    _, (iy, ix) = ndimage.distance_transform_edt(~skel, return_indices=True)
    owner = np.where(v, segments[iy, ix], 0)
    area = np.bincount(owner.ravel(), minlength=n_seg + 1)
    terminal = np.bincount(segments[ends], minlength=n_seg + 1) > 0
    comps, _ = ndimage.label(v, structure=_SQUARE)
    has_junction = np.zeros(comps.max() + 1, bool)
    has_junction[comps[junction]] = True
    seg_comp = np.zeros(n_seg + 1, np.int64)
    seg_comp[segments[skel & (segments > 0)]] = comps[skel & (segments > 0)]
    isolated = ~has_junction[seg_comp]
    remove = (area < min_area) & (terminal | isolated)
    remove[0] = False
    out = remove[owner]
    # pieces of the mask with no skeleton segment at all (tiny specks) go when below the threshold too
    speck_area = np.bincount(comps.ravel())
    speck = v & (speck_area[comps] < min_area) & ~has_junction[comps]
    return out | speck


@register(
    "vessel_prune",
    params=(Param("min_area", 30, 0, 400, identity=0, doc="terminal branches and isolated pieces with fewer vessel pixels than this are removed", integer=True),),
    scope="local",
    strength="min_area",
)
def vessel_prune(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, min_area: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune small vessels: the vessel mask is thinned to its centreline (Zhang–Suen) and cut at junctions;
    terminal branches and isolated pieces with fewer than ``min_area`` vessel pixels are erased from the image
    and in-painted with local background (one pass; a branch that becomes terminal is not pruned again)
    (Deo et al. 2025, arXiv 2505.07175: localised morphological alterations, vessel removal). Changes stay within dilate(V, 1) minus the kept vessel.
    Valid min_area: 0 to 400 px."""
    region = lesion_region(masks, ctx)

    def edit(img: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        gone = _prunable(v, min_area)
        if not gone.any():
            return img, gone
        halo = _dilate(gone, _SQUARE) & ~_dilate(v & ~gone, _SQUARE)
        return local_background(img, v, rng), gone | halo

    return _edit_each(images, region, edit, rng), masks
