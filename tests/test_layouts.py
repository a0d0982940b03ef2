"""Public dataset layouts, built tiny in the exact published form: file names, 3D or 4D, label values and dataset.json
as each dataset ships it, one case with an LPS and the others with a RAS affine.

Each contrast carries its own marker (an intensity ramp along its own direction, which survives per-slice
normalisation), and each case a tumour drawn in RAS space; after loading, every region's voxel count must equal the
count computed from the raw label files with the dataset's own region definition, the masks must sit where the RAS
tumour is, and every contrast must come from the file or channel that holds it.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

import mriq_validate.data.filememo as filememo
import mriq_validate.data.nifti as nifti
from mriq_validate.cache import DiskCache
from mriq_validate.data import load_data
from mriq_validate.data.label_meanings import label_meaning
from mriq_validate.data.preprocess import axial_to_display
from mriq_validate.errors import DataError

SHAPE = (24, 24, 12)
CROP = (24, 24)
_I, _J, _K = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
# one marker per contrast, in RAS voxel space: a ramp along its own axis and direction
PATTERNS = {"t1": 10 + _I, "t1c": 10 + _J, "t2": 33 - _I, "flair": 33 - _J}
RAS = np.eye(4)
LPS = np.array([[-1.0, 0, 0, SHAPE[0] - 1], [0, -1.0, 0, SHAPE[1] - 1], [0, 0, 1.0, 0], [0, 0, 0, 1]])  # same world grid
N_CASES = 3
LPS_CASE = 1


def tumour(i: int, rc: bool = False) -> np.ndarray:
    """Canonical labels (1 necrotic core, 2 oedema, 3 enhancing, 4 resection cavity) of case ``i`` in RAS voxels."""
    rng = np.random.default_rng(100 + i)
    c = rng.integers([8, 8, 4], [16, 16, 8])
    d = np.sqrt((_I - c[0]) ** 2 + (_J - c[1]) ** 2 + (2 * (_K - c[2])) ** 2)
    lab = np.zeros(SHAPE, np.int16)
    lab[d <= 5] = 2
    lab[d <= 3] = 3
    lab[d <= 1.5] = 1
    if rc:
        lab[2:5, 2:5, 5:7] = 4
    return lab


def save(arr: np.ndarray, path: Path, lps: bool) -> None:
    """Write ``arr`` (RAS voxel order) to ``path``, flipped into LPS voxel order with an LPS affine when ``lps``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = arr[::-1, ::-1].copy() if lps else arr
    nib.save(nib.Nifti1Image(data, LPS if lps else RAS), path)


def recode(lab: np.ndarray, values: dict[int, int]) -> np.ndarray:
    """Canonical labels written with a dataset's own values (``values``: canonical → dataset value)."""
    out = np.zeros_like(lab)
    for canon, v in values.items():
        out[lab == canon] = v
    return out


# ----------------------------------------------------------------------------------------- the published layouts
# Each builder returns (root, case ids, label file of each case); RAW_REGIONS give each dataset's own region definition.

def brats2021(root: Path, n: int = N_CASES) -> tuple[Path, list[str], list[Path]]:
    """BraTS 2018–2021: <case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz, labels 1 NCR/NET, 2 ED, 4 ET."""
    ids, labs = [], []
    for i in range(n):
        cid = f"BraTS2021_{i:05d}"
        for suffix, contrast in (("t1", "t1"), ("t1ce", "t1c"), ("t2", "t2"), ("flair", "flair")):
            save(PATTERNS[contrast], root / cid / f"{cid}_{suffix}.nii.gz", i == LPS_CASE)
        save(recode(tumour(i), {1: 1, 2: 2, 3: 4}).astype(np.uint8), root / cid / f"{cid}_seg.nii.gz", i == LPS_CASE)
        ids.append(cid)
        labs.append(root / cid / f"{cid}_seg.nii.gz")
    return root, ids, labs


