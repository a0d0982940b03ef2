"""3D volumes: the D×H×W convention and its affine, per-volume normalisation, ``builtin:mni-tumour-3d``,
``slicing: volume`` of NIfTI folders in public layouts, the option checks, and export-masks of volumes as NIfTI.

Small cohorts only (a 12-case 6 mm builtin, 3-case 4 mm NIfTI cohorts written by the cohort writer), so the file runs
in well under a minute. Every expected value is derived from the inputs (the raw label files, the synthesised cases,
the affines), never a measured number.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mriq_validate import cli
from mriq_validate.cache import DiskCache
from mriq_validate.data import BUILTIN_DATASETS, load_data
from mriq_validate.data.cohort_writer import case_rngs, write_cohort
from mriq_validate.data.core import ReferenceData, Split
from mriq_validate.data.mni3d import synthesise_volume
from mriq_validate.data.mni_tumour3d import DATA_SEED, build_mni_tumour_3d
from mriq_validate.data.mri_contrast import CONTRASTS
from mriq_validate.data.preprocess import axial_to_display
from mriq_validate.data.volumes import (display_affine, display_volume, item_affine, normalise_volume, volume_from_display,
                                        xyz_affine)
from mriq_validate.errors import DataError
from mriq_validate.suite import DataOptions

SMALL = {"n_cases": 12, "voxel_mm": 6.0, "shape": (32, 32, 32)}
COHORT = {"voxel_mm": 4.0, "shape": (48, 56, 40)}  # X×Y×Z: 192×224×160 mm holds the template brain
COHORT_DHW = (40, 56, 48)
BRATS_TO_CANONICAL = {1: 1, 2: 2, 4: 3}  # BraTS 2021 stored value → canonical (1 necrotic core, 2 oedema, 3 enhancing)


def small_builtin(cache: DiskCache) -> ReferenceData:
    return build_mni_tumour_3d(cache, **SMALL)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> ReferenceData:
    return small_builtin(DiskCache(tmp_path_factory.mktemp("cache3d")))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 3 synthetic cases written as BraTS 2021 (LPS) and as MSD (RAS)."""
    root = tmp_path_factory.mktemp("cohorts")
    write_cohort(root / "brats", "brats2021", 3, seed=5, orientation="LPS", **COHORT)  # type: ignore[arg-type]
    write_cohort(root / "msd", "msd", 3, seed=5, orientation="RAS", **COHORT)  # type: ignore[arg-type]
    return {"brats": root / "brats", "msd": root / "msd", "cache": root / "cache"}


# ------------------------------------------------------------------------------------------------ the convention


@settings(max_examples=15, deadline=None)
@given(st.tuples(*(st.integers(2, 7) for _ in range(3))), st.integers(0, 2**31 - 1))
def test_display_volume_stacks_2d_slices_and_its_affine_names_the_same_world_points(shape: tuple[int, int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    xyz = rng.random((2, *shape))
    dhw = display_volume(xyz)
    assert dhw.shape == (2, shape[2], shape[1], shape[0])
    assert all(np.array_equal(dhw[c, d], axial_to_display(xyz[c, :, :, d])) for c in range(2) for d in range(shape[2]))
    assert np.array_equal(volume_from_display(dhw), xyz)
    affine = np.diag([*rng.uniform(0.5, 3, 3), 1.0])
    affine[:3, 3] = rng.uniform(-100, 100, 3)
    a_dhw = display_affine(affine, shape)
    for _ in range(5):
        d, h, w = (int(rng.integers(n)) for n in dhw.shape[1:])
        i, j, k = np.argwhere(xyz[0] == dhw[0, d, h, w])[0]  # the same voxel (random values are distinct)
        assert np.allclose(a_dhw @ [d, h, w, 1], affine @ [i, j, k, 1])
    assert np.allclose(xyz_affine(a_dhw, dhw.shape[1:]), affine)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 1000))
