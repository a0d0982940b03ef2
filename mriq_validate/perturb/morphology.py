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
    on slices, 3D onion-peel in volumes), plus noise with the (robust) high-frequency std of a ring of tissue 3-6 px
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
    """One-pixel-wide, 8-connected centreline of a binary region (Zhang & Suen 1984 thinning); of a volume, a
    26-connected centreline by 3D thinning (:func:`_thin_3d`)."""
    out = np.zeros(region.shape, bool)
    if not region.any():
        return out
    box = tuple(slice(max(int(a.min()) - 1, 0), int(a.max()) + 2) for a in np.nonzero(region))
    out[box] = (_thin if region.ndim == 2 else _thin_3d)(region[box].astype(bool))
    return out


_N18 = ndimage.generate_binary_structure(3, 2)  # the centre, its 6 face and 12 edge neighbours
_FACES = ndimage.generate_binary_structure(3, 1) & ~np.pad(np.ones((1, 1, 1), bool), 1)  # the 6 face neighbours


def _simple_3d(cube: np.ndarray) -> bool:
    """Whether the centre of a 3×3×3 neighbourhood is a simple point of (26, 6) digital topology: deleting it
    changes no connectivity, i.e. its other foreground voxels form one 26-component and the background of its
    18-neighbourhood has one 6-component touching a face neighbour (Bertrand & Malandain 1994, topological numbers)."""
    fg = cube.copy()
    fg[1, 1, 1] = False
    if ndimage.label(fg, structure=np.ones((3, 3, 3), bool))[1] != 1:
        return False
    bg, _ = ndimage.label(~cube & _N18, structure=ndimage.generate_binary_structure(3, 1))
    return len(set(bg[_FACES].tolist()) - {0}) == 1


def _thin_3d(region: np.ndarray) -> np.ndarray:
    """Directional sequential thinning: in turn for each of the 6 face directions, border voxels open in that
    direction are deleted one by one while they stay simple points and are not line ends (one 26-neighbour),
    until nothing changes (the scheme of Lee, Kashyap & Chu 1994, CVGIP 56(6), with the topological-number test
    for simple points). Keeps the topology and leaves a thin, 26-connected centreline."""
    skel = np.pad(region, 1)
    offsets = [tuple(int(v) for v in o) for o in np.argwhere(_FACES) - 1]
    while True:
        changed = False
        for off in offsets:
            opens = skel & ~np.roll(skel, shift=tuple(-o for o in off), axis=(0, 1, 2))
            for z, y, x in np.argwhere(opens):
                cube = skel[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2]
                if cube.sum() > 2 and _simple_3d(cube):  # centre + one neighbour: a line end, kept
                    skel[z, y, x] = False
                    changed = True
        if not changed:
            return skel[1:-1, 1:-1, 1:-1]


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
    free = ~_dilate(vessels, _square(vessels.ndim), iterations=2)
    w = ndimage.gaussian_filter(free.astype(np.float64), 3.0)
    bg = ndimage.gaussian_filter(img * free, 3.0) / np.maximum(w, 1e-6)
    ring = _dilate(vessels, _square(vessels.ndim), iterations=5) & free
    return np.clip(bg + rng.normal(0.0, noise_sd(img, ring), img.shape), 0.0, 1.0)


def _vessel_gaps(v: np.ndarray, gaps: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Union of up to ``gaps`` cuts across the vessel: each the pixels of dilate(V, 1) within a disk of radius
    max(length/2, local half-width + 1) of a random centreline pixel; centres at least 2·radius + length apart."""
    dt = ndimage.distance_transform_edt(v)
    ridge = v & (dt >= ndimage.grey_dilation(dt, footprint=_square(v.ndim)))
    near = _dilate(v, _square(v.ndim))
    grid = np.indices(v.shape)
    cut = np.zeros_like(v)
    free = ridge.copy()
    for _ in range(gaps):
        cand = np.argwhere(free)
        if len(cand) == 0:
            break
        at = cand[rng.integers(len(cand))]
        r = max(length / 2, dt[tuple(at)] + 1.0)
        d2 = sum((grid[d] - at[d]) ** 2 for d in range(v.ndim))
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
    without a junction) whose area (pixels, voxels in 3D) is below ``min_area``. Junction neighbourhoods are kept."""
    skel = skeletonize(v)
    square = _square(v.ndim)
    if v.ndim == 2:
        code = _neighbour_code(skel)
        junction = skel & (_CROSSING[code] >= 3)  # branch points by crossing number (robust to staircase corners)
        ends = skel & (_CROSSING[code] <= 1) & (_NB_COUNT[code] <= 3)
    else:  # 3D: by the number of 26-neighbours on the centreline
        count = ndimage.convolve(skel.astype(np.int64), square.astype(np.int64), mode="constant") - 1
        junction, ends = skel & (count >= 3), skel & (count <= 1)
    segments, n_seg = ndimage.label(skel & ~_dilate(junction, square), structure=square)
    if n_seg == 0:
        return np.zeros_like(v)
    # every vessel pixel belongs to the segment of its nearest skeleton pixel (0: a junction neighbourhood)
    _, nearest = ndimage.distance_transform_edt(~skel, return_indices=True)
    owner = np.where(v, segments[tuple(nearest)], 0)
    area = np.bincount(owner.ravel(), minlength=n_seg + 1)
    terminal = np.bincount(segments[ends], minlength=n_seg + 1) > 0
    comps, _ = ndimage.label(v, structure=square)
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
    """Prune small vessels: the vessel mask is thinned to its centreline (Zhang–Suen; 3D thinning in a volume, where
    junctions are centreline voxels with 3 or more 26-neighbours) and cut at junctions;
    terminal branches and isolated pieces with fewer than ``min_area`` vessel pixels are erased from the image
    and in-painted with local background (one pass; a branch that becomes terminal is not pruned again)
    (Deo et al. 2025, arXiv 2505.07175: localised morphological alterations, vessel removal). Changes stay within dilate(V, 1) minus the kept vessel.
    Valid min_area: 0 to 400 px."""
    region = lesion_region(masks, ctx)

    def edit(img: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        gone = _prunable(v, min_area)
        if not gone.any():
            return img, gone
        halo = _dilate(gone, _square(v.ndim)) & ~_dilate(v & ~gone, _square(v.ndim))
        return local_background(img, v, rng), gone | halo

    return _edit_each(images, region, edit, rng), masks
