"""``builtin:mni-vessel``: a deterministic cohort of 2D MRA-like (time-of-flight-like) slices with thin vessel trees.

What is real: the brain anatomy under the vessels (the dim stationary-tissue background) comes from the MNI
ICBM152 2009a nonlinear symmetric T1 template in the nilearn wheel, as for ``builtin:mni-tumour``.
What is simulated: everything else. Bright, tortuous, branching vessel trees (widths 1–3 px, tapering, children
narrower than parents) are grown by a persistent random walk inside the brain and rendered with partial volume
(4× supersampling); the label is 1 where a pixel is at least half vessel. Background suppression (TOF-like),
bias field, site contrast and Rician noise follow the tumour cohort. 128×128 slices at 1.5 mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..cache import DiskCache
from .core import ReferenceData, register_dataset
from .mni import AXIAL_RANGE_MM, SITE_WEIGHTS, SITES, SIZE, VOXEL_MM, Template, case_seed, template_cohort
from .preprocess import axial_to_display, centre_crop, normalise_slice

GENERATOR_VERSION = "mni-vessel/1"
N_TRAIN, N_TEST = 192, 96
DATA_SEED = 20250601  # fixed: the reference data must not change with the run's seed
LABELS = {"vessel": 1}
REGIONS = {"vessel": (1,)}
SUPERSAMPLE = 4
TREE = {  # vessel-tree growth parameters, in pixels of the 128×128 grid
    "trees": (3, 6), "root_width": (2.2, 3.0), "min_width": 1.0, "taper_per_px": 0.988, "branch_prob": 0.08,
    "child_width": (0.6, 0.85), "branch_angle_rad": (0.45, 1.1), "length": (35, 75), "child_length": (10, 40),
    "turn_sd": 0.1, "curvature_sd": 0.02, "curvature_decay": 0.8, "max_branches": 30,
}
TISSUE_GAIN = 0.22  # stationary tissue is saturated in TOF MRA: background ≈ 0.22·T1
VESSEL_SIGNAL = (0.75, 1.0)


@dataclass(frozen=True)
class Branch:
    """One vessel segment to grow: start point (row, col), heading (rad), width and length (px)."""

    y: float
    x: float
    angle: float
    width: float
    length: float


def grow_tree(root: Branch, inside: np.ndarray, rng: np.random.Generator) -> list[tuple[float, float, float, float, float]]:
    """Grow a branching tree from ``root`` by a persistent random walk (1 px steps, smoothly varying heading),
    tapering as it goes and spawning narrower children; it stops outside ``inside`` or below the minimum width.
    Returns the drawn pieces (y0, x0, y1, x1, width)."""
    p = TREE
    pieces: list[tuple[float, float, float, float, float]] = []
    stack, n_branches = [root], 0
    h, w = inside.shape
    while stack and n_branches < p["max_branches"]:
        b = stack.pop()
        n_branches += 1
        y, x, angle, width, curv = b.y, b.x, b.angle, b.width, 0.0
        for step in range(int(b.length)):
            curv = p["curvature_decay"] * curv + rng.normal(0.0, p["curvature_sd"])
            angle += curv + rng.normal(0.0, p["turn_sd"])
            ny, nx = y + np.sin(angle), x + np.cos(angle)
            iy, ix = int(round(ny)), int(round(nx))
            if not (0 <= iy < h and 0 <= ix < w and inside[iy, ix]):
                break
            pieces.append((y, x, ny, nx, width))
            y, x = ny, nx
            width *= p["taper_per_px"]
            if width < p["min_width"]:
                break
            if step >= 5 and rng.random() < p["branch_prob"]:
                child_w = width * rng.uniform(*p["child_width"])
                if child_w >= p["min_width"]:
                    turn = rng.uniform(*p["branch_angle_rad"]) * rng.choice([-1.0, 1.0])
                    stack.append(Branch(y, x, angle + turn, child_w, rng.uniform(*p["child_length"])))
    return pieces


def render(pieces: list[tuple[float, float, float, float, float]], shape: tuple[int, int]) -> np.ndarray:
    """Partial-volume vessel fraction per pixel: thick lines drawn at SUPERSAMPLE× and area-averaged."""
    import cv2

    s = SUPERSAMPLE
    canvas = np.zeros((shape[0] * s, shape[1] * s), np.uint8)
    for y0, x0, y1, x1, width in pieces:
        p0 = (int(round((x0 + 0.5) * s)), int(round((y0 + 0.5) * s)))
        p1 = (int(round((x1 + 0.5) * s)), int(round((y1 + 0.5) * s)))
        cv2.line(canvas, p0, p1, 255, thickness=max(1, int(round(width * s))), lineType=cv2.LINE_8)
    return canvas.reshape(shape[0], s, shape[1], s).mean((1, 3)) / 255.0


def synthesise_vessel_case(tpl: Template, rng: np.random.Generator, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """One MRA-like slice: dim tissue background from the template, vessel trees, bias field, site profile."""
    from monai.transforms import RandBiasField

    z_lo, z_hi = (round(v / VOXEL_MM) for v in AXIAL_RANGE_MM)
    z = int(rng.integers(z_lo, z_hi))
    t1 = centre_crop(axial_to_display(tpl.t1[:, :, z]), SIZE)
    brain = t1 > 0.05
    inside = ndimage.distance_transform_edt(brain) > 2.0
    candidates = np.argwhere(ndimage.distance_transform_edt(brain) > 8.0)
    pieces = []
    for _ in range(int(rng.integers(*TREE["trees"]))):
        cy, cx = candidates[rng.integers(len(candidates))]
        root = Branch(float(cy), float(cx), rng.uniform(0, 2 * np.pi), rng.uniform(*TREE["root_width"]), rng.uniform(*TREE["length"]))
        pieces += grow_tree(root, inside, rng)
    frac = render(pieces, SIZE)
    labels = (frac >= 0.5).astype(np.uint8)

    background = TISSUE_GAIN * t1 * (1 + 0.05 * ndimage.gaussian_filter(rng.standard_normal(SIZE), 4.0))
    signal = rng.uniform(*VESSEL_SIGNAL)
    image = ndimage.gaussian_filter(background * (1 - frac) + signal * frac, 0.4)  # slight point-spread

    site = int(rng.choice(len(SITES), p=SITE_WEIGHTS))
    profile = SITES[site]
    bias = RandBiasField(degree=3, coeff_range=(0.05, 0.2), prob=1.0)
    bias.set_random_state(seed=seed % (2**32))
    image = np.asarray(bias(image[None]))[0] * (t1 > 0.02)
    image = np.clip(image, 0, None) ** (profile["gamma"] * rng.uniform(0.92, 1.08)) * rng.uniform(0.8, 1.2)
    n1, n2 = rng.normal(0, profile["noise"], (2, *image.shape))
    image = normalise_slice(np.sqrt((image + n1) ** 2 + n2**2))  # Rician magnitude noise, then Deo et al. scaling
    cov = {"site": site, "axial_index": z, "vessel_px": int(labels.sum()), "tree_length_px": len(pieces)}
    return image, labels, cov


def vessel_case(tpl: Template, split_name: str, i: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Item ``i`` of split ``split_name``: image 1×H×W, labels H×W, covariates (:func:`synthesise_vessel_case`)."""
    seed = case_seed(split_name, i, DATA_SEED)
    image, labels, cov = synthesise_vessel_case(tpl, np.random.default_rng(seed), seed)
    return image[None], labels, cov