def brats2023(root: Path, n: int = N_CASES) -> tuple[Path, list[str], list[Path]]:
    """BraTS 2023–2025 (GLI): <case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz, labels 1 NETC, 2 SNFH, 3 ET, 4 RC (2024)."""
    ids, labs = [], []
    for i in range(n):
        cid = f"BraTS-GLI-{i:05d}-000"
        for suffix, contrast in (("t1n", "t1"), ("t1c", "t1c"), ("t2w", "t2"), ("t2f", "flair")):
            save(PATTERNS[contrast], root / cid / f"{cid}-{suffix}.nii.gz", i == LPS_CASE)
        save(tumour(i, rc=i == 0).astype(np.uint8), root / cid / f"{cid}-seg.nii.gz", i == LPS_CASE)
        ids.append(cid)
        labs.append(root / cid / f"{cid}-seg.nii.gz")
    return root, ids, labs


MSD_JSON = {
    "name": "BRATS", "description": "Gliomas segmentation tumour and oedema in on brain images",
    "reference": "https://www.med.upenn.edu/sbia/brats2017.html", "licence": "CC-BY-SA 4.0", "release": "2.0 04/05/2018",
    "tensorImageSize": "4D",
    "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
    "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
}


def msd(root: Path, n: int = N_CASES) -> tuple[Path, list[str], list[Path]]:
    """MSD Task01_BrainTumour: imagesTr/BRATS_001.nii.gz 4D (channels FLAIR, T1w, t1gd, T2w), labelsTr/, dataset.json;
    labels 1 edema, 2 non-enhancing tumor, 3 enhancing tumour. The archive's macOS ._ files come along."""
    ids, labs = [], []
    for i in range(n):
        cid = f"BRATS_{i + 1:03d}"
        stack = np.stack([PATTERNS[c] for c in ("flair", "t1", "t1c", "t2")], axis=-1)
        save(stack, root / "imagesTr" / f"{cid}.nii.gz", i == LPS_CASE)
        save(recode(tumour(i), {2: 1, 1: 2, 3: 3}).astype(np.uint8), root / "labelsTr" / f"{cid}.nii.gz", i == LPS_CASE)
        (root / "imagesTr" / f"._{cid}.nii.gz").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble debris
        (root / "labelsTr" / f"._{cid}.nii.gz").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
        ids.append(cid)
        labs.append(root / "labelsTr" / f"{cid}.nii.gz")
    meta = {**MSD_JSON, "numTraining": n, "numTest": 0,
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids], "test": []}
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    return root, ids, labs


def nnunet_v2(root: Path, n: int = N_CASES) -> tuple[Path, list[str], list[Path]]:
    """nnU-Net v2 raw, as nnunetv2/dataset_conversion/Dataset137_BraTS21.py writes it: channels 0 T1, 1 T1ce, 2 T2,
    3 Flair; BraTS labels converted 2 (ED) → 1, 1 (NCR) → 2, 4 (ET) → 3; region-based labels in dataset.json."""
    ids, labs = [], []
    for i in range(n):
        cid = f"BraTS2021_{i:05d}"
        for ch, contrast in enumerate(("t1", "t1c", "t2", "flair")):
            save(PATTERNS[contrast], root / "imagesTr" / f"{cid}_{ch:04d}.nii.gz", i == LPS_CASE)
        save(recode(tumour(i), {2: 1, 1: 2, 3: 3}).astype(np.uint8), root / "labelsTr" / f"{cid}.nii.gz", i == LPS_CASE)
        ids.append(cid)
        labs.append(root / "labelsTr" / f"{cid}.nii.gz")
    meta = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
            "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
            "numTraining": n, "file_ending": ".nii.gz", "regions_class_order": [1, 2, 3],
            "licence": "see https://www.synapse.org/#!Synapse:syn25829067/wiki/610863",
            "reference": "see https://www.synapse.org/#!Synapse:syn25829067/wiki/610863", "dataset_release": "1.0"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    return root, ids, labs


