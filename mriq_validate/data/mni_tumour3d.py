"""``builtin:mni-tumour-3d``: a deterministic cohort of 3D volumes in four contrasts (T1, T1c, T2, FLAIR) with
simulated gliomas, the volume counterpart of ``builtin:mni-tumour``.

What is real: the anatomy and the T1 contrast come from the MNI ICBM152 2009a nonlinear symmetric template and its
grey/white-matter maps (nilearn wheel). What is simulated: everything :func:`.mni3d.synthesise_volume` draws per case
(smooth deformation, 3D tumour and its labels, T1c/T2/FLAIR contrasts, bias field, per-contrast site gamma and Rician
noise). The cohort is 64 volumes of D×H×W = 64×72×64 voxels of 3 mm (the synthesis grid X×Y×Z = 64×72×64 in RAS,
the same world box for every case), in the volume convention of :mod:`.volumes` (``volume[:, :, d]`` is an axial slice
oriented like the 2D data, anterior at the top), normalised per volume and contrast within the brain as NIfTI volumes
are (:func:`.volumes.normalise_volume`). Cases are split into train and test by case, as NIfTI folders are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import DiskCache, content_hash
from ..errors import DataError
from .cohort_writer import case_rngs
from .core import ReferenceData, cached_splits, check_size, register_dataset, write_splits
from .mni import LABELS, REGIONS, template_paths
from .mni3d import TUMOUR_KINDS, brain_centre_mm, native_template, output_affine, synthesise_volume
from .mri_contrast import CONTRASTS
from .nifti import DEFAULT_TEST_FRACTION, split_cases
from .volumes import VOLUME_PREPROCESSING, display_affine, display_volume, normalise_volume

GENERATOR_VERSION = "mni-tumour-3d/1"
DATA_SEED = 20250513  # fixed: the reference data must not change with the run's seed
N_CASES = 64
VOXEL_MM = 3.0
SHAPE = (64, 72, 64)  # synthesis grid X×Y×Z (RAS): volumes are D×H×W = (Z, Y, X) = 64×72×64
_CODE = ("mni_tumour3d.py", "mni3d.py", "mri_contrast.py", "volumes.py", "preprocess.py", "cohort_writer.py")


def synthesise_case(index: int, seed: int, voxel_mm: float, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Case ``index`` of the cohort: images C×D×H×W float32 (contrasts in :data:`.mri_contrast.CONTRASTS` order,
    normalised within the brain), labels D×H×W uint8 (1 necrotic core, 2 oedema, 3 enhancing), covariates. The case
    is the one :func:`.cohort_writer.write_cohort` writes as case ``index`` with the same seed and geometry."""
    case = synthesise_volume(case_rngs(seed, index)[0], voxel_mm=voxel_mm, shape=shape)
    images = display_volume(normalise_volume(np.stack([case.images[c] for c in CONTRASTS])))
    labels = display_volume(case.labels)
    kind = list(TUMOUR_KINDS).index(case.covariates["kind"])
    cov = {"site": int(case.covariates["site"]), "tumour_px": int((labels > 0).sum()), "has_necrosis": int(kind == 0),
           "has_enhancing": int(kind in (0, 1))}
    return images, labels, cov


def _save_json(value: Any, path: Path) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def build_mni_tumour_3d(cache: DiskCache, *, n_cases: int = N_CASES, voxel_mm: float = VOXEL_MM,
                        shape: tuple[int, int, int] = SHAPE, seed: int = DATA_SEED) -> ReferenceData:
    """``n_cases`` volumes on a ``shape`` (X×Y×Z, RAS) grid of ``voxel_mm`` voxels, split by case (a fraction
    :data:`.nifti.DEFAULT_TEST_FRACTION` to test), cached by the content hash of the parameters, the generating code and
    the template files. Provenance ``affine_dhw`` is the D×H×W grid's voxel-to-world affine (MNI mm), the same for
    every volume."""
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    params = {"version": GENERATOR_VERSION, "n_cases": int(n_cases), "voxel_mm": float(voxel_mm), "shape_xyz": list(shape),
              "seed": int(seed), "test_fraction": DEFAULT_TEST_FRACTION, "contrasts": CONTRASTS}
    paths = template_paths()
    here = Path(__file__).parent
    key = content_hash(params, *((here / f).read_bytes() for f in _CODE), *(p.read_bytes() for p in paths.values()))
    ids = [f"case-{i:04d}" for i in range(int(n_cases))]
    test = split_cases(ids, DEFAULT_TEST_FRACTION)
    plan = {name: [c for c in ids if (c in test) == (name == "test")] for name in ("train", "test")}
    index = {c: i for i, c in enumerate(ids)}
    splits = cached_splits(cache, "data", f"mni-tumour-3d-{key}", lambda path: write_splits(
        path, plan, lambda s, i: synthesise_case(index[plan[s][i]], int(seed), float(voxel_mm), shape)))  # one volume at a time
    affine = cache.get_or_create(  # the grid is the same world box for every case: computed once, not per load
        "data", f"mni-tumour-3d-{key}-grid", ".json",
        lambda: display_affine(output_affine(voxel_mm, shape, native_template()[1], brain_centre_mm()), shape).tolist(),
        _save_json, _load_json)
    d, h, w = shape[2], shape[1], shape[0]
    return ReferenceData(
        name="builtin:mni-tumour-3d", train=splits["train"], test=splits["test"], labels=dict(LABELS), regions=dict(REGIONS),
        spacing_mm=(float(voxel_mm),) * 3, contrasts=tuple(CONTRASTS),
        provenance={
            "source": "MNI ICBM152 2009a nonlinear symmetric T1 + GM/WM maps (real, population-average), from the nilearn wheel",
            "simulated": "per case: smooth deformation, one 3D tumour and its labels, T1c-, T2- and FLAIR-like contrasts (the "
                         "T1 channel is the deformed template T1), bias field, per-contrast site gamma and Rician noise "
                         "(mriq_validate.data.mni3d.synthesise_volume)",
            "contrast_model": "mriq_validate.data.mri_contrast: textbook tissue contrasts, tumour sub-region signals after the "
                              "BraTS annotation protocol (Menze et al. 2015; Bakas et al. 2017)",
            "template_files": {k: str(p) for k, p in paths.items()}, "generator": params,
            "preprocessing": {**VOLUME_PREPROCESSING, "resampling": f"none: synthesised on the grid ({voxel_mm} mm isotropic)",
                              "crop": f"none: the {d}x{h}x{w} (D×H×W) grid is centred on the template brain"},
            "split": f"by case, {len(test)} of {len(ids)} cases to test (mriq_validate.data.nifti.split_cases)",
            "slicing": "volume", "affine_dhw": affine, "cache_key": key,
        },
    )


@register_dataset("mni-tumour-3d", options=("size",))
def build_default(cache: DiskCache, size: Any = None) -> ReferenceData:
    """The embedded 3D cohort: :data:`N_CASES` volumes of :data:`SHAPE` at :data:`VOXEL_MM` mm (cached by content hash).
    Data option ``size: n_cases`` asks the generator for another number of volumes, split by case as the default (case
    ``i`` is the same volume whatever the size; which cases go to test depends on the whole set of case ids)."""
    if size is None:
        return build_mni_tumour_3d(cache)
    (n_cases,) = check_size(size, ("n_cases",), "data 'builtin:mni-tumour-3d'")
    if n_cases < 2:
        raise DataError(f"data 'builtin:mni-tumour-3d': data option size is {size!r}; expected n_cases >= 2 (one train and one test case)")
    return build_mni_tumour_3d(cache, n_cases=n_cases)
