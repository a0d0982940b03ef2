"""Tissue → MRI contrast simulation: T1-, T1c-, T2- and FLAIR-like images of one brain with one glioma.

A pure, n-dimensional model (2D slices and 3D volumes alike): tissue maps (a real T1 template and grey-matter /
white-matter / CSF probabilities) and a canonical label map (1 necrotic core, 2 oedema, 3 enhancing, 4 resection
cavity; :mod:`.contrasts`) go in, one image per contrast comes out, all on the same anatomy and the same labels.

Normal tissue. T1 and T1c are the template T1 itself (real contrast; post-contrast enhancement of vessels, dura and
choroid plexus is not modelled). T2 and FLAIR are partial-volume mixtures of the tissue probabilities with the
textbook relative signals of structural MRI: T1 WM > GM > CSF; T2 CSF > GM > WM; FLAIR like T2 with the CSF signal
nulled by the inversion pulse, so CSF is dark and GM slightly above WM (e.g. Radiopaedia, "MRI sequences (overview)";
Bitar et al. 2006, RadioGraphics 26(2):513-537, doi:10.1148/rg.262055063).

Tumour. The BraTS annotation protocol defines the sub-regions by how they look on the four contrasts (Menze et al.
2015, IEEE TMI 34(10):1993-2024, doi:10.1109/TMI.2014.2377694; Bakas et al. 2017, Sci Data 4:170117,
doi:10.1038/sdata.2017.117; Bakas et al. 2018, arXiv:1811.02629): the enhancing tumour is hyper-intense on T1c
compared with T1 and with healthy white matter on T1c; the necrotic / non-enhancing core is hypo-intense on T1c
compared with T1; the peritumoral oedema is hyper-intense on T2 and FLAIR, FLAIR separating it from CSF. On native T1
the tumour is hypo- to iso-intense and necrosis dark; on T2 the fluid-like necrosis is brightest, oedema bright, the
solid enhancing tumour intermediate-bright. A resection cavity (BraTS 2024 post-treatment label 4) is fluid: dark on
T1/T1c, bright on T2, suppressed on FLAIR. Each sub-region gets a per-case level drawn from the ranges of
:data:`LESION_SIGNAL` (in units of that contrast's white-matter signal), a smooth random texture shared by all
contrasts (the same tissue seen four ways), and partial-volume edges (the label map blurred into the anatomy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import DataError

#: The simulated contrasts, in the canonical order of :data:`.contrasts.CANONICAL`.
CONTRASTS = ("t1", "t1c", "t2", "flair")
#: Canonical label values (:mod:`.contrasts` convention) and their names.
LABEL_NAMES = {1: "necrotic_core", 2: "oedema", 3: "enhancing", 4: "resection_cavity"}

#: Normal-tissue signal of the mixture contrasts, relative to white matter (WM = 1). T1 and T1c use the template T1.
TISSUE_SIGNAL: dict[str, dict[str, float]] = {
    "t2": {"wm": 1.0, "gm": 1.35, "csf": 2.4},
    "flair": {"wm": 1.0, "gm": 1.2, "csf": 0.2},
}
#: Template T1 contrasts (the real T1 is the normal tissue of both).
TEMPLATE_CONTRASTS = ("t1", "t1c")


@dataclass(frozen=True)
class LesionSignal:
    """The signal of one tumour sub-region on one contrast: a level drawn uniformly in ``[lo, hi]``, in units of the
    contrast's white-matter signal (``relative_to="wm"``) or of the normal tissue underneath (``"tissue"``), plus a
    smooth texture of standard deviation ``texture`` (same units)."""

    lo: float
    hi: float
    relative_to: str = "wm"
    texture: float = 0.04

    def __post_init__(self) -> None:
        if self.relative_to not in ("wm", "tissue") or not 0 <= self.lo <= self.hi:
            raise DataError(f"lesion signal {self}: expected relative_to 'wm' or 'tissue' and 0 <= lo <= hi")


#: Per contrast and sub-region: the ranges are disjoint where the BraTS protocol orders them (e.g. necrosis darker
#: on T1c than on T1, enhancing above WM on T1c only, necrosis > oedema > enhancing > WM on T2, oedema brightest on FLAIR).
LESION_SIGNAL: dict[str, dict[str, LesionSignal]] = {
    "t1": {
        "necrotic_core": LesionSignal(0.26, 0.40),
        "oedema": LesionSignal(0.55, 0.75, "tissue", 0.035),
        "enhancing": LesionSignal(0.75, 0.92, texture=0.05),
        "resection_cavity": LesionSignal(0.22, 0.32, texture=0.02),
    },
    "t1c": {
        "necrotic_core": LesionSignal(0.12, 0.24),
        "oedema": LesionSignal(0.55, 0.75, "tissue", 0.035),
        "enhancing": LesionSignal(1.25, 1.50, texture=0.06),
        "resection_cavity": LesionSignal(0.22, 0.32, texture=0.02),
    },
    "t2": {
        "necrotic_core": LesionSignal(2.05, 2.40, texture=0.06),
        "oedema": LesionSignal(1.60, 1.95, texture=0.06),
        "enhancing": LesionSignal(1.30, 1.55, texture=0.06),
        "resection_cavity": LesionSignal(2.20, 2.50, texture=0.03),
    },
    "flair": {
        "necrotic_core": LesionSignal(0.55, 0.95, texture=0.05),
        "oedema": LesionSignal(1.70, 2.10, texture=0.06),
        "enhancing": LesionSignal(1.25, 1.55, texture=0.06),
        "resection_cavity": LesionSignal(0.15, 0.35, texture=0.02),
    },
}
#: Smoothing, in mm: texture correlation length, blur of the lesion signal, partial-volume width of the lesion edge.
TEXTURE_SIGMA_MM = 2.25
SIGNAL_SIGMA_MM = 0.9
EDGE_SIGMA_MM = 1.2
EDGE_GAIN = 1.6  # the blurred label indicator reaches full weight at 1/EDGE_GAIN
WM_CORE = 0.6  # voxels with P(WM) above this define the white-matter reference signal


@dataclass(frozen=True)
class TissueMaps:
    """Co-registered tissue maps of one slice or volume (same shape, float32): the template T1 intensity and the
    grey-matter, white-matter and CSF probabilities (zero outside the brain)."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray

    def __post_init__(self) -> None:
        shapes = {k: getattr(self, k).shape for k in ("t1", "gm", "wm", "csf")}
        if len(set(shapes.values())) != 1:
            raise DataError(f"tissue maps have different shapes {shapes}; expected one shape for all four")