def msd_by_nnunet_v2(root: Path, n: int = N_CASES) -> tuple[Path, list[str], list[Path]]:
    """MSD Task01 as nnU-Net v2's convert_MSD_dataset.py leaves it: 4D files split into <case>_0000..0003, dataset.json
    'modality' renamed 'channel_names', 'labels' inverted to name → value, file_ending added."""
    ids, labs = [], []
    for i in range(n):
        cid = f"BRATS_{i + 1:03d}"
        for ch, contrast in enumerate(("flair", "t1", "t1c", "t2")):
            save(PATTERNS[contrast], root / "imagesTr" / f"{cid}_{ch:04d}.nii.gz", i == LPS_CASE)
        save(recode(tumour(i), {2: 1, 1: 2, 3: 3}).astype(np.uint8), root / "labelsTr" / f"{cid}.nii.gz", i == LPS_CASE)
        ids.append(cid)
        labs.append(root / "labelsTr" / f"{cid}.nii.gz")
    meta = {k: v for k, v in MSD_JSON.items() if k not in ("modality", "labels")}
    meta.update({"labels": {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3},
                 "file_ending": ".nii.gz", "channel_names": MSD_JSON["modality"], "numTraining": n})
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    return root, ids, labs


def nnunet_v1(root: Path, n: int = N_CASES) -> tuple[Path, list[str], list[Path]]:
    """nnU-Net v1 raw, as nnunet/dataset_conversion/Task082_BraTS_2020.py writes it: imagesTr/<case>_0000..0003
    (T1, T1ce, T2, FLAIR), labels converted 2 → 1, 1 → 2, 4 → 3, dataset.json 'modality' and 'labels' value → name
    (1 edema, 2 non-enhancing, 3 enhancing); an imagesVal/ folder beside."""
    root, ids, labs = nnunet_v2(root, n)
    (root / "imagesVal").mkdir()
    meta = {"name": "BraTS2020", "description": "nothing", "tensorImageSize": "4D", "reference": "see BraTS2020",
            "licence": "see BraTS2020 license", "release": "0.0",
            "modality": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing", "3": "enhancing"},
            "numTraining": n, "numTest": 0, "test": [],
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids]}
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    return root, ids, labs


# (builder, each region's raw label values as the dataset defines it, meaning source, some contrast sources)
LAYOUTS: dict[str, tuple[Any, dict[str, set[int]], str, dict[str, str]]] = {
    "brats2021": (brats2021, {"whole_tumour": {1, 2, 4}, "tumour_core": {1, 4}, "enhancing_tumour": {4}},
                  "convention: BraTS 2018–2021", {"t1c": "<case>/<case>_t1ce.nii.gz", "flair": "<case>/<case>_flair.nii.gz"}),
    "brats2023": (brats2023, {"whole_tumour": {1, 2, 3}, "tumour_core": {1, 3}, "enhancing_tumour": {3}, "resection_cavity": {4}},
                  "convention: BraTS 2023–2025", {"t1": "<case>/<case>-t1n.nii.gz", "flair": "<case>/<case>-t2f.nii.gz"}),
    "msd": (msd, {"whole_tumour": {1, 2, 3}, "tumour_core": {2, 3}, "enhancing_tumour": {3}},
            "dataset.json", {"t1": "channel 1 of imagesTr/<case>.nii.gz (dataset.json modality '1': 'T1w')",
                             "flair": "channel 0 of imagesTr/<case>.nii.gz (dataset.json modality '0': 'FLAIR')"}),
    "nnunet_v2": (nnunet_v2, {"whole_tumour": {1, 2, 3}, "tumour_core": {2, 3}, "enhancing_tumour": {3}},
                  "dataset.json", {"t1c": "imagesTr/<case>_0001.nii.gz (dataset.json channel_names '1': 'T1ce')"}),
    "nnunet_v1": (nnunet_v1, {"whole_tumour": {1, 2, 3}, "tumour_core": {2, 3}, "enhancing_tumour": {3}},
                  "dataset.json", {"flair": "imagesTr/<case>_0003.nii.gz (dataset.json modality '3': 'FLAIR')"}),
    "nnunet_v2/msd": (msd_by_nnunet_v2, {"whole_tumour": {1, 2, 3}, "tumour_core": {2, 3}, "enhancing_tumour": {3}},
                      "dataset.json", {"t1": "imagesTr/<case>_0001.nii.gz (dataset.json channel_names '1': 'T1w')"}),
}