@register_dataset("mni-vessel")
def build_mni_vessel(cache: DiskCache) -> ReferenceData:
    """``N_TRAIN`` train and ``N_TEST`` test MRA-like slices with vessel labels (cached by content hash)."""
    params = {"version": GENERATOR_VERSION, "voxel_mm": VOXEL_MM, "size": SIZE, "n": (N_TRAIN, N_TEST), "seed": DATA_SEED,
              "sites": SITES, "site_weights": SITE_WEIGHTS, "axial_range_mm": AXIAL_RANGE_MM, "tree": TREE,
              "supersample": SUPERSAMPLE, "tissue_gain": TISSUE_GAIN, "vessel_signal": VESSEL_SIGNAL}
    code = [Path(__file__), Path(__file__).parent / "mni.py"]  # load_template and the site profiles live in mni.py
    return template_cohort(cache, "mni-vessel", params, vessel_case, code, LABELS, REGIONS, {
        "source": "MNI ICBM152 2009a nonlinear symmetric T1 (real, population-average), from the nilearn wheel: "
                  "the dim stationary-tissue background only",
        "simulated": "vessel trees (random-walk growth, widths 1-3 px, tapering branches) and their labels, "
                     "TOF-like background suppression, bias field, site contrast/noise, axial level",
        "real_vs_simulated_note": "no real angiography is involved; vessel geometry is not anatomical (no Circle of Willis)",
    }, ("tof",), prefix="vessel-")