def csf_probability(brain: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """CSF probability as what is left of the brain mask once grey and white matter are taken out (ventricles,
    sulci and the partial-volume rim at the brain surface)."""
    return np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0).astype(np.float32)


def normal_tissue(tissue: TissueMaps, contrast: str) -> np.ndarray:
    """The tumour-free image of ``contrast``: the template T1 for t1/t1c, the tissue mixture for t2/flair."""
    if contrast in TEMPLATE_CONTRASTS:
        return tissue.t1.astype(np.float32, copy=True)
    if contrast not in TISSUE_SIGNAL:
        raise DataError(f"contrast {contrast!r} cannot be simulated; expected one of {list(CONTRASTS)}")
    s = TISSUE_SIGNAL[contrast]
    return (s["wm"] * tissue.wm + s["gm"] * tissue.gm + s["csf"] * tissue.csf).astype(np.float32)


def white_matter_level(image: np.ndarray, wm: np.ndarray) -> float:
    """Median of ``image`` over core white matter (P(WM) > :data:`WM_CORE`); DataError when there is none."""
    core = wm > WM_CORE
    if not core.any():
        raise DataError(f"tissue maps hold no voxel with P(WM) > {WM_CORE}; the white-matter reference signal of the "
                        "contrast simulation needs some white matter in the slice or volume")
    return float(np.median(image[core]))


def lesion_box(labels: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of the non-zero labels, grown by ``margin`` voxels and clipped to the array."""
    nz = np.nonzero(labels)
    return tuple(slice(max(int(ix.min()) - margin, 0), min(int(ix.max()) + margin + 1, n)) for ix, n in zip(nz, labels.shape))


def simulate_contrasts(tissue: TissueMaps, labels: np.ndarray, rng: np.random.Generator, *, voxel_mm: float,
                       contrasts: tuple[str, ...] = CONTRASTS) -> dict[str, np.ndarray]:
    """One image per contrast (float32, same shape as the maps, arbitrary units) of the anatomy in ``tissue`` with the
    tumour in ``labels`` (canonical values, 0 background). ``voxel_mm`` scales the smoothing lengths (given in mm).

    The lesion levels, the texture and nothing else are drawn from ``rng``, in a fixed order, so the same rng state
    gives the same images. DataError names a label value without a simulated signal or a mismatched shape.
    """
    if labels.shape != tissue.t1.shape:
        raise DataError(f"labels {labels.shape} and tissue maps {tissue.t1.shape} differ in shape; expected the same")
    present = [int(v) for v in np.unique(labels) if v != 0]
    unknown = [v for v in present if v not in LABEL_NAMES]
    if unknown:
        raise DataError(f"label values {unknown} have no simulated MRI signal; expected canonical values {LABEL_NAMES}")
    images = {c: normal_tissue(tissue, c) for c in contrasts}
    if not present:
        return images

    sig_tex, sig_sig, sig_edge = (s / voxel_mm for s in (TEXTURE_SIGMA_MM, SIGNAL_SIGMA_MM, EDGE_SIGMA_MM))
    box = lesion_box(labels, int(np.ceil(4 * max(sig_tex, sig_sig, sig_edge))) + 1)
    lab = labels[box]
    texture = ndimage.gaussian_filter(rng.standard_normal(lab.shape).astype(np.float32), sig_tex)
    texture /= texture.std() + 1e-6
    weight = np.clip(ndimage.gaussian_filter((lab > 0).astype(np.float32), sig_edge) * EDGE_GAIN, 0.0, 1.0)
    for contrast in contrasts:
        base = images[contrast]
        wm_level = white_matter_level(base, tissue.wm)
        local = base[box]
        target = local.copy()
        for value in present:
            spec = LESION_SIGNAL[contrast][LABEL_NAMES[value]]
            region = lab == value
            level = rng.uniform(spec.lo, spec.hi)
            ref = local[region] if spec.relative_to == "tissue" else wm_level
            target[region] = ref * level + wm_level * spec.texture * texture[region]
        blended = local + (ndimage.gaussian_filter(target, sig_sig) - local) * weight
        base[box] = np.clip(blended, 0.0, None)
    return images
