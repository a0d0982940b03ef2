"""Write synthetic 3D brain-tumour cohorts in the exact public layouts of BraTS 2021, BraTS 2023, MSD Task01 and
nnU-Net v2 (Dataset137_BraTS2021), so that loaders can be tested on files shaped like the real releases.

Every case is :func:`.mni3d.synthesise_volume` (four contrasts and labels on the MNI template), by default at the BraTS
geometry of 240×240×155 voxels of 1 mm. What each layout fixes, and where it is documented:

- ``brats2021``: ``<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``, ids ``BraTS2021_00000``; labels 1 NCR, 2 ED, 4 ET
  (Baid et al. 2021, arXiv:2107.02314; Bakas et al. 2018, arXiv:1811.02629).
- ``brats2023``: ``<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz``, ids ``BraTS-GLI-00000-000``; labels 1 NETC, 2 SNFH,
  3 ET (BraTS 2023 adult glioma data, https://www.synapse.org/Synapse:syn51156910; the same names and values, plus 4 RC,
  in nnU-Net's ``nnunetv2/dataset_conversion/Dataset226_BraTS2024-BraTS-GLI.py``).
- ``msd``: ``imagesTr/BRATS_001.nii.gz`` 4D with channels FLAIR, T1w, t1gd, T2w, ``labelsTr/BRATS_001.nii.gz`` with
  1 edema, 2 non-enhancing tumor, 3 enhancing tumour, an empty ``imagesTs/`` and the ``dataset.json`` fields of
  Task01_BrainTumour (Antonelli et al. 2022, Nat Commun 13:4128; http://medicaldecathlon.com/).
- ``nnunet``: ``imagesTr/<id>_0000..0003.nii.gz`` (T1, T1ce, T2, Flair), ``labelsTr/<id>.nii.gz`` with the labels
  converted as nnU-Net's ``nnunetv2/dataset_conversion/Dataset137_BraTS21.py`` does (BraTS 2 ED → 1, 1 NCR → 2,
  4 ET → 3) and the ``dataset.json`` its ``generate_dataset_json`` writes: region-based labels
  whole tumor (1, 2, 3), tumor core (2, 3), enhancing tumor (3,) and ``regions_class_order`` (1, 2, 3)
  (https://github.com/MIC-DKFZ/nnUNet).

Data types: images int16 (BraTS, nnU-Net, whose images are the BraTS files copied), float32 4D (MSD); labels uint8.
Orientation ``LPS`` stores the arrays with the first two axes flipped and a diagonal affine with negative x and y
(how BraTS files are commonly stored); ``RAS`` with a positive diagonal. Both describe the same world positions (MNI
mm), so ``nibabel.as_closest_canonical`` gives the same array from either. Deterministic: case ``i`` depends only on
``seed`` and ``i`` (writing 5 cases gives the first 5 of 20). The JSON fields that name the data's origin
(description, reference, licence, release) say that it is synthetic; the structural fields are the published ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .mni3d import BRATS_SHAPE, Case3D, check_geometry, synthesise_volume

ORIENTATIONS = ("LPS", "RAS")
INT16_GAIN = (600.0, 3000.0)  # per case and contrast: the brain's 99th percentile lands in this range of int16 values
SYNTHETIC_NOTE = ("synthetic cohort written by mriq_validate.data.cohort_writer: anatomy from the MNI ICBM152 2009a "
                  "nonlinear symmetric template (nilearn wheel), simulated contrasts and tumours; no patient data")


@dataclass(frozen=True)
class CaseFiles:
    """The arrays of one case as a layout writes them (already oriented) and the affine to store."""

    images: dict[str, np.ndarray]  # canonical contrast → int16 volume
    labels: np.ndarray  # canonical label values, uint8
    affine: np.ndarray


@dataclass(frozen=True)
class Layout:
    """A published cohort layout: case ids, canonical label → stored value, how one case is written, and the
    dataset-level index file (if the layout has one)."""

    name: str
    case_id: Callable[[int], str]
    label_values: dict[int, int]
    write_case: Callable[[Path, str, CaseFiles, "Layout"], list[Path]]
    write_index: Callable[[Path, list[str]], list[Path]] | None = None
    folders: tuple[str, ...] = ()

    def stored_labels(self, labels: np.ndarray) -> np.ndarray:
        """Canonical labels mapped to this layout's values (uint8)."""
        lut = np.zeros(max(max(self.label_values), int(labels.max(initial=0))) + 1, np.uint8)
        for canonical, value in self.label_values.items():
            lut[canonical] = value
        return lut[labels]


