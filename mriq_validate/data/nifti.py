"""NIfTI folders of user data, preprocessed as in Deo et al. 2025 (see :mod:`.preprocess`).

Layouts:
* BraTS: ``<case>/<case>_<modality>.nii.gz`` + ``<case>_seg.nii.gz`` (``-`` separators as in BraTS 2023 too);
  BraTS label 4 (enhancing, before 2023) is mapped to 3.
* nnU-Net / Medical Segmentation Decathlon: ``imagesTr/<case>.nii.gz`` or ``imagesTr/<case>_0000.nii.gz`` +
  ``labelsTr/<case>.nii.gz``; ``modality`` is then the channel index (a 4D image's last axis, or the ``_XXXX`` suffix).

Volumes are reoriented to RAS; axial slices (axis 2) with a lesion (``slices: lesion``) or with brain
(``slices: all``) are kept; splits are by case (never by slice), deterministic in the case id.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import DiskCache, content_hash
from ..errors import DataError
from .core import ReferenceData, Split, load_splits, save_splits
from .preprocess import PREPROCESSING, axial_to_display, centre_crop, normalise_slice

LOADER_VERSION = "nifti/1"
BRATS_LABELS = {"necrotic_core": 1, "oedema": 2, "enhancing": 3}
BRATS_REGIONS = {"whole_tumour": (1, 2, 3), "tumour_core": (1, 3), "enhancing_tumour": (3,)}
NII = (".nii.gz", ".nii")
# The loading options of a NIfTI folder when none are given; a suite's ``data:`` block (suite.DataOptions) defaults to these.
DEFAULT_MODALITY = "t1"  # BraTS: the file suffix; imagesTr/labelsTr: the channel index
DEFAULT_CROP = (192, 192)  # in-plane centre crop (pixels), as in Deo et al. 2025
DEFAULT_TEST_FRACTION = 0.3  # of the cases (split by case, never by slice)
DEFAULT_SLICES = "lesion"  # axial slices with a lesion ("all": every slice with brain)


def _strip(name: str) -> str:
    for s in NII:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def find_cases(folder: Path, modality: str) -> tuple[str, list[tuple[str, Path, Path, int | None]]]:
    """(layout, [(case id, image file, label file, channel)]) for ``folder``; DataError when empty or ambiguous."""
    if not folder.is_dir():
        raise DataError(f"--mriq-data {folder}: folder does not exist")
    if (folder / "imagesTr").is_dir():
        labels_dir = folder / "labelsTr"
        if not labels_dir.is_dir():
            raise DataError(f"{folder}: has imagesTr/ but no labelsTr/ (nnU-Net/MSD layout needs both)")
        channel = int(modality) if modality.isdigit() else 0
        cases = []
        for lab in sorted(p for p in labels_dir.iterdir() if p.name.endswith(NII)):
            cid = _strip(lab.name)
            cands = [folder / "imagesTr" / f"{cid}_{channel:04d}{s}" for s in NII] + [folder / "imagesTr" / f"{cid}{s}" for s in NII]
            img = next((c for c in cands if c.exists()), None)
            if img is None:
                raise DataError(f"{lab}: no image for case {cid!r} in {folder / 'imagesTr'} (looked for {cands[0].name} and {cands[2].name})")
            cases.append((cid, img, lab, channel if _strip(img.name) == cid else None))
        layout = "imagesTr/labelsTr"
    else:
        cases = []
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            files = [p for p in case_dir.iterdir() if p.name.endswith(NII)]
            pick = lambda suffix: [p for p in files if re.search(rf"[_-]{re.escape(suffix)}$", _strip(p.name), re.IGNORECASE)]  # noqa: E731
            segs, imgs = pick("seg"), pick(modality)
            if not files:
                continue
            if len(segs) != 1 or len(imgs) != 1:
                raise DataError(f"{case_dir}: expected one *_{modality}.nii.gz and one *_seg.nii.gz (BraTS layout), found "
                                f"{[p.name for p in files]}")
            cases.append((case_dir.name, imgs[0], segs[0], None))
        layout = "brats"
    if not cases:
        raise DataError(f"--mriq-data {folder}: no cases found; expected BraTS case folders (<case>/<case>_{modality}.nii.gz + "
                        "<case>_seg.nii.gz) or imagesTr/ + labelsTr/")
    return layout, cases


def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """RAS-reoriented array and voxel sizes; DataError naming the file when it is not a readable NIfTI."""
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        arr = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{path}: contains NaN or infinite values")
    return arr, tuple(float(z) for z in img.header.get_zooms())


def _case_slices(cid: str, img_path: Path, lab_path: Path, channel: int | None, crop: tuple[int, int], slices: str,
                 label_map: dict[int, int]) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    img, zooms = read_volume(img_path)
    lab, lzooms = read_volume(lab_path)
    if img.ndim == 4:
        if channel is None or channel >= img.shape[3]:
            raise DataError(f"{img_path}: 4D image with {img.shape[3]} channels; set the suite's data.modality to a channel index 0..{img.shape[3] - 1}")
        img = img[..., channel]
    if img.shape != lab.shape:
        raise DataError(f"shape mismatch: {img_path} is {img.shape} but {lab_path} is {lab.shape}")
    if not np.allclose(zooms[:3], lzooms[:3], atol=1e-3):
        raise DataError(f"spacing mismatch: {img_path} has voxels {zooms[:3]} mm but {lab_path} has {lzooms[:3]} mm")
    if not np.all(lab == np.round(lab)):
        raise DataError(f"{lab_path}: label volume holds non-integer values")
    lab = lab.astype(np.int64)
    for src, dst in label_map.items():
        lab[lab == src] = dst
    images, masks, ids = [], [], []
    for z in range(img.shape[2]):
        m = lab[:, :, z]
        x = img[:, :, z]
        keep = m.any() if slices == "lesion" else (x > 0).mean() > 0.1
        if not keep:
            continue
        images.append(centre_crop(normalise_slice(axial_to_display(x)), crop))
        masks.append(centre_crop(axial_to_display(m), crop))
        ids.append(f"{cid}:z{z:03d}")
    return images, masks, ids


def common_spacing(paths: list[Path]) -> tuple[float, float]:
    """The in-plane voxel size (mm) shared by all images (RAS); DataError naming two files that differ."""
    import nibabel as nib

    first: tuple[Path, tuple[float, float]] | None = None
    for p in paths:
        try:
            zooms = nib.as_closest_canonical(nib.load(str(p))).header.get_zooms()
        except Exception as exc:
            raise DataError(f"{p}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
        sp = (float(zooms[0]), float(zooms[1]))
        if first is None:
            first = (p, sp)
        elif not np.allclose(sp, first[1], atol=1e-3):
            raise DataError(f"spacing mismatch: {p} has in-plane voxels {sp} mm but {first[0]} has {first[1]} mm; resample to one spacing first")
    assert first is not None
    return first[1]


def split_cases(case_ids: list[str], test_fraction: float) -> set[str]:
    """The test cases: a deterministic hash-ordered fraction of case ids (at least one case in each split)."""
    if len(case_ids) < 2:
        raise DataError(f"need at least 2 cases to make train and test splits, found {len(case_ids)}")
    ranked = sorted(case_ids, key=lambda c: content_hash("split", c))
    n_test = min(max(1, round(test_fraction * len(case_ids))), len(case_ids) - 1)
    return set(ranked[:n_test])


def load_nifti_folder(folder: Path, cache: DiskCache, *, modality: str = DEFAULT_MODALITY, crop: tuple[int, int] = DEFAULT_CROP,
                      test_fraction: float = DEFAULT_TEST_FRACTION, slices: str = DEFAULT_SLICES) -> ReferenceData:
    """Load a BraTS or imagesTr/labelsTr folder into train/test splits of preprocessed axial slices (cached)."""
    layout, cases = find_cases(folder, modality)
    crop = (int(crop[0]), int(crop[1]))
    label_map = {4: 3} if layout == "brats" else {}
    options = {"modality": modality, "crop": crop, "test_fraction": test_fraction, "slices": slices, "layout": layout}
    key = content_hash(LOADER_VERSION, options, *(p.read_bytes() for _, i, l, _ in cases for p in (i, l)))
    test_ids = split_cases([c[0] for c in cases], test_fraction)
    spacing = common_spacing([c[1] for c in cases])

    def create() -> dict[str, Split]:
        parts: dict[str, Any] = {"train": ([], [], []), "test": ([], [], [])}
        for cid, img, lab, channel in cases:
            ims, ms, ids = _case_slices(cid, img, lab, channel, crop, slices, label_map)
            target = parts["test" if cid in test_ids else "train"]
            target[0].extend(ims), target[1].extend(ms), target[2].extend(ids)
        out = {}
        for name, (ims, ms, ids) in parts.items():
            if not ims:
                raise DataError(f"{folder}: the {name} split has no slices with {'a lesion' if slices == 'lesion' else 'brain'}")
            case_of = np.array([i.split(":")[0] for i in ids])
            out[name] = Split(torch.from_numpy(np.stack(ims)[:, None]), torch.from_numpy(np.stack(ms)[:, None].astype(np.int64)),
                              tuple(ids), {"case": np.unique(case_of, return_inverse=True)[1].astype(np.int64)})
        return out

    splits = cache.get_or_create("data", f"nifti-{key}", ".npz", create, save_splits, load_splits)
    found = sorted({int(v) for s in ("train", "test") for v in splits[s].masks.unique()} - {0})
    if layout == "brats":
        extra = set(found) - set(BRATS_LABELS.values())
        if extra:
            raise DataError(f"{folder}: labels {found} found; BraTS labels are 1 necrotic core, 2 oedema, 3 (or 4) enhancing")
        labels, regions = dict(BRATS_LABELS), dict(BRATS_REGIONS)
    else:
        labels = {f"label_{v}": v for v in found}
        regions = {"whole_tumour": tuple(found), "foreground": tuple(found)}
    return ReferenceData(
        name=str(folder), train=splits["train"], test=splits["test"], labels=labels, regions=regions,
        spacing_mm=spacing,
        provenance={"source": f"NIfTI folder {folder.resolve()} ({layout} layout, {len(cases)} cases)", "options": options,
                    "label_map": label_map, "test_cases": sorted(test_ids), "preprocessing": {**PREPROCESSING, "crop": f"centre crop/pad to {crop}"},
                    "cache_key": key},
    )