def raw_counts(labels: list[Path], regions: dict[str, set[int]]) -> dict[str, int]:
    """Each region's voxel count in the raw label files, by the dataset's own region definition."""
    arrays = [np.asarray(nib.load(str(p)).dataobj) for p in labels]
    return {r: int(sum(np.isin(a, list(v)).sum() for a in arrays)) for r, v in regions.items()}


def loaded_counts(data, regions) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {r: int(sum(data.region_mask(s.masks, r).sum() for s in (data.train, data.test))) for r in regions}


def slices_of(data, case: str) -> dict[int, tuple[Any, Any]]:  # type: ignore[no-untyped-def]
    """z → (image C×H×W, mask H×W) of ``case`` across both splits."""
    out = {}
    for s in (data.train, data.test):
        for k, sid in enumerate(s.ids):
            cid, z = sid.rsplit(":z", 1)
            if cid == case:
                out[int(z)] = (s.images[k].numpy(), s.masks[k, 0].numpy())
    return out


def best_pattern(image: np.ndarray, z: int) -> tuple[str, float]:
    """The contrast whose marker ``image`` (one displayed slice) correlates with most, and that correlation."""
    scores = {c: float(np.corrcoef(image.ravel(), axial_to_display(p[:, :, z]).ravel())[0, 1]) for c, p in PATTERNS.items()}
    best = max(scores, key=scores.get)  # type: ignore[arg-type]
    return best, scores[best]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_published_layout_regions_orientation_and_contrasts(tmp_path: Path, name: str) -> None:
    build, raw_regions, meaning_source, sources = LAYOUTS[name]
    root, ids, label_files = build(tmp_path / name.replace("/", "_"))
    data = load_data(str(root), DiskCache(tmp_path / "cache"), crop=CROP, test_fraction=0.34)

    assert data.provenance["layout"] == name.split("/")[0]
    assert data.contrasts == ("t1", "t1c", "t2", "flair")  # all the data has, canonical order, whatever the file order
    assert data.provenance["label_meaning_source"].startswith(meaning_source)
    # every region holds exactly the voxels the raw files give it, by the dataset's own definition
    assert loaded_counts(data, raw_regions) == raw_counts(label_files, raw_regions)
    assert all(v > 0 for v in raw_counts(label_files, raw_regions).values())
    assert {"LPS", "RAS"} <= set(data.provenance["orientations"])
    for i, cid in enumerate(ids):
        canon = tumour(i, rc=name == "brats2023" and i == 0)
        got = slices_of(data, cid)
        lesion = [z for z in range(SHAPE[2]) if canon[:, :, z].any()]
        assert sorted(got) == lesion, cid
        for z, (image, mask) in got.items():
            # masks where the RAS tumour is (LPS files reoriented), in the canonical values
            assert np.array_equal(mask, axial_to_display(canon[:, :, z])), (cid, z)
            for c, contrast in enumerate(data.contrasts):  # each channel comes from the file or channel that holds it
                best, r = best_pattern(image[c], z)
                assert best == contrast and r > 0.95, (cid, z, contrast, best, r)
    read = {d["contrast"]: d["source"] for d in data.provenance["contrasts_read"]}
    assert {c: read[c] for c in sources} == sources


def test_brats2020_uncompressed_files_and_the_odd_segmentation_name(tmp_path: Path) -> None:
    """BraTS 2020 ships .nii files, and case 355 names its segmentation W39_1998.09.19_Segm.nii."""
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    for i in (354, 355):
        cid = f"BraTS20_Training_{i:03d}"
        for suffix, contrast in (("t1", "t1"), ("t1ce", "t1c"), ("t2", "t2"), ("flair", "flair")):
            save(PATTERNS[contrast], root / cid / f"{cid}_{suffix}.nii", False)
        seg = root / cid / (f"{cid}_seg.nii" if i == 354 else "W39_1998.09.19_Segm.nii")
        save(recode(tumour(i), {1: 1, 2: 2, 3: 4}).astype(np.uint8), seg, False)
    data = load_data(str(root), DiskCache(tmp_path / "c"), contrasts=["flair"], crop=CROP)
    assert data.provenance["layout"] == "brats2021" and len(data.train) + len(data.test) == sum(
        int(tumour(i).reshape(-1, SHAPE[2]).any(0).sum()) for i in (354, 355))