def test_normalise_volume_keeps_the_background_and_ignores_the_scale(seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    stack = np.zeros((2, 12, 12, 12), np.float32)
    stack[:, 2:10, 3:9, 1:11] = rng.gamma(2.0, 1.0, (2, 8, 6, 10)) + 0.01
    out = normalise_volume(stack)
    brain = (stack != 0).any(axis=0)
    assert np.all(out[:, ~brain] == 0) and out.min() >= 0 and out.max() <= 1
    for c in range(2):  # clipped at the brain's p1 and p99: about 1 % of brain voxels at each end
        inside = out[c][brain]
        assert 0.005 <= float((inside == 0).mean()) <= 0.03 and 0.005 <= float((inside >= 1 - 1e-4).mean()) <= 0.03
    assert np.allclose(normalise_volume(stack * np.float32(scale)), out, atol=1e-4)


# ------------------------------------------------------------------------------------------------ builtin:mni-tumour-3d


def test_builtin_3d_volumes_splits_and_grid(small: ReferenceData) -> None:
    n = SMALL["n_cases"]
    assert "mni-tumour-3d" in BUILTIN_DATASETS
    assert small.spatial_dims == 3 and small.image_shape == (4, 32, 32, 32) and small.spacing_mm == (6.0, 6.0, 6.0)
    assert small.contrasts == tuple(CONTRASTS) and small.labels == {"necrotic_core": 1, "oedema": 2, "enhancing": 3}
    assert len(small.test) == round(0.3 * n) and len(small.train) + len(small.test) == n
    assert not set(small.train.ids) & set(small.test.ids)
    for part in (small.train, small.test):
        assert set(part.covariates) == {"site", "tumour_px", "has_necrosis", "has_enhancing"}
        assert np.array_equal(part.covariates["tumour_px"], (part.masks > 0).flatten(1).sum(1).numpy())
        assert float(part.images.min()) == 0.0 and 1 - 1e-4 <= float(part.images.max()) <= 1.0  # eps 1e-6 in the scaling
    # the grid: D runs inferior → superior, H posterior → anterior upwards (anterior at the top), W left → right
    a = np.asarray(small.provenance["affine_dhw"])
    origin, step = a @ [0, 0, 0, 1], a[:3, :3]
    assert step[2, 0] > 0 and step[1, 1] < 0 and step[0, 2] > 0 and np.allclose(np.abs(step).sum(0), 6.0)
    assert origin[1] > (a @ [0, 31, 0, 1])[1]  # row 0 lies anterior of the last row


def test_builtin_3d_cases_are_the_synthesised_cases_in_the_2d_convention(small: ReferenceData) -> None:
    """Case i is :func:`synthesise_volume` with the cohort writer's stream i: its every D-slice is the 2D display of
    the RAS axial slice, and the labels overlay it on the recorded grid."""
    idx = 0
    i = int(small.test.ids[idx].split("-")[1])
    case = synthesise_volume(case_rngs(DATA_SEED, i)[0], voxel_mm=SMALL["voxel_mm"], shape=SMALL["shape"])
    vol, mask = small.test.images[idx].numpy(), small.test.masks[idx, 0].numpy()
    assert all(np.array_equal(mask[d], axial_to_display(case.labels[:, :, d])) for d in range(mask.shape[0]))
    brain = np.stack([case.images[c] for c in CONTRASTS]) != 0
    assert all(np.array_equal(vol[c] > 0, display_volume(brain[c]) & (vol[c] > 0)) for c in range(4))
    assert np.array_equal((vol != 0).any(0), display_volume(brain.any(0)) & (vol != 0).any(0))
    assert np.allclose(xyz_affine(item_affine(small.provenance, small.test.ids[idx]), mask.shape), case.affine)


def test_builtin_3d_is_deterministic_and_cached(tmp_path: Path, small: ReferenceData) -> None:
    cache = DiskCache(tmp_path / "c")
    again = small_builtin(cache)
    assert again.digests() == small.digests() and again.provenance["cache_key"] == small.provenance["cache_key"]
    assert len(list((tmp_path / "c").rglob("mni-tumour-3d-*.bundle"))) == 1
    other = build_mni_tumour_3d(cache, **{**SMALL, "seed": DATA_SEED + 1})  # type: ignore[arg-type]
    assert other.digests() != small.digests()


def test_slicing_must_match_the_builtin_kind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, small: ReferenceData) -> None:
    tiny2d = ReferenceData("builtin:mni-tumour", *(Split(small.train.images[:2, :, 0], small.train.masks[:2, :, 0], ("a", "b"))
                                                   for _ in range(2)),
                           labels={}, regions={}, spacing_mm=(1.0, 1.0), contrasts=small.contrasts, provenance={})
    monkeypatch.setitem(BUILTIN_DATASETS, "mni-tumour", lambda cache: tiny2d)
    monkeypatch.setitem(BUILTIN_DATASETS, "mni-tumour-3d", lambda cache: small)
    cache = DiskCache(tmp_path / "c")
    with pytest.raises(DataError, match=r"'builtin:mni-tumour'.* slicing is 'volume'; set slicing: slices .*builtin:mni-tumour-3d"):
        load_data("builtin:mni-tumour", cache, slicing="volume")
    with pytest.raises(DataError, match=r"'builtin:mni-tumour-3d'.* slicing is 'slices'; set slicing: volume"):
        load_data("builtin:mni-tumour-3d", cache, slicing="slices")
    assert load_data("builtin:mni-tumour-3d", cache, slicing="volume", contrasts=["flair"]).contrasts == ("flair",)
    assert DataOptions(slicing="volume").options_for("builtin:mni-tumour-3d") == {"slicing": "volume"}


