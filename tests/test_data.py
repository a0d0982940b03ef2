"""Reference data: the embedded cohort and the NIfTI loader (BraTS and imagesTr/labelsTr), with its errors (the
public layouts one by one: tests/test_layouts.py)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mriq_validate.cache import DiskCache
from mriq_validate.data import load_data
from mriq_validate.data.preprocess import centre_crop, normalise_slice
from mriq_validate.errors import DataError


def test_embedded_cohort_shape_range_labels(mni) -> None:
    assert mni.contrasts == ("t1", "t1c", "t2", "flair")
    assert mni.train.images.shape == (256, 4, 128, 128) and mni.test.images.shape == (128, 4, 128, 128)
    assert mni.train.masks.shape == (256, 1, 128, 128) and mni.test.masks.shape == (128, 1, 128, 128)
    for split in (mni.train, mni.test):
        assert split.images.dtype == torch.float32 and float(split.images.min()) >= 0 and float(split.images.max()) <= 1
        assert set(split.masks.unique().tolist()) == {0, 1, 2, 3}
        assert bool((split.masks > 0).flatten(1).any(1).all())  # every slice holds a tumour
        assert set(np.unique(split.covariates["site"])) == {0, 1, 2}
    assert not set(mni.train.ids) & set(mni.test.ids)
    # the splits are different slices, not copies
    train = {img.numpy().tobytes() for img in mni.train.images}
    assert not any(img.numpy().tobytes() in train for img in mni.test.images)
    assert "nilearn" in mni.provenance["source"] and "tumours" in mni.provenance["simulated"]


def test_embedded_cohort_is_deterministic(tmp_path: Path, mni) -> None:
    again = load_data("builtin:mni-tumour", DiskCache(tmp_path))  # rebuilt from scratch in an empty cache
    assert again.digests() == mni.digests()


def test_unknown_builtin_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown builtin dataset; expected one of.*builtin:mni-tumour"):
        load_data("builtin:ixi", DiskCache(tmp_path))


def test_importing_the_package_registers_every_builtin_dataset() -> None:
    """The package ``__init__`` imports the cohort modules, which register on import; the registry module imports none
    of them (no lazy import inside ``load_data``). A fresh interpreter that imports only the registry sees both."""
    code = "import json, mriq_validate.data.core as core; print(json.dumps(sorted(core.BUILTIN_DATASETS)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["mni-tumour", "mni-tumour-3d", "mni-vessel"]


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(4, 40), st.integers(4, 40)), elements=st.floats(-1e3, 1e3)))
def test_normalise_slice_maps_into_unit_range(x: np.ndarray) -> None:
    y = normalise_slice(x)
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1 + 1e-6
    lo, hi = np.percentile(x, [1, 99])
    if hi - lo > 1e-3:  # monotone: the order of values inside the clip range is kept
        inside = (x > lo) & (x < hi)
        order = np.argsort(x[inside])
        assert np.all(np.diff(y[inside][order]) >= -1e-6)


@given(st.integers(1, 50), st.integers(1, 50), st.integers(1, 60), st.integers(1, 60))
def test_centre_crop_pads_and_crops_to_size(h: int, w: int, th: int, tw: int) -> None:
    out = centre_crop(np.ones((h, w)), (th, tw))
    assert out.shape == (th, tw)
    assert out.sum() == min(h, th) * min(w, tw)


def make_volume(rng: np.random.Generator, shape=(40, 48, 12), zooms=(1.0, 1.0, 1.0)) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """A noise volume and a BraTS 2018–2021 label volume (2 oedema around 4 enhancing)."""
    img = rng.normal(100, 20, shape).astype(np.float32)
    lab = np.zeros(shape, np.int16)
    lab[15:25, 20:30, 4:8] = 2
    lab[18:22, 23:27, 5:7] = 4
    aff = np.diag([*zooms, 1.0])
    return nib.Nifti1Image(img, aff), nib.Nifti1Image(lab, aff)


def make_brats(root: Path, n: int = 4, **kw) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        case = root / f"BraTS_{i:03d}"
        case.mkdir(parents=True)
        img, lab = make_volume(rng, **kw)
        nib.save(img, case / f"BraTS_{i:03d}_t1.nii.gz")
        nib.save(lab, case / f"BraTS_{i:03d}_seg.nii.gz")
    return root


def test_brats_folder_loads_with_deo_preprocessing(tmp_path: Path) -> None:
    root = make_brats(tmp_path / "brats")
    data = load_data(str(root), DiskCache(tmp_path / "cache"), crop=(32, 32), test_fraction=0.25)
    assert data.train.images.shape[1:] == (1, 32, 32)
    assert len(data.train) == 12 and len(data.test) == 4  # 3 + 1 cases x 4 lesion slices
    assert set(data.train.masks.unique().tolist()) == {0, 2, 3}  # BraTS 2021 label 4 (enhancing) became 3
    assert float(data.train.images.min()) >= 0 and float(data.train.images.max()) <= 1
    train_cases = {i.split(":")[0] for i in data.train.ids}
    test_cases = {i.split(":")[0] for i in data.test.ids}
    assert not train_cases & test_cases  # split by case, never by slice
    assert {"source_value": 4, "meaning": "enhancing", "value": 3} in data.provenance["label_map"]
    assert data.provenance["layout"] == "brats2021" and data.contrasts == ("t1",) and data.spacing_mm == (1.0, 1.0)
    again = load_data(str(root), DiskCache(tmp_path / "cache2"), crop=(32, 32), test_fraction=0.25)
    assert again.digests() == data.digests()


def test_imagestr_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "d" / "imagesTr").mkdir(parents=True)
    (tmp_path / "d" / "labelsTr").mkdir()
    for i in range(3):
        img, lab = make_volume(rng)
        nib.save(img, tmp_path / "d" / "imagesTr" / f"case_{i}_0000.nii.gz")
        nib.save(lab, tmp_path / "d" / "labelsTr" / f"case_{i}.nii.gz")
    with pytest.raises(DataError, match=r"meaning of label values \[2, 4\] .* is unknown"):
        load_data(str(tmp_path / "d"), DiskCache(tmp_path / "c"), crop=(48, 48))
    data = load_data(str(tmp_path / "d"), DiskCache(tmp_path / "c"), crop=(48, 48), labels={2: "oedema", 4: "enhancing"})
    assert data.regions["whole_tumour"] == (2, 3) and data.contrasts == ("channel0",) and len(data.test) > 0


def test_data_errors_name_the_file(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache")
    with pytest.raises(DataError, match="folder does not exist"):
        load_data(str(tmp_path / "missing"), cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no cases found"):
        load_data(str(tmp_path / "empty"), cache)

    root = make_brats(tmp_path / "corrupt", n=3)
    bad = root / "BraTS_001" / "BraTS_001_t1.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(DataError, match=r"BraTS_001_t1.nii.gz: not a readable NIfTI file"):
        load_data(str(root), cache)

    root = make_brats(tmp_path / "shape", n=3)
    rng = np.random.default_rng(2)
    img, _ = make_volume(rng, shape=(40, 40, 12))
    nib.save(img, root / "BraTS_002" / "BraTS_002_t1.nii.gz")
    with pytest.raises(DataError, match=r"shape mismatch: .*BraTS_002_t1.nii.gz is \(40, 40, 12\) but .*BraTS_002_seg.nii.gz is \(40, 48, 12\)"):
        load_data(str(root), cache)

    root = make_brats(tmp_path / "spacing", n=3)
    img, lab = make_volume(rng, zooms=(0.5, 0.5, 1.0))
    nib.save(img, root / "BraTS_001" / "BraTS_001_t1.nii.gz")
    nib.save(lab, root / "BraTS_001" / "BraTS_001_seg.nii.gz")
    with pytest.raises(DataError, match=r"spacing mismatch: .*BraTS_001_t1.nii.gz has in-plane voxels \(0.5, 0.5\) mm"):
        load_data(str(root), cache)

    root = make_brats(tmp_path / "nan", n=3)
    img, _ = make_volume(rng)
    arr = img.get_fdata()
    arr[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(arr.astype(np.float32), img.affine), root / "BraTS_000" / "BraTS_000_t1.nii.gz")
    with pytest.raises(DataError, match="BraTS_000_t1.nii.gz: contains NaN"):
        load_data(str(root), cache)

    root = make_brats(tmp_path / "modality", n=2)
    with pytest.raises(DataError, match=r"contrast 'flair' is not in the data; it has \['t1'\]"):
        load_data(str(root), cache, modality="flair")