def test_msd_t1_reads_channel_1_not_channel_0(tmp_path: Path) -> None:
    root, ids, _ = msd(tmp_path / "Task01_BrainTumour")
    cache = DiskCache(tmp_path / "cache")
    for asked, expect in ((["t1"], ("t1",)), (["T1w"], ("t1",)), (["flair", "t1gd"], ("flair", "t1c")), (["2"], ("t1c",))):
        data = load_data(str(root), cache, contrasts=asked, crop=CROP)
        assert data.contrasts == expect
        for c, contrast in enumerate(expect):
            image = data.train.images[0, c].numpy()
            z = int(data.train.ids[0].rsplit(":z", 1)[1])
            assert best_pattern(image, z)[0] == contrast
    assert data.provenance["contrasts_read"] == [{"contrast": "t1c", "source": "channel 2 of imagesTr/<case>.nii.gz "
                                                                                "(dataset.json modality '2': 't1gd')"}]
    ignored = data.provenance["ignored_files"]
    assert {f"imagesTr/._{c}.nii.gz" for c in ids} | {f"labelsTr/._{c}.nii.gz" for c in ids} <= set(ignored["files"])
    assert "._" in ignored["note"]


def test_unknown_contrast_names_the_contrasts_the_data_has(tmp_path: Path) -> None:
    root, _, _ = brats2021(tmp_path / "b")
    with pytest.raises(DataError, match=r"contrast 'dwi' is not in the data; it has \['t1', 't1c', 't2', 'flair'\]"):
        load_data(str(root), DiskCache(tmp_path / "c"), contrasts=["dwi"])
    root, _, _ = msd(tmp_path / "m")
    with pytest.raises(DataError, match=r"contrast 'pd' is not in the data; it has \['t1', 't1c', 't2', 'flair'\]"):
        load_data(str(root), DiskCache(tmp_path / "c"), modality="pd")


def test_an_ambiguous_contrast_is_an_error_naming_each_candidate(tmp_path: Path) -> None:
    """Two channels (dataset.json naming channel 3 'T1' besides channel 1 'T1w') or two files (<case>_t1 and <case>_t1n)
    of one contrast: asked for or read by default, an error that names every candidate with the name the data give it
    and the contrasts the data have (the doubled T1 hides channel 3's T2), never the first of them silently."""
    root, _, _ = msd(tmp_path / "m")
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"]["3"] = "T1"  # channel 3 (T2w) now also says T1
    (root / "dataset.json").write_text(json.dumps(meta))
    both = (r"contrast 't1' is ambiguous: \[\"channel 1 of imagesTr/<case>.nii.gz \(dataset.json modality '1': 'T1w'\)\", "
            r"\"channel 3 of imagesTr/<case>.nii.gz \(dataset.json modality '3': 'T1'\)\"\]")
    for asked, remedy in (({"contrasts": ["t1"]}, "give a channel index"), ({"modality": "t1"}, "give a channel index"),
                          ({}, r"name the channels to read with data.contrasts \(channel indices allowed\)")):
        with pytest.raises(DataError, match=both + r"; the data has \['t1', 't1c', 'flair'\]; " + remedy):
            load_data(str(root), DiskCache(tmp_path / "c"), crop=CROP, **asked)
    assert load_data(str(root), DiskCache(tmp_path / "c"), contrasts=["1"], crop=CROP).contrasts == ("t1",)  # the way out
    root, ids, _ = brats2021(tmp_path / "b")
    for cid in ids:
        save(PATTERNS["t1"], root / cid / f"{cid}_t1n.nii.gz", False)  # BraTS 2023's name for T1 next to BraTS 2021's
    case = root / ids[0]
    for asked in ({"contrasts": ["t1"]}, {}):
        with pytest.raises(DataError, match=rf"{case / (ids[0] + '_t1.nii.gz')} and {case / (ids[0] + '_t1n.nii.gz')} are both "
                                            r"contrast 't1'; expected one file per contrast"):
            load_data(str(root), DiskCache(tmp_path / "c"), crop=CROP, **asked)