# ------------------------------------------------------------------------------------------------ NIfTI folders as volumes


def _raw_labels(folder: Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(folder / case_id / f"{case_id}_seg.nii.gz"))
    return np.asarray(img.dataobj).astype(np.int64), img.affine


def test_nifti_volume_brats_lps_equals_msd_ras_and_keeps_every_label_voxel(cohorts: dict[str, Path]) -> None:
    """At the source spacing the volume is a crop of the source: every label voxel is kept (counts equal the raw
    file's, by meaning), and the BraTS files stored LPS give the same volumes as the MSD files stored RAS."""
    cache = DiskCache(cohorts["cache"])
    opts = {"slicing": "volume", "spacing_mm": COHORT["voxel_mm"], "shape": COHORT_DHW, "progress": lambda m: None}
    brats = load_data(str(cohorts["brats"]), cache, **opts)
    msd = load_data(str(cohorts["msd"]), cache, **opts)
    assert brats.image_shape == msd.image_shape == (4, *COHORT_DHW) and brats.spacing_mm == (4.0, 4.0, 4.0)
    assert brats.contrasts == msd.contrasts and brats.regions == msd.regions
    by_case = {}
    for data, name_of in ((brats, lambda s: int(s.split("_")[1])), (msd, lambda s: int(s.split("_")[1]) - 1)):
        for part in (data.train, data.test):
            for k, sid in enumerate(part.ids):
                by_case.setdefault(name_of(sid), []).append((part.images[k], part.masks[k]))
    assert sorted(by_case) == [0, 1, 2] and all(len(v) == 2 for v in by_case.values())
    for (img_a, mask_a), (img_b, mask_b) in by_case.values():
        assert np.array_equal(img_a.numpy(), img_b.numpy()) and np.array_equal(mask_a.numpy(), mask_b.numpy())
    for part in (brats.train, brats.test):
        for k, sid in enumerate(part.ids):
            raw, _ = _raw_labels(cohorts["brats"], sid)
            expected = {c: int((raw == v).sum()) for v, c in BRATS_TO_CANONICAL.items()}
            assert {c: int((part.masks[k] == c).sum()) for c in (1, 2, 3)} == expected
    prov = brats.provenance
    assert prov["options"]["slicing"] == "volume" and prov["options"]["shape"] == list(COHORT_DHW)
    assert prov["orientations"] == {"LPS": 3 * 5}
    assert set(prov["affine_dhw"]) == set(prov["volumes"]) == {f"BraTS2021_{i:05d}" for i in range(3)}
    assert all(v["spacing_mm"] == [4.0, 4.0, 4.0] for v in prov["volumes"].values())


