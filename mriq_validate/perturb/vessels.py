"""Localised edits of vessels: gaps cut into a vessel tree, and its small branches pruned. The rules of
:mod:`.morphology` hold here too: pixels change only inside the vessels (or the documented dilation of a gap), masks
are never changed, every contrast gets the same edit, and volumes are edited as 3D objects."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .base import Param, PerturbContext, lesion_region, register
from .morphology import _dilate, _edit_each, _square, noise_sd


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