@dataclass(frozen=True)
class WrittenCohort:
    """What :func:`write_cohort` wrote: the folder, the layout, the case ids in order, every file, the stored label
    value of each canonical label meaning, and each case's covariates (tumour kind, volumes, site, deformation)."""

    folder: Path
    layout: str
    case_ids: tuple[str, ...]
    files: tuple[Path, ...]
    label_values: dict[str, int]
    covariates: tuple[dict[str, Any], ...] = field(default_factory=tuple)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data`` (its dtype kept, no scaling) as gzip NIfTI-1 with ``affine`` as qform and sform (code 1), mm."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def orient(array: np.ndarray, affine: np.ndarray, orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """``array`` (RAS index order, first three axes spatial) and its affine stored as ``orientation``: LPS flips the
    first two axes and negates their columns, keeping every voxel's world position."""
    if orientation == "RAS":
        return array, affine
    flip = np.eye(4)
    for ax in (0, 1):
        flip[ax, ax] = -1.0
        flip[ax, 3] = array.shape[ax] - 1
    return np.ascontiguousarray(array[::-1, ::-1]), affine @ flip


def _brats_case(sep: str, names: dict[str, str]) -> Callable[[Path, str, CaseFiles, Layout], list[Path]]:
    def write(root: Path, case: str, files: CaseFiles, layout: Layout) -> list[Path]:
        folder = root / case
        folder.mkdir()
        out = [save_nifti(folder / f"{case}{sep}{names[c]}.nii.gz", vol, files.affine) for c, vol in files.images.items()]
        out.append(save_nifti(folder / f"{case}{sep}seg.nii.gz", layout.stored_labels(files.labels), files.affine))
        return out

    return write


MSD_CHANNELS = ("flair", "t1", "t1c", "t2")  # Task01 dataset.json modality 0 FLAIR, 1 T1w, 2 t1gd, 3 T2w


def _msd_case(root: Path, case: str, files: CaseFiles, layout: Layout) -> list[Path]:
    image = np.stack([files.images[c] for c in MSD_CHANNELS], axis=-1).astype(np.float32)
    return [save_nifti(root / "imagesTr" / f"{case}.nii.gz", image, files.affine),
            save_nifti(root / "labelsTr" / f"{case}.nii.gz", layout.stored_labels(files.labels), files.affine)]


def _msd_index(root: Path, cases: list[str]) -> list[Path]:
    index = {
        "name": "BRATS",
        "description": f"Gliomas segmentation tumour and oedema in on brain images ({SYNTHETIC_NOTE})",
        "reference": "layout: http://medicaldecathlon.com/ (Task01_BrainTumour); data: synthetic",
        "licence": "synthetic data; MNI ICBM152 2009a template under its own copyright notice",
        "release": "mriq-validate synthetic",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": len(cases),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
        "test": [],
    }
    path = root / "dataset.json"
    path.write_text(json.dumps(index, indent=4))
    return [path]


NNUNET_CHANNELS = ("t1", "t1c", "t2", "flair")  # Dataset137: _0000 T1, _0001 T1ce, _0002 T2, _0003 Flair


def _nnunet_case(root: Path, case: str, files: CaseFiles, layout: Layout) -> list[Path]:
    out = [save_nifti(root / "imagesTr" / f"{case}_{i:04d}.nii.gz", files.images[c], files.affine) for i, c in enumerate(NNUNET_CHANNELS)]
    out.append(save_nifti(root / "labelsTr" / f"{case}.nii.gz", layout.stored_labels(files.labels), files.affine))
    return out


def _nnunet_index(root: Path, cases: list[str]) -> list[Path]:
    # keys and order of nnunetv2/dataset_conversion/generate_dataset_json.py as Dataset137_BraTS21.py calls it
    index = {
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "licence": "synthetic data; MNI ICBM152 2009a template under its own copyright notice",
        "converted_by": "mriq_validate.data.cohort_writer",
        "reference": SYNTHETIC_NOTE,
        "regions_class_order": [1, 2, 3],
        "dataset_release": "1.0",
    }
    path = root / "dataset.json"
    path.write_text(json.dumps(index, indent=4))
    return [path]


