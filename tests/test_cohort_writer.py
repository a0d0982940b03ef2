"""3D synthetic cases (mni3d) and the writer of public cohort layouts (BraTS 2021, BraTS 2023, MSD Task01, nnU-Net
Dataset137): file names, dataset.json fields, label values, data types, LPS/RAS affines, determinism. Tiny grids
(4 mm voxels) keep the file fast; one case at the real BraTS geometry checks the default."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mriq_validate.data.cohort_writer import LAYOUTS, write_cohort
from mriq_validate.data.mni3d import BRATS_SHAPE, synthesise_volume
from mriq_validate.data.mri_contrast import CONTRASTS
from mriq_validate.errors import DataError

TINY = {"voxel_mm": 4.0, "shape": (48, 48, 24)}
SMALL = {"voxel_mm": 2.0, "shape": (120, 120, 78)}


def _arr(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _canonical(path: Path) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 3 cases (seed 11) in every layout, LPS."""
    root = tmp_path_factory.mktemp("cohorts")
    return {name: write_cohort(root / name, name, 3, seed=11, **TINY).folder for name in LAYOUTS}


def test_brats2021_files_labels_and_types(cohorts: dict[str, Path]) -> None:
    root = cohorts["brats2021"]
    assert sorted(p.name for p in root.iterdir()) == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    case = root / "BraTS2021_00001"
    assert sorted(p.name for p in case.iterdir()) == sorted(f"BraTS2021_00001_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg"))
    seg = nib.load(str(case / "BraTS2021_00001_seg.nii.gz"))
    assert seg.get_data_dtype() == np.uint8 and seg.shape == TINY["shape"]
    values = set(np.unique(np.concatenate([_arr(c / f"{c.name}_seg.nii.gz").ravel() for c in root.iterdir()])).tolist())
    assert values <= {0, 1, 2, 4} and {2, 4} <= values  # BraTS 2021: 1 NCR, 2 ED, 4 ET, never 3
    for m in ("t1", "t1ce", "t2", "flair"):
        img = nib.load(str(case / f"BraTS2021_00001_{m}.nii.gz"))
        assert img.get_data_dtype() == np.int16 and img.shape == TINY["shape"] and np.asarray(img.dataobj).max() > 500


def test_brats2023_files_and_labels_match_the_2021_case(cohorts: dict[str, Path]) -> None:
    root = cohorts["brats2023"]
    assert sorted(p.name for p in root.iterdir()) == [f"BraTS-GLI-{i:05d}-000" for i in range(3)]
    case = root / "BraTS-GLI-00002-000"
    assert sorted(p.name for p in case.iterdir()) == sorted(f"BraTS-GLI-00002-000-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f", "seg"))
    seg23 = _arr(case / "BraTS-GLI-00002-000-seg.nii.gz")
    seg21 = _arr(cohorts["brats2021"] / "BraTS2021_00002" / "BraTS2021_00002_seg.nii.gz")
    assert set(np.unique(seg23).tolist()) <= {0, 1, 2, 3}
    assert np.array_equal(seg21, np.where(seg23 == 3, 4, seg23))  # the same case, ET stored as 4 in 2021 and 3 in 2023
    for m21, m23 in (("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f")):
        assert np.array_equal(_arr(cohorts["brats2021"] / "BraTS2021_00002" / f"BraTS2021_00002_{m21}.nii.gz"),
                              _arr(case / f"BraTS-GLI-00002-000-{m23}.nii.gz"))