def test_only_the_contrasts_asked_for_are_read(tmp_path: Path) -> None:
    root, ids, _ = brats2021(tmp_path / "b")
    broken = root / ids[0] / f"{ids[0]}_t1.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    data = load_data(str(root), DiskCache(tmp_path / "c"), contrasts=["flair", "t2"], crop=CROP)
    assert data.contrasts == ("flair", "t2")
    with pytest.raises(DataError, match=rf"{broken.name}: not a readable NIfTI file"):
        load_data(str(root), DiskCache(tmp_path / "c"))


def test_macos_debris_and_hidden_files_are_ignored_and_recorded(tmp_path: Path) -> None:
    root, ids, _ = brats2021(tmp_path / "b")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "__MACOSX").mkdir()
    (root / "name_mapping.csv").write_text("BraTS_2021_subject_ID\n")
    (root / ids[0] / f"._{ids[0]}_t1.nii.gz").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    (root / ids[0] / ".hidden.nii.gz").write_bytes(b"junk")
    data = load_data(str(root), DiskCache(tmp_path / "c"), contrasts=["t1"], crop=CROP)
    assert set(data.provenance["ignored_files"]["files"]) >= {".DS_Store", "__MACOSX/", "name_mapping.csv",
                                                             f"{ids[0]}/._{ids[0]}_t1.nii.gz", f"{ids[0]}/.hidden.nii.gz"}


def ixi(root: Path, contrasts=("T1", "T2"), n: int = 3) -> Path:  # type: ignore[no-untyped-def]
    """IXI-like healthy cohort: a flat folder of <id>-<contrast>.nii.gz."""
    root.mkdir(parents=True)
    brain = np.zeros(SHAPE, np.float32)
    brain[3:21, 3:21, 2:10] = 1  # 8 of 12 slices hold brain
    names = {"T1": "t1", "T2": "t2"}
    for i in range(n):
        for c in contrasts:
            nib.save(nib.Nifti1Image(PATTERNS[names[c]] * brain, RAS), root / f"IXI{i:03d}-Guys-{800 + i:04d}-{c}.nii.gz")
    return root


def test_healthy_cohort_flat_ixi_folder(tmp_path: Path) -> None:
    root = ixi(tmp_path / "IXI")
    data = load_data(str(root), DiskCache(tmp_path / "c"), crop=CROP)
    assert data.provenance["layout"] == "flat" and data.contrasts == ("t1", "t2") and not data.has_masks
    assert data.labels == {} and "healthy cohort" in data.provenance["annotations"]
    assert len(data.train) + len(data.test) == 3 * 8  # slices with brain, not lesions
    assert all(int(s.masks.abs().sum()) == 0 for s in (data.train, data.test))
    assert load_data(str(root), DiskCache(tmp_path / "c"), contrasts=["t2"], crop=CROP).contrasts == ("t2",)


def test_healthy_cohort_case_folders_and_a_mix_is_an_error(tmp_path: Path) -> None:
    root, ids, labels = brats2021(tmp_path / "b")
    for p in labels:
        p.unlink()
    data = load_data(str(root), DiskCache(tmp_path / "c"), crop=CROP)
    assert not data.has_masks and data.provenance["layout"] == "case_folders" and len(data.contrasts) == 4
    root, ids, labels = brats2021(tmp_path / "mix")
    labels[2].unlink()
    with pytest.raises(DataError, match=rf"cases \['{ids[2]}'\] \(1 of 3\) have no label file"):
        load_data(str(root), DiskCache(tmp_path / "c"))


def test_unnamed_flat_folder_needs_the_contrast_named(tmp_path: Path) -> None:
    root = tmp_path / "scans"
    root.mkdir()
    for i in range(3):
        nib.save(nib.Nifti1Image(PATTERNS["t1"], RAS), root / f"subject{i}.nii.gz")
    with pytest.raises(DataError, match=r"do not say their contrast; name the one contrast"):
        load_data(str(root), DiskCache(tmp_path / "c"))
    assert load_data(str(root), DiskCache(tmp_path / "c"), contrasts=["T1w"], crop=CROP).contrasts == ("t1",)