def test_nifti_volume_resampled_counts_stay_within_the_sampling_bound(cohorts: dict[str, Path]) -> None:
    """At twice the source spacing, nearest sampling keeps one voxel of each 2×2×2 block of the source (the grid is
    snapped to source voxels): a block inside a region counts once, outside not at all, so the count differs from
    raw/8 by at most 7/8 per block on the region's boundary."""
    data = load_data(str(cohorts["brats"]), DiskCache(cohorts["cache"]), slicing="volume", spacing_mm=8.0, shape=(20, 28, 24),
                     progress=lambda m: None)
    assert data.image_shape == (4, 20, 28, 24)
    for part in (data.train, data.test):
        for k, sid in enumerate(part.ids):
            raw, _ = _raw_labels(cohorts["brats"], sid)
            start = [int(round(a)) for a, _ in data.provenance["volumes"][sid]["grid_box_source_voxels"]]
            for v, c in BRATS_TO_CANONICAL.items():
                region = np.pad(raw == v, 2)[tuple(slice(s + 2, None) for s in start)]  # blocks aligned with the grid
                region = region[: region.shape[0] // 2 * 2, : region.shape[1] // 2 * 2, : region.shape[2] // 2 * 2]
                blocks = region.reshape(region.shape[0] // 2, 2, region.shape[1] // 2, 2, region.shape[2] // 2, 2).sum((1, 3, 5))
                mixed = int(((blocks > 0) & (blocks < 8)).sum())
                assert abs(int((part.masks[k] == c).sum()) - (raw == v).sum() / 8) <= 7 / 8 * mixed + 1e-9, (sid, v)


def test_nifti_volume_healthy_cohort_and_the_case_cache(tmp_path: Path, cohorts: dict[str, Path]) -> None:
    root = tmp_path / "healthy"
    write_cohort(root, "brats2021", 2, seed=7, orientation="RAS", **COHORT)  # type: ignore[arg-type]
    for p in root.rglob("*_seg.nii.gz"):
        p.unlink()
    cache = DiskCache(tmp_path / "c")
    data = load_data(str(root), cache, slicing="volume", spacing_mm=4.0, shape=COHORT_DHW, progress=lambda m: None)
    assert not data.has_masks and data.image_shape == (4, *COHORT_DHW) and len(data.train) == len(data.test) == 1
    assert all(int(s.masks.abs().sum()) == 0 for s in (data.train, data.test))
    entries = len(list((tmp_path / "c").rglob("nifti-case/*.npz")))
    slices = load_data(str(root), cache, crop=(56, 48), slices="all", progress=lambda m: None)  # both kinds side by side
    assert slices.spatial_dims == 2 and len(list((tmp_path / "c").rglob("nifti-case/*.npz"))) == entries + 2


@pytest.mark.parametrize(("options", "field"), [
    ({"slicing": "volume", "crop": (64, 64)}, "crop"),
    ({"slicing": "volume", "slices": "all"}, "slices"),
    ({"shape": (40, 56, 48)}, "shape"),
    ({"spacing_mm": 2.0}, "spacing_mm"),
])
def test_options_of_the_other_slicing_are_refused_by_name(cohorts: dict[str, Path], options: dict, field: str) -> None:
    with pytest.raises(DataError, match=rf"option '{field}' applies to slicing"):
        load_data(str(cohorts["brats"]), DiskCache(cohorts["cache"]), **options)
    with pytest.raises(ValueError, match=rf"option '{field}' applies to slicing"):
        DataOptions(**options)


@pytest.mark.parametrize(("options", "match"), [
    ({"slicing": "volumes"}, r"slicing 'volumes'; expected one of \['slices', 'volume'\]"),
    ({"slicing": "volume", "shape": (40, 0, 48)}, r"shape \(40, 0, 48\); expected three positive integers"),
    ({"slicing": "volume", "spacing_mm": -1.0}, r"spacing_mm -1.0; expected a positive number"),
])
def test_bad_volume_options_name_the_field(cohorts: dict[str, Path], options: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_data(str(cohorts["brats"]), DiskCache(cohorts["cache"]), **options)


# ------------------------------------------------------------------------------------------------ export-masks


def test_export_masks_of_the_3d_builtin_writes_nifti_that_overlays_the_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                            small: ReferenceData) -> None:
    monkeypatch.setitem(BUILTIN_DATASETS, "mni-tumour-3d", lambda cache: small)
    out = tmp_path / "export"
    assert cli.main(["export-masks", str(out), "--data", "builtin:mni-tumour-3d", "--cache", str(tmp_path / "c")]) == 0
    for split in ("test", "train"):
        part = getattr(small, split)
        files = sorted((out / split).glob("*_seg.nii.gz"))
        assert [p.name for p in files] == sorted(f"{i}_seg.nii.gz" for i in part.ids)
        for p in files[:2]:
            img = nib.load(str(p))
            case = synthesise_volume(case_rngs(DATA_SEED, int(p.name.split("_")[0].split("-")[1]))[0],
                                     voxel_mm=SMALL["voxel_mm"], shape=SMALL["shape"])
            assert img.get_data_dtype() == np.uint8 and np.allclose(img.affine, case.affine)
            assert np.array_equal(np.asarray(img.dataobj), case.labels)  # the synthesised labels on their own grid


def test_export_masks_of_a_nifti_volume_overlay_the_source_labels(tmp_path: Path, cohorts: dict[str, Path]) -> None:
    """Each exported voxel, mapped through the exported and the source affines, lands on a source voxel of the same
    label meaning (target spacing = source spacing, so the mapping is onto voxel centres)."""
    suite = tmp_path / "suite.yaml"
    suite.write_text("mriq_suite:\n  name: v\n  context_of_use: test\n  data:\n    slicing: volume\n    spacing_mm: 4.0\n"
                     f"    shape: {list(COHORT_DHW)}\n  criteria:\n    - id: A\n      metric: dice\n      threshold: {{min: 0.5}}\n"
                     "      requirement: r\n      rationale: r\n")
    out = tmp_path / "export"
    args = ["export-masks", str(out), "--suite", str(suite), "--data", str(cohorts["brats"]), "--cache", str(cohorts["cache"])]
    assert cli.main(args) == 0
    path = next((out / "test").glob("*_seg.nii.gz"))
    sid = path.name.removesuffix("_seg.nii.gz")
    img = nib.load(str(path))
    exported = np.asarray(img.dataobj)
    raw, raw_affine = _raw_labels(cohorts["brats"], sid)
    idx = np.argwhere(exported > 0)
    src = np.rint((np.linalg.inv(raw_affine) @ img.affine @ np.c_[idx, np.ones(len(idx))].T)[:3]).astype(int)
    canonical = np.vectorize(lambda v: BRATS_TO_CANONICAL.get(int(v), 0))(raw[tuple(src)])
    assert len(idx) == int((raw > 0).sum()) and np.array_equal(canonical, exported[tuple(idx.T)])