def test_msd_layout_dataset_json_channels_and_labels(cohorts: dict[str, Path]) -> None:
    root = cohorts["msd"]
    assert sorted(p.name for p in root.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr"]
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["BRATS_001.nii.gz", "BRATS_002.nii.gz", "BRATS_003.nii.gz"]
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == ["BRATS_001.nii.gz", "BRATS_002.nii.gz", "BRATS_003.nii.gz"]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["name"] == "BRATS" and meta["tensorImageSize"] == "4D"
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["labels"] == {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
    assert meta["numTraining"] == 3 and meta["numTest"] == 0 and meta["test"] == []
    assert meta["training"][0] == {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}
    img = nib.load(str(root / "imagesTr" / "BRATS_001.nii.gz"))
    assert img.shape == (*TINY["shape"], 4) and img.get_data_dtype() == np.float32
    x = np.asarray(img.dataobj)
    b21 = cohorts["brats2021"] / "BraTS2021_00000"
    for channel, m in enumerate(("flair", "t1", "t1ce", "t2")):  # MSD channel order
        assert np.array_equal(x[..., channel], _arr(b21 / f"BraTS2021_00000_{m}.nii.gz").astype(np.float32))
    msd = _arr(root / "labelsTr" / "BRATS_001.nii.gz")
    brats = _arr(b21 / "BraTS2021_00000_seg.nii.gz")
    assert msd.dtype == np.uint8
    assert np.array_equal(msd, np.select([brats == 2, brats == 1, brats == 4], [1, 2, 3], 0))  # ED 1, NCR/NET 2, ET 3


def test_nnunet_layout_follows_dataset137(cohorts: dict[str, Path]) -> None:
    root = cohorts["nnunet"]
    assert sorted(p.name for p in root.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [f"BraTS2021_{i:05d}_{c:04d}.nii.gz" for i in range(3) for c in range(4)]
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == [f"BraTS2021_{i:05d}.nii.gz" for i in range(3)]
    meta = json.loads((root / "dataset.json").read_text())
    assert list(meta)[:4] == ["channel_names", "labels", "numTraining", "file_ending"]
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    assert meta["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    assert meta["regions_class_order"] == [1, 2, 3] and meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    b21 = cohorts["brats2021"] / "BraTS2021_00001"
    for c, m in enumerate(("t1", "t1ce", "t2", "flair")):
        assert np.array_equal(_arr(root / "imagesTr" / f"BraTS2021_00001_{c:04d}.nii.gz"), _arr(b21 / f"BraTS2021_00001_{m}.nii.gz"))
    brats = _arr(b21 / "BraTS2021_00001_seg.nii.gz")
    converted = np.zeros_like(brats)  # Dataset137_BraTS21.copy_BraTS_segmentation_and_convert_labels_to_nnUNet
    converted[brats == 4], converted[brats == 2], converted[brats == 1] = 3, 1, 2
    assert np.array_equal(_arr(root / "labelsTr" / "BraTS2021_00001.nii.gz"), converted)


def test_lps_and_ras_store_the_same_world(tmp_path: Path) -> None:
    lps = write_cohort(tmp_path / "lps", "brats2023", 1, seed=5, orientation="LPS", **TINY).folder / "BraTS-GLI-00000-000"
    ras = write_cohort(tmp_path / "ras", "brats2023", 1, seed=5, orientation="RAS", **TINY).folder / "BraTS-GLI-00000-000"
    for m in ("t1c", "seg"):
        a, b = nib.load(str(lps / f"BraTS-GLI-00000-000-{m}.nii.gz")), nib.load(str(ras / f"BraTS-GLI-00000-000-{m}.nii.gz"))
        assert nib.aff2axcodes(a.affine) == ("L", "P", "S") and nib.aff2axcodes(b.affine) == ("R", "A", "S")
        diag = np.diag(a.affine)[:3]
        assert np.allclose(a.affine[:3, :3], np.diag(diag)) and diag[0] < 0 and diag[1] < 0 and diag[2] > 0
        assert np.allclose(np.abs(diag), TINY["voxel_mm"]) and np.allclose(np.diag(b.affine)[:3], TINY["voxel_mm"])
        assert int(a.header["qform_code"]) == int(a.header["sform_code"]) == 1
        assert np.array_equal(_canonical(lps / f"BraTS-GLI-00000-000-{m}.nii.gz"), np.asarray(b.dataobj))
        assert np.allclose(a.affine @ [0, 0, 0, 1], b.affine @ [TINY["shape"][0] - 1, TINY["shape"][1] - 1, 0, 1])


def test_cohort_is_deterministic_in_the_seed(tmp_path: Path, cohorts: dict[str, Path]) -> None:
    again = write_cohort(tmp_path / "again", "brats2021", 2, seed=11, **TINY)  # the first 2 of the 3 written with seed 11
    other = write_cohort(tmp_path / "other", "brats2021", 1, seed=12, **TINY)
    assert again.case_ids == ("BraTS2021_00000", "BraTS2021_00001") and len(again.files) == 10
    for case in again.case_ids:
        for m in ("t1", "flair", "seg"):
            name = f"{case}/{case}_{m}.nii.gz"
            assert np.array_equal(_arr(again.folder / name), _arr(cohorts["brats2021"] / name))
    assert not np.array_equal(_arr(other.folder / "BraTS2021_00000/BraTS2021_00000_t1.nii.gz"),
                              _arr(again.folder / "BraTS2021_00000/BraTS2021_00000_t1.nii.gz"))


def test_writer_errors_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"layout 'brats2019' is unknown; expected one of \['brats2021', 'brats2023', 'msd', 'nnunet'\]"):
        write_cohort(tmp_path / "a", "brats2019", 1, seed=0, **TINY)
    with pytest.raises(DataError, match="orientation 'LAS' is unknown"):
        write_cohort(tmp_path / "a", "msd", 1, seed=0, orientation="LAS", **TINY)
    with pytest.raises(DataError, match="expected positive integers"):
        write_cohort(tmp_path / "a", "msd", 0, seed=0, **TINY)
    with pytest.raises(DataError, match=r"voxel_mm=-1.0, shape=\(48, 48, 24\)"):
        write_cohort(tmp_path / "a", "msd", 1, seed=0, voxel_mm=-1.0, shape=(48, 48, 24))
    assert not (tmp_path / "a").exists()  # nothing written before the arguments are checked
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="full: cohort folder exists and is not an empty folder"):
        write_cohort(tmp_path / "full", "msd", 1, seed=0, **TINY)


def test_volume_tumour_structure_and_contrasts() -> None:
    """2 mm cases: labels are BraTS 2023 values, nested (the enhancing rim inside the oedema, necrosis enclosed by
    tumour), inside the brain; background exactly zero. Against the white matter near the tumour (the brightest
    quarter on T1 of the brain 6-25 mm from it, where the bias field is about the tumour's): oedema bright on T2 and
    FLAIR and dark on T1; enhancing tumour above WM on T1c only; on T2 necrosis > oedema > enhancing > WM; on FLAIR
    oedema > enhancing > WM > necrosis."""
    kinds = set()
    for i in range(6):
        case = synthesise_volume(np.random.default_rng([3, i]), **SMALL)
        lab, img = case.labels, case.images
        assert lab.dtype == np.uint8 and lab.shape == SMALL["shape"] and set(np.unique(lab).tolist()) <= {0, 1, 2, 3}
        assert list(img) == list(CONTRASTS) and all(v.shape == SMALL["shape"] and v.dtype == np.float32 for v in img.values())
        brain = img["t1"] > 0
        assert not (lab > 0)[~brain].any() and all((v[~brain] == 0).all() for v in img.values())
        kinds.add(case.covariates["kind"])
        assert ndimage.label(lab > 0)[1] == 1  # one tumour
        if (lab == 3).any():  # oedema surrounds the enhancing rim: < 5 % of the voxels around it are tumour-free brain
            shell = ndimage.binary_dilation(lab == 3) & (lab != 3)
            assert (shell & (lab == 0) & brain).sum() < 0.05 * shell.sum()
        if (lab == 1).any():
            assert not (ndimage.binary_dilation(lab == 1) & (lab == 0)).any()  # necrosis is enclosed by tumour
        dist = ndimage.distance_transform_edt(lab == 0) * SMALL["voxel_mm"]
        near = ndimage.binary_erosion(brain, iterations=2) & (dist > 6) & (dist < 25)
        wm = near & (img["t1"] >= np.quantile(img["t1"][near], 0.75))
        core = {v: ndimage.binary_erosion(lab == v) for v in (1, 2, 3)}
        rel = {c: {v: np.median(img[c][r]) / np.median(img[c][wm]) for v, r in core.items() if r.sum() > 20} for c in CONTRASTS}
        assert rel["t2"][2] > 1.2 and rel["flair"][2] > 1.2 and rel["t1"][2] < 0.8
        if 3 in rel["t1"]:
            assert rel["t1c"][3] > 1.1 and rel["t1"][3] < 0.95
            assert rel["t2"][2] > rel["t2"][3] > 1.0 and rel["flair"][2] > rel["flair"][3] > 1.0
        if 1 in rel["t1"]:
            assert rel["t2"][1] > rel["t2"][2] and rel["flair"][1] < 1.0 and rel["t1c"][1] < rel["t1"][1]
    assert len(kinds) >= 2


def test_volume_at_brats_geometry() -> None:
    """The default grid is BraTS's: 240×240×155 at 1 mm, RAS affine, one case in a few seconds of CPU."""
    start = time.process_time()
    case = synthesise_volume(np.random.default_rng(0))
    cpu = time.process_time() - start
    assert case.labels.shape == BRATS_SHAPE and all(v.shape == BRATS_SHAPE for v in case.images.values())
    assert np.allclose(case.affine[:3, :3], np.eye(3)) and nib.aff2axcodes(case.affine) == ("R", "A", "S")
    assert np.allclose(case.affine[:3, 3], np.round(case.affine[:3, 3]))  # on the template's 1 mm grid: exact sampling
    brain_extent = [int(np.ptp(np.nonzero((case.images["t1"] > 0).any(axis=tuple(a for a in range(3) if a != ax)))[0])) for ax in range(3)]
    assert 130 <= brain_extent[0] <= 170 and 160 <= brain_extent[1] <= 200 and brain_extent[2] >= 140  # an adult brain, in mm
    assert 1.0 <= sum(case.covariates["volume_ml"].values()) <= 300.0
    assert cpu < 15.0, f"{cpu:.1f} s of CPU for one 1 mm case"


def test_workers_do_not_change_the_files(tmp_path: Path, cohorts: dict[str, Path]) -> None:
    """Cases written in 2 processes are the files written in one (each case has its own seeded streams)."""
    par = write_cohort(tmp_path / "par", "brats2021", 2, seed=11, workers=2, **TINY)
    for path in par.files:
        assert np.array_equal(_arr(path), _arr(cohorts["brats2021"] / path.relative_to(par.folder)))


def test_every_layout_of_one_cohort_loads_to_the_same_slices(cohorts: dict[str, Path], tmp_path: Path) -> None:
    """Writer and reader agree: the same cases written in each public layout (LPS affines, each layout's own label
    values and contrast names) load to identical slices (images, masks) and regions. (The train/test split follows the
    layout's case ids, which differ between conventions, so the splits themselves may differ.)"""
    from mriq_validate.cache import DiskCache, content_hash
    from mriq_validate.data import load_data

    cache = DiskCache(tmp_path / "cache")
    loaded = {name: load_data(str(folder), cache, crop=(48, 48)) for name, folder in cohorts.items()}
    slices = {name: sorted(content_hash(s.images[i], s.masks[i]) for s in (d.train, d.test) for i in range(len(s)))
              for name, d in loaded.items()}
    assert all(len(v) > 0 for v in slices.values())
    assert len({tuple(v) for v in slices.values()}) == 1, {k: len(v) for k, v in slices.items()}
    layouts = {d.provenance["layout"] for d in loaded.values()}
    assert len(layouts) == len(LAYOUTS), layouts
    for d in loaded.values():
        assert d.contrasts == ("t1", "t1c", "t2", "flair")
        assert {r: d.regions[r] for r in ("whole_tumour", "tumour_core", "enhancing_tumour")} == \
            {"whole_tumour": (1, 2, 3), "tumour_core": (1, 3), "enhancing_tumour": (3,)}