def images_tr_without_json(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for i in range(N_CASES):
        save(PATTERNS["t1"] + rng.normal(0, 0.1, SHAPE).astype(np.float32), root / "imagesTr" / f"case_{i}_0000.nii.gz", False)
        save(recode(tumour(i), {2: 1, 1: 2, 3: 3}), root / "labelsTr" / f"case_{i}.nii.gz", False)
    return root


def test_missing_meaning_asks_for_labels_and_labels_decide(tmp_path: Path) -> None:
    root = images_tr_without_json(tmp_path / "d")
    cache = DiskCache(tmp_path / "c")
    with pytest.raises(DataError, match=r"meaning of label values \[1, 2, 3\].*imagesTr/ has no dataset.json.*labels: \{1: "):
        load_data(str(root), cache)
    # the map as a suite gives it (keys as a JSON round trip leaves them), synonyms allowed
    data = load_data(str(root), cache, labels={"1": "edema", "2": "necrotic_core", "3": "ET"}, crop=CROP)
    assert data.provenance["label_meaning_source"] == "suite data.labels" and data.contrasts == ("channel0",)
    labs = [root / "labelsTr" / f"case_{i}.nii.gz" for i in range(N_CASES)]
    regions = {"whole_tumour": {1, 2, 3}, "tumour_core": {2, 3}, "enhancing_tumour": {3}}
    assert loaded_counts(data, regions) == raw_counts(labs, regions)
    assert {(d["source_value"], d["meaning"], d["value"]) for d in data.provenance["label_map"]} == {
        (0, "background", 0), (1, "oedema", 2), (2, "necrotic_core", 1), (3, "enhancing", 3)}
    with pytest.raises(DataError, match=r"contrast 't1' is not in the data; it has \['channel0'\].*give channel indices"):
        load_data(str(root), cache, contrasts=["t1"], labels={1: "oedema", 2: "necrotic_core", 3: "enhancing"})
    assert load_data(str(root), cache, contrasts=["0"], labels={1: "oedema", 2: "necrotic_core", 3: "enhancing"},
                     crop=CROP).contrasts == ("channel0",)


def test_labels_override_a_convention_and_a_value_outside_it_is_an_error(tmp_path: Path) -> None:
    root, ids, labels = brats2021(tmp_path / "b")
    cache = DiskCache(tmp_path / "c")
    lab = nib.load(str(labels[0]))
    arr = np.asarray(lab.dataobj).copy()
    arr[arr == 4] = 3  # a BraTS 2021 file with the value 3, which that release does not have
    nib.save(nib.Nifti1Image(arr, lab.affine), labels[0])
    with pytest.raises(DataError, match=r"label values \[3\] found .*BraTS 2018–2021 has no label 3"):
        load_data(str(root), cache)
    data = load_data(str(root), cache, labels={1: "necrotic_core", 2: "oedema", 3: "enhancing", 4: "enhancing"}, crop=CROP)
    regions = {"enhancing_tumour": {3, 4}, "whole_tumour": {1, 2, 3, 4}}
    assert loaded_counts(data, regions) == raw_counts(labels, regions)


def test_dataset_json_meanings_other_tissue_and_placeholders(tmp_path: Path) -> None:
    root = images_tr_without_json(tmp_path / "v")
    meta = {"channel_names": {"0": "MRA"}, "labels": {"background": 0, "vessel": 1, "aneurysm": 2, "calcification": 3},
            "numTraining": N_CASES, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    data = load_data(str(root), DiskCache(tmp_path / "c"), crop=CROP)
    assert data.contrasts == ("mra",) and data.labels == {"vessel": 1, "aneurysm": 2, "calcification": 3}
    assert data.regions == {"foreground": (1, 2, 3)}  # no tumour meaning, so no tumour region
    meta["labels"] = {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"label 1 is named 'label_1', which does not say the tissue.*labels: \{1: oedema"):
        load_data(str(root), DiskCache(tmp_path / "c"))
    named = load_data(str(root), DiskCache(tmp_path / "c"), labels={1: "oedema", 2: "necrotic_core", 3: "enhancing"}, crop=CROP)
    assert named.regions["tumour_core"] == (1, 3) and named.provenance["label_meaning_source"] == "suite data.labels"


def test_label_names_of_public_datasets() -> None:
    names = {"edema": "oedema", "SNFH": "oedema", "ED": "oedema", "non-enhancing tumor": "necrotic_core", "NETC": "necrotic_core",
             "NCR/NET": "necrotic_core", "enhancing tumour": "enhancing", "ET": "enhancing", "RC": "resection_cavity",
             "background": "background", "Left Atrium": "left_atrium", "class 2": None, "foreground": None, "7": None}
    assert {n: label_meaning(n) for n in names} == names


def test_pediatric_brats_needs_a_labels_map(tmp_path: Path) -> None:
    root, ids, _ = brats2023(tmp_path / "p")
    for cid in ids:
        ped = cid.replace("GLI", "PED")
        (root / cid).rename(root / ped)
        for f in (root / ped).iterdir():
            f.rename(f.with_name(f.name.replace("GLI", "PED")))
    with pytest.raises(DataError, match=r"BraTS-PEDs releases do not share one label numbering"):
        load_data(str(root), DiskCache(tmp_path / "c"))


def test_geometry_mismatch_names_both_files(tmp_path: Path) -> None:
    root, ids, labels = brats2021(tmp_path / "b")
    shifted = RAS.copy()
    shifted[0, 3] = 5.0
    nib.save(nib.Nifti1Image(np.asarray(nib.load(str(labels[2])).dataobj), shifted), labels[2])
    with pytest.raises(DataError, match=rf"geometry mismatch: .*{ids[2]}_t1.nii.gz .* but .*{ids[2]}_seg.nii.gz"):
        load_data(str(root), DiskCache(tmp_path / "c"))


def test_cases_are_cached_one_by_one_and_files_not_rehashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, ids, _ = brats2021(tmp_path / "b", n=4)
    hashed: list[Path] = []
    cases_read: list[str] = []
    real_hash, real_read = filememo.file_sha256, nifti.read_case
    monkeypatch.setattr(filememo, "file_sha256", lambda p: (hashed.append(Path(p)), real_hash(p))[1])
    monkeypatch.setattr(nifti, "read_case", lambda case, *a: (cases_read.append(case.id), real_read(case, *a))[1])

    first = load_data(str(root), DiskCache(tmp_path / "c"), crop=CROP)
    assert len(hashed) == 4 * 5 and sorted(cases_read) == ids  # 4 contrasts + seg per case
    hashed.clear(), cases_read.clear()
    again = load_data(str(root), DiskCache(tmp_path / "c"), crop=CROP)  # a new run on the same cache
    assert hashed == [] and cases_read == [] and again.digests() == first.digests()
    load_data(str(root), DiskCache(tmp_path / "c"), crop=CROP, test_fraction=0.5)  # another split: no case redone
    assert hashed == [] and cases_read == []
    brats2021(tmp_path / "extra", n=5)
    (tmp_path / "extra" / "BraTS2021_00004").rename(root / "BraTS2021_00004")
    load_data(str(root), DiskCache(tmp_path / "c"), crop=CROP)  # one case added: only it is hashed and read
    assert {p.parent.name for p in hashed} == {"BraTS2021_00004"} and cases_read == ["BraTS2021_00004"]


def test_progress_messages_and_the_default_printer_throttles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, _ = brats2021(tmp_path / "b")
    messages: list[str] = []
    load_data(str(root), DiskCache(tmp_path / "c"), crop=CROP, progress=messages.append)
    assert messages == [f"mriq: reading brats2021 {i}/3 cases ({root})" for i in (1, 2, 3)]
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", terminal)
    now = [0.0]
    printer = nifti.StderrProgress(after_s=2.0, every_s=1.0, clock=lambda: now[0])
    for t in np.arange(0, 5, 0.25):  # 20 messages over 5 s: none in the first 2 s, then at most one a second
        now[0] = float(t)
        printer(f"at {t:.2f} s")
    assert terminal.getvalue().splitlines() == ["at 2.00 s", "at 3.00 s", "at 4.00 s"]
