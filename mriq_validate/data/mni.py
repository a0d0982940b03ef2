"""``builtin:mni-tumour``: a deterministic cohort of 2D axial slices in four contrasts (T1, T1c, T2, FLAIR) with
simulated tumours.

What is real: the anatomy and the T1 contrast come from the MNI ICBM152 2009a nonlinear symmetric 1 mm T1 template and
its grey/white-matter maps (a population-average of real scans), read from the nilearn wheel with nibabel.
What is simulated: the T1c, T2 and FLAIR contrasts (from the tissue maps, :mod:`.mri_contrast`), everything that makes
slices differ (axial level, elastic deformation, bias field, per-contrast site contrast/noise profile) and every tumour
(shape, labels 1 necrotic core, 2 oedema, 3 enhancing, and their signal on each contrast). The four channels of a
slice share the anatomy, deformation, bias field and labels. Slices are 128×128 at 1.5 mm so the gate runs in
minutes on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..cache import DiskCache, content_hash
from ..errors import DataError
from .core import Case, ReferenceData, Split, cached_splits, check_size, register_dataset, write_splits
from .mri_contrast import CONTRASTS, TissueMaps, csf_probability, simulate_contrasts
from .preprocess import PREPROCESSING, axial_to_display, centre_crop, normalise_slice

GENERATOR_VERSION = "mni-tumour/2"
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
VOXEL_MM = 1.5
SIZE = (128, 128)
N_TRAIN, N_TEST = 256, 128
AXIAL_RANGE_MM = (50, 118)  # template z-range (1 mm index) with a large brain cross-section
DATA_SEED = 20250512  # fixed: the reference data must not change with the run's seed
LABELS = {"necrotic_core": 1, "oedema": 2, "enhancing": 3}
REGIONS = {"whole_tumour": (1, 2, 3), "tumour_core": (1, 3), "enhancing_tumour": (3,)}
# Simulated acquisition sites: a contrast (gamma) and noise profile each, recorded as covariate ``site``. ``SITES`` is
# the T1 profile (also used by the vessel cohort); ``SITE_PROFILES`` gives every contrast its own at each site (noise
# relative to the channel's 99th brain percentile, before the per-slice normalisation).
SITES = ({"gamma": 1.0, "noise": 0.012}, {"gamma": 0.8, "noise": 0.02}, {"gamma": 1.25, "noise": 0.008})
SITE_WEIGHTS = (0.5, 0.3, 0.2)
SITE_PROFILES: tuple[dict[str, dict[str, float]], ...] = (
    {"t1": SITES[0], "t1c": {"gamma": 1.0, "noise": 0.014}, "t2": {"gamma": 1.0, "noise": 0.015}, "flair": {"gamma": 1.0, "noise": 0.02}},
    {"t1": SITES[1], "t1c": {"gamma": 0.85, "noise": 0.022}, "t2": {"gamma": 1.15, "noise": 0.025}, "flair": {"gamma": 0.9, "noise": 0.03}},
    {"t1": SITES[2], "t1c": {"gamma": 1.2, "noise": 0.01}, "t2": {"gamma": 0.9, "noise": 0.01}, "flair": {"gamma": 1.15, "noise": 0.015}},
)
BRAIN_THRESHOLD = 0.05  # the template T1 is skull-stripped: brain where its intensity is above this


def nilearn_data_dir() -> Path:
    """The folder of MNI templates inside the installed nilearn wheel (nilearn is not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "builtin MNI data needs the MNI152 template that ships inside the nilearn wheel, and nilearn is not "
            "installed; install it with `pip install --no-deps nilearn==0.14.1` (no download at run time)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def template_paths() -> dict[str, Path]:
    """Paths of the T1, GM and WM template files; DataError naming any that is missing."""
    base = nilearn_data_dir()
    paths = {k: base / f for k, f in TEMPLATE_FILES.items()}
    for p in paths.values():
        if not p.is_file():
            raise DataError(f"MNI template file {p} is missing from the nilearn install; reinstall nilearn==0.14.1")
    return paths


@dataclass(frozen=True)
class Template:
    """T1 intensity and GM/WM/CSF probability volumes, float32, RAS, resampled to ``VOXEL_MM``. CSF is what is left of
    the brain mask once GM and WM are taken out (:func:`.mri_contrast.csf_probability`)."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray


def load_template(paths: dict[str, Path]) -> Template:
    """Read the template with nibabel and resample it to ``VOXEL_MM`` mm (trilinear)."""
    import nibabel as nib

    vols = {}
    for key, path in paths.items():
        img = nib.as_closest_canonical(nib.load(str(path)))
        arr = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        vols[key] = ndimage.zoom(arr, 1.0 / VOXEL_MM, order=1)
    vols["csf"] = csf_probability(vols["t1"] > BRAIN_THRESHOLD, vols["gm"], vols["wm"])
    return Template(**vols)


def _radial_profile(rng: np.random.Generator, base: float, amp: float) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic coefficients for an irregular, star-shaped boundary r(θ) = base·(1 + Σ a_k cos(kθ + φ_k))."""
    ks = np.arange(2, 6)
    return rng.uniform(0, amp, ks.size) / ks**0.5, rng.uniform(0, 2 * np.pi, ks.size)


def _boundary(theta: np.ndarray, base: float, coef: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    a, phi = coef
    ks = np.arange(2, 2 + a.size)
    return base * (1 + (a[:, None, None] * np.cos(ks[:, None, None] * theta[None] + phi[:, None, None])).sum(0))


def tumour_labels(brain: np.ndarray, wm: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Labels of one tumour in a slice (display orientation) and its covariates.

    Oedema (2) surrounds an enhancing rim (3) that surrounds a necrotic core (1); 25 % have no necrosis and
    15 % are oedema-only (non-enhancing). The centre lies in white matter, deep enough for the oedema to fit.
    """
    h, w = brain.shape
    r_ed = rng.uniform(5.0, 20.0)
    kind = rng.choice(3, p=[0.6, 0.25, 0.15])  # 0: NCR+ET+ED, 1: ET+ED, 2: ED only
    depth = ndimage.distance_transform_edt(brain)
    candidates = np.argwhere((depth > 0.8 * r_ed + 2) & (wm > 0.3))
    if len(candidates) == 0:
        candidates = np.argwhere(depth >= depth.max() * 0.7)
    cy, cx = candidates[rng.integers(len(candidates))]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rho = np.hypot(yy - cy, xx - cx)
    theta = np.arctan2(yy - cy, xx - cx)

    labels = np.zeros((h, w), np.uint8)
    r_edge = _boundary(theta, r_ed, _radial_profile(rng, r_ed, 0.35))
    labels[rho < r_edge] = LABELS["oedema"]
    r_en = r_ed * rng.uniform(0.45, 0.75)
    if kind in (0, 1):
        r_en_edge = np.minimum(_boundary(theta, r_en, _radial_profile(rng, r_en, 0.25)), r_edge - 1.5)
        labels[rho < r_en_edge] = LABELS["enhancing"]
        if kind == 0:
            r_nc = r_en * rng.uniform(0.4, 0.7)
            r_nc_edge = np.minimum(_boundary(theta, r_nc, _radial_profile(rng, r_nc, 0.2)), r_en_edge - 1.5)
            labels[rho < r_nc_edge] = LABELS["necrotic_core"]
    labels[~brain] = 0
    cov = {"tumour_px": int((labels > 0).sum()), "has_necrosis": int(kind == 0), "has_enhancing": int(kind in (0, 1))}
    return labels, cov


def apply_site(image: np.ndarray, brain: np.ndarray, profile: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """One channel through a site's acquisition: scaled to its 99th brain percentile, gamma (the site's, jittered
    ±8 %), gain, Rician magnitude noise of the site's level, then the per-slice normalisation of Deo et al. 2025."""
    ref = float(np.percentile(image[brain], 99)) if brain.any() else 1.0
    x = np.clip(image / max(ref, 1e-6), 0, None) ** (profile["gamma"] * rng.uniform(0.92, 1.08)) * rng.uniform(0.8, 1.2)
    n1, n2 = rng.normal(0, profile["noise"], (2, *x.shape))
    return normalise_slice(np.sqrt((x + n1) ** 2 + n2**2))  # Rician magnitude noise


def synthesise_case(tpl: Template, rng: np.random.Generator, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """One cohort slice, C×H×W in :data:`.mri_contrast.CONTRASTS` order: a random axial level, a tumour, its four
    contrasts, one elastic deformation and one bias field for all channels, a per-contrast site profile, preprocessing."""
    from monai.transforms import Rand2DElasticd, RandBiasField

    z_lo, z_hi = (round(v / VOXEL_MM) for v in AXIAL_RANGE_MM)
    z = int(rng.integers(z_lo, z_hi))
    t1, gm, wm, csf = (centre_crop(axial_to_display(v[:, :, z]), SIZE) for v in (tpl.t1, tpl.gm, tpl.wm, tpl.csf))
    brain = t1 > BRAIN_THRESHOLD
    labels, cov = tumour_labels(brain, wm, rng)
    contrasts = simulate_contrasts(TissueMaps(t1, gm, wm, csf), labels, rng, voxel_mm=VOXEL_MM)
    stack = np.stack([contrasts[c] for c in CONTRASTS])

    elastic = Rand2DElasticd(
        keys=("image", "label"), spacing=(24, 24), magnitude_range=(0.5, 1.5), rotate_range=(0.15,),
        scale_range=(0.08, 0.08), prob=1.0, mode=("bilinear", "nearest"), padding_mode="zeros",
    )
    elastic.set_random_state(seed=seed % (2**32))
    out = elastic({"image": stack, "label": labels[None].astype(np.float32)})
    stack = np.asarray(out["image"])
    labels = np.asarray(out["label"])[0].round().astype(np.uint8)

    site = int(rng.choice(len(SITES), p=SITE_WEIGHTS))
    bias = RandBiasField(degree=3, coeff_range=(0.05, 0.25), prob=1.0)  # one field, the same for every channel
    bias.set_random_state(seed=(seed + 1) % (2**32))
    stack = np.asarray(bias(stack)) * (stack > 0)
    brain = stack[0] > 0
    image = np.stack([apply_site(stack[i], brain, SITE_PROFILES[site][c], rng) for i, c in enumerate(CONTRASTS)])
    cov.update(site=site, axial_index=z)
    return image, labels, cov


def case_seed(split_name: str, i: int, data_seed: int = DATA_SEED) -> int:
    """The seed of item ``i`` of split ``split_name``: fixed by the data seed, the split and the index alone, so the
    first n items of a larger cohort are the items of the smaller one."""
    return int(np.random.SeedSequence([data_seed, hash_name(split_name), i]).generate_state(1)[0])


def cohort_case(tpl: Template, split_name: str, i: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Item ``i`` of split ``split_name``: image C×H×W, labels H×W, covariates (:func:`synthesise_case`)."""
    seed = case_seed(split_name, i)
    return synthesise_case(tpl, np.random.default_rng(seed), seed)


def split_in_memory(case: Callable[[Template, str, int], Case], tpl: Template, n: int, split_name: str, prefix: str = "") -> Split:
    """``n`` items of ``case`` as one in-memory split (ids ``<prefix><split>-0000``, ...): the items
    :func:`template_cohort` streams into its cache entry, for tests and small tools."""
    cases = [case(tpl, split_name, i) for i in range(n)]
    return Split(
        torch.from_numpy(np.stack([c[0] for c in cases]).astype(np.float32)),
        torch.from_numpy(np.stack([c[1] for c in cases])[:, None].astype(np.int64)),
        tuple(f"{prefix}{split_name}-{i:04d}" for i in range(n)),
        {k: np.array([c[2][k] for c in cases], dtype=np.int64) for k in cases[0][2]},
    )


def hash_name(name: str) -> int:
    """A stable small integer from a split name."""
    return int(content_hash(name)[:8], 16)


def template_cohort(cache: DiskCache, name: str, params: dict[str, Any], case: Callable[[Template, str, int], Case],
                    code: list[Path], labels: dict[str, int], regions: dict[str, tuple[int, ...]], provenance: dict[str, Any],
                    contrasts: tuple[str, ...], *, prefix: str = "") -> ReferenceData:
    """A train/test cohort synthesised from the MNI template, cached by the content hash of its parameters, the
    generating code and the template files. ``case(template, split, i)`` is item ``i`` of a split (image C×H×W, labels
    H×W, covariates); the items are written into the cache entry one at a time (ids ``<prefix><split>-0000``, ...) and
    the splits come back mapped (:func:`.core.cached_splits`)."""
    paths = template_paths()
    key = content_hash(params, *(p.read_bytes() for p in code), *(p.read_bytes() for p in paths.values()))
    sizes = dict(zip(("train", "test"), params["n"]))

    def fill(path: Path) -> None:
        tpl = load_template(paths)
        write_splits(path, {s: [f"{prefix}{s}-{i:04d}" for i in range(n)] for s, n in sizes.items()}, lambda s, i: case(tpl, s, i))

    splits = cached_splits(cache, "data", f"{name}-{key}", fill)
    return ReferenceData(
        name=f"builtin:{name}", train=splits["train"], test=splits["test"], labels=dict(labels), regions=dict(regions),
        spacing_mm=(VOXEL_MM, VOXEL_MM), contrasts=tuple(contrasts),
        provenance={**provenance, "template_files": {k: str(p) for k, p in paths.items()}, "generator": params,
                    "preprocessing": {**PREPROCESSING, "crop": f"centre crop/pad to {SIZE[0]}x{SIZE[1]} at {VOXEL_MM} mm"},
                    "cache_key": key},
    )


@register_dataset("mni-tumour", options=("size",))
def build_mni_tumour(cache: DiskCache, size: Any = None) -> ReferenceData:
    """The embedded default: ``N_TRAIN`` train and ``N_TEST`` test slices, four contrasts each (cached by content hash).
    Data option ``size: [n_train, n_test]`` asks the generator for another number of slices; item ``i`` of a split is
    the same slice whatever the size, so the default cohort is the first slices of any larger one."""
    n = (N_TRAIN, N_TEST) if size is None else check_size(size, ("n_train", "n_test"), "data 'builtin:mni-tumour'")
    params = {"version": GENERATOR_VERSION, "voxel_mm": VOXEL_MM, "size": SIZE, "n": n, "seed": DATA_SEED,
              "sites": SITE_PROFILES, "site_weights": SITE_WEIGHTS, "axial_range_mm": AXIAL_RANGE_MM, "contrasts": CONTRASTS}
    code = [Path(__file__), Path(__file__).parent / "mri_contrast.py"]  # the contrast model lives in mri_contrast.py
    return template_cohort(cache, "mni-tumour", params, cohort_case, code, LABELS, REGIONS, {
        "source": "MNI ICBM152 2009a nonlinear symmetric T1 + GM/WM maps (real, population-average), from the nilearn wheel",
        "simulated": "T1c-, T2- and FLAIR-like contrasts from the tissue maps (the T1 channel is the real template T1), "
                     "axial level, elastic deformation, bias field, per-contrast site contrast/noise, tumours and their labels",
        "contrast_model": "mriq_validate.data.mri_contrast: textbook tissue contrasts, tumour sub-region signals after the "
                          "BraTS annotation protocol (Menze et al. 2015; Bakas et al. 2017)",
    }, CONTRASTS)