#: The layouts, by name. Label values map canonical meanings (1 necrotic core, 2 oedema, 3 enhancing) to the file's.
LAYOUTS: dict[str, Layout] = {
    "brats2021": Layout("brats2021", lambda i: f"BraTS2021_{i:05d}", {1: 1, 2: 2, 3: 4},
                        _brats_case("_", {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"})),
    "brats2023": Layout("brats2023", lambda i: f"BraTS-GLI-{i:05d}-000", {1: 1, 2: 2, 3: 3},
                        _brats_case("-", {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"})),
    "msd": Layout("msd", lambda i: f"BRATS_{i + 1:03d}", {1: 2, 2: 1, 3: 3}, _msd_case, _msd_index,
                  ("imagesTr", "labelsTr", "imagesTs")),
    "nnunet": Layout("nnunet", lambda i: f"BraTS2021_{i:05d}", {1: 2, 2: 1, 3: 3}, _nnunet_case, _nnunet_index,
                     ("imagesTr", "labelsTr")),
}
LABEL_MEANINGS = {1: "necrotic_core", 2: "oedema", 3: "enhancing"}


def case_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The two independent random streams of case ``index``: the synthesis and the int16 gains."""
    return (np.random.default_rng(np.random.SeedSequence([seed, index])),
            np.random.default_rng(np.random.SeedSequence([seed, index, 1])))


def to_int16(case: Case3D, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each contrast as int16 scanner-like values: scaled so the brain's 99th percentile is a random gain in
    :data:`INT16_GAIN` (independent per contrast, as intensities differ between sequences), rounded, background 0."""
    out = {}
    for contrast, vol in case.images.items():
        inside = vol[vol > 0]  # the brain: the background is exactly zero
        ref = float(np.percentile(inside, 99)) if inside.size else 1.0
        gain = rng.uniform(*INT16_GAIN)
        out[contrast] = np.clip(np.rint(vol * (gain / max(ref, 1e-6))), 0, np.iinfo(np.int16).max).astype(np.int16)
    return out


def _write_one(args: tuple[str, str, int, int, float, tuple[int, int, int], str]) -> tuple[list[Path], dict[str, Any]]:
    folder, layout_name, index, seed, voxel_mm, shape, orientation = args
    layout = LAYOUTS[layout_name]
    synth_rng, gain_rng = case_rngs(seed, index)
    case = synthesise_volume(synth_rng, voxel_mm=voxel_mm, shape=shape)
    images = {c: orient(v, case.affine, orientation)[0] for c, v in to_int16(case, gain_rng).items()}
    labels, affine = orient(case.labels, case.affine, orientation)
    paths = layout.write_case(Path(folder), layout.case_id(index), CaseFiles(images, labels, affine), layout)
    return paths, case.covariates


def write_cohort(folder: str | Path, layout: str, n_cases: int, *, seed: int, voxel_mm: float = 1.0,
                 shape: tuple[int, int, int] = BRATS_SHAPE, orientation: str = "LPS", workers: int = 1) -> WrittenCohort:
    """Write ``n_cases`` synthetic cases into ``folder`` (created; it must not hold anything yet) in ``layout``
    (one of :data:`LAYOUTS`), on a ``shape`` grid of ``voxel_mm`` voxels, stored ``orientation`` (``"LPS"`` or
    ``"RAS"``). ``workers`` > 1 writes cases in that many processes; the files do not depend on it.
    DataError names a bad argument or a non-empty folder."""
    if layout not in LAYOUTS:
        raise DataError(f"cohort layout {layout!r} is unknown; expected one of {sorted(LAYOUTS)}")
    if orientation not in ORIENTATIONS:
        raise DataError(f"orientation {orientation!r} is unknown; expected one of {list(ORIENTATIONS)}")
    if not isinstance(n_cases, int) or n_cases < 1 or not isinstance(workers, int) or workers < 1:
        raise DataError(f"n_cases={n_cases!r}, workers={workers!r}: expected positive integers")
    check_geometry(voxel_mm, shape)
    root = Path(folder)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"{root}: cohort folder exists and is not an empty folder; expected a new or empty folder")
    spec = LAYOUTS[layout]
    root.mkdir(parents=True, exist_ok=True)
    for sub in spec.folders:
        (root / sub).mkdir()
    geometry = (float(voxel_mm), tuple(int(n) for n in shape))
    jobs = [(str(root), layout, i, int(seed), *geometry, orientation) for i in range(n_cases)]
    if workers == 1:
        results = [_write_one(job) for job in jobs]
    else:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_write_one, jobs))
    cases = [spec.case_id(i) for i in range(n_cases)]
    files = [p for paths, _ in results for p in paths]
    if spec.write_index is not None:
        files += spec.write_index(root, cases)
    return WrittenCohort(root, layout, tuple(cases), tuple(files),
                         {LABEL_MEANINGS[k]: v for k, v in spec.label_values.items()}, tuple(cov for _, cov in results))
