"""Folder models: masks read as integer labels, images scaled by the bit depth the file or the user states; several
contrasts as one array or one file per contrast; the export-masks layout read back as a mask-conditioned model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from contrast_data import one_contrast, several_contrasts
from PIL import Image, PngImagePlugin

from mriq_validate import cli
from mriq_validate.data.contrasts import contrast_name
from mriq_validate.errors import ModelError
from mriq_validate.folder_model import MANIFEST, SIDECAR, FolderModel, open_folder_model, png_chunks, portable_stems
from mriq_validate.models import ModelContext, load_model

SHAPE = (1, 8, 8)
LABELS = {1, 2, 3}


def labels_array(seed: int = 0) -> np.ndarray:
    """An 8×8 mask holding every label 0-3."""
    return np.random.default_rng(seed).permutation(np.arange(64) % 4).reshape(8, 8)


def save_png(path: Path, arr: np.ndarray, sbit: int | None = None, bits: int | None = None) -> Path:
    """A grey PNG of ``arr`` (uint8 → 8 bit, uint16 → 16 bit), with an sBIT chunk when given."""
    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(arr).save(path, pnginfo=info, **({"bits": bits} if bits else {}))
    return path


def folder_with(tmp_path: Path, image: np.ndarray, ext: str = "png", sbit: int | None = None, sidecar: object = None) -> Path:
    """One image ``a.<ext>`` with an 8-bit PNG mask, and ``mriq_folder.json`` holding ``sidecar`` when given."""
    if ext == "png":
        save_png(tmp_path / "a.png", image, sbit)
    else:
        np.save(tmp_path / "a.npy", image)
    save_png(tmp_path / "a_seg.png", labels_array().astype(np.uint8))
    if sidecar is not None:
        (tmp_path / SIDECAR).write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    return tmp_path


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_masks_are_read_as_integer_labels(tmp_path: Path, dtype: type) -> None:
    labels = labels_array()
    save_png(tmp_path / "a.png", np.full((8, 8), 128, np.uint8))
    save_png(tmp_path / "a_seg.png", labels.astype(dtype))
    model = FolderModel(tmp_path, SHAPE, LABELS)
    _, masks = model.sample(None, seed=0)
    assert masks.dtype == torch.int64 and np.array_equal(masks[0, 0].numpy(), labels)  # not divided by 255 or 65535


def test_palette_and_low_bit_depth_masks_keep_their_labels(tmp_path: Path) -> None:
    labels = labels_array(1)
    save_png(tmp_path / "a.png", np.full((8, 8), 128, np.uint8))
    save_png(tmp_path / "a_seg.png", labels.astype(np.uint8), bits=2)  # a 2-bit grey PNG: Pillow expands it to 0..255
    assert png_chunks((tmp_path / "a_seg.png").read_bytes())[b"IHDR"][8] == 2
    save_png(tmp_path / "b.png", np.full((8, 8), 128, np.uint8))
    pal = Image.fromarray(labels.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    pal.save(tmp_path / "b_seg.png")
    _, masks = FolderModel(tmp_path, SHAPE, LABELS).sample(None, seed=0)
    assert np.array_equal(masks[0, 0].numpy(), labels) and np.array_equal(masks[1, 0].numpy(), labels)


def test_mask_outside_the_label_set_names_the_file(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", np.full((8, 8), 128, np.uint8))
    save_png(tmp_path / "a_seg.png", (labels_array() * 85).astype(np.uint8))  # a mask saved for viewing
    with pytest.raises(ModelError, match=r"a_seg.png: mask labels \[0, 85, 170, 255\]; \[85, 170, 255\] are outside the data's label set \[0, 1, 2, 3\]"):
        FolderModel(tmp_path, SHAPE, LABELS)


def test_non_integer_mask_names_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.full((8, 8), 0.5))
    np.save(tmp_path / "a_seg.npy", labels_array() / 255.0)  # labels scaled as an image would be
    with pytest.raises(ModelError, match=r"a_seg.npy: mask values are not integer labels \(e.g. 0.003922, 0.007843, 0.01176\)"):
        FolderModel(tmp_path, SHAPE, LABELS)


def test_integer_valued_float_masks_are_labels(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.full((8, 8), 0.5))
    np.save(tmp_path / "a_seg.npy", labels_array().astype(np.float32))
    _, masks = FolderModel(tmp_path, SHAPE, LABELS).sample(None, seed=0)
    assert np.array_equal(masks[0, 0].numpy(), labels_array())


CODES12 = np.arange(64, dtype=np.uint16).reshape(8, 8) * 65  # 12-bit values 0..4095
CODES16 = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040  # values 0..65520: the 16-bit range in use


@pytest.mark.parametrize(
    "image, ext, sbit, sidecar, expected, scaling",
    [
        (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "png", None, None, lambda a: a / 255, "dtype max 255"),
        (CODES12, "png", 12, None, lambda a: a / 4095, "sBIT 12 bits"),
        # as the PNG specification asks: 12-bit samples scaled to 16 bits by left bit replication, sBIT 12
        ((CODES12 << 4) | (CODES12 >> 8), "png", 12, None, lambda a: CODES12 / 4095, "sBIT 12 bits (samples scaled to 16 bits"),
        (CODES12, "png", None, {"range": [0, 4095]}, lambda a: a / 4095, "range [0, 4095] from mriq_folder.json"),
        (CODES16, "png", None, None, lambda a: a / 65535, "dtype max 65535"),
        (CODES16, "npy", None, None, lambda a: a / 65535, "dtype max 65535"),
        (CODES12, "npy", None, {"range": [0, 4095]}, lambda a: a / 4095, "range [0, 4095] from mriq_folder.json"),
        (CODES12.astype(np.float64) / 4095, "npy", None, None, lambda a: a, "floating-point values as stored"),
        (CODES12.astype(np.float32) + 1000, "npy", None, {"range": [1000, 5095]}, lambda a: (a - 1000) / 4095, "range [1000, 5095]"),
    ],
    ids=["png8", "png16-sbit12", "png16-sbit12-spec-scaled", "png16-sidecar", "png16-plain", "npy-uint16", "npy-uint16-sidecar",
         "npy-float", "npy-float-sidecar-offset"],
)
def test_image_scaling(tmp_path: Path, image: np.ndarray, ext: str, sbit: int | None, sidecar: object,
                       expected: object, scaling: str) -> None:
    model = FolderModel(folder_with(tmp_path, image, ext, sbit, sidecar), SHAPE, LABELS)
    images, _ = model.sample(None, seed=0)
    want = expected(image.astype(np.float64))  # type: ignore[operator]
    np.testing.assert_allclose(images[0, 0].numpy(), want, rtol=0, atol=1e-7)  # float32 of the exact quotient
    assert model.describe()["scaling"].startswith(scaling)


def test_mixed_scalings_are_counted(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", CODES12, sbit=12)
    save_png(tmp_path / "b.png", CODES16)
    model = FolderModel(tmp_path, SHAPE)
    assert model.describe()["scaling"] == "dtype max 65535 (largest stored value 65520) (1 files); sBIT 12 bits (1 files)"


@pytest.mark.parametrize("ext", ["png", "npy"])
def test_values_that_fit_a_narrower_bit_depth_are_an_error_naming_the_files_and_the_fix(tmp_path: Path, ext: str) -> None:
    """12-bit values (nothing above 4095) in 16-bit files without an sBIT chunk or a stated range would be divided by
    65535, 16 times too dark: refused, naming the files (first few and the count), the largest value folder-wide, the
    type's depth and both ways to state the range."""
    for i in range(7):
        if ext == "png":
            save_png(tmp_path / f"s{i}.png", CODES12)
        else:
            np.save(tmp_path / f"s{i}.npy", CODES12)
    with pytest.raises(ModelError) as err:
        FolderModel(tmp_path, SHAPE)
    msg = str(err.value)
    assert f"s0.{ext}, s1.{ext}, s2.{ext}" in msg and "(7 files)" in msg and "largest stored value is 4095" in msg, msg
    assert "12 bits" in msg and "16-bit" in msg and "65535" in msg and "16 times too dark" in msg, msg
    assert 'mriq_folder.json in the folder with the field "range"' in msg and '{"range": [0, 4095]}' in msg, msg
    assert ("an sBIT chunk in each PNG giving the significant bits, e.g. 12" in msg) == (ext == "png"), msg
    (tmp_path / SIDECAR).write_text('{"range": [0, 4095]}')
    assert FolderModel(tmp_path, SHAPE).describe()["scaling"] == "range [0, 4095] from mriq_folder.json"


def test_an_8_bit_folder_whose_values_fit_6_bits_is_refused_and_a_dark_file_is_not(tmp_path: Path) -> None:
    """The rule reads the largest value of the whole folder: a dark image beside images that use the range is read by
    the type's maximum; a folder whose values all stay below 2^(8-2) = 64 is refused."""
    save_png(tmp_path / "dark.png", np.full((8, 8), 20, np.uint8))
    save_png(tmp_path / "bright.png", np.full((8, 8), 230, np.uint8))
    model = FolderModel(tmp_path, SHAPE)
    assert model.describe()["scaling"] == "dtype max 255 (largest stored value 230)"
    images = model.sample(None, seed=0)
    np.testing.assert_allclose(images[:, 0, 0, 0].numpy(), [230 / 255, 20 / 255], rtol=1e-6)
    (tmp_path / "bright.png").unlink()
    with pytest.raises(ModelError, match=r"dark.png \(1 files\) hold 8-bit PNG integers whose largest stored value is 20, "
                                         r"folder-wide: that fits in 5 bits"):
        FolderModel(tmp_path, SHAPE)


def test_integer_nifti_slices_without_a_range_are_refused_but_scaled_or_float_ones_are_read(tmp_path: Path) -> None:
    """Integer NIfTI images (MRI is often int16 with values up to a few thousand) would be divided by the type's maximum
    (32767): refused, saying how to state the range. A header scl_slope (NIfTI-1 header: values = slope * stored +
    inter) or floating-point values are read as the file states them, with no depth guessed."""
    import nibabel as nib

    raw = (np.arange(64).reshape(8, 8) * 50).astype(np.int16)  # 0..3150, as in an MRI scan
    nib.save(nib.Nifti1Image(raw, np.eye(4)), str(tmp_path / "a.nii.gz"))
    with pytest.raises(ModelError) as err:
        FolderModel(tmp_path, SHAPE)
    msg = str(err.value)
    assert "a.nii.gz" in msg and "largest stored value is 3150" in msg and "int16" in msg and "32767" in msg, msg
    assert '"range": [0, 4095]' in msg and "floating-point values in [0, 1]" in msg, msg
    scaled = nib.Nifti1Image(raw, np.eye(4))
    scaled.header.set_slope_inter(1 / 3150, 0)
    nib.save(scaled, str(tmp_path / "a.nii.gz"))
    model = FolderModel(tmp_path, SHAPE)
    assert model.describe()["scaling"] == "floating-point values as stored"
    np.testing.assert_allclose(model.sample(None, seed=0)[0, 0].numpy(), raw / 3150, atol=1e-6)


@pytest.mark.parametrize(
    "sidecar, message",
    [
        ('{"range": [0, 4095', r"mriq_folder.json: not valid JSON"),
        ([0, 4095], r"mriq_folder.json: a JSON list; expected an object such as \{\"range\": \[0, 4095\]\}"),
        ({}, r"mriq_folder.json: field 'range' is missing"),
        ({"range": [0, 4095], "bits": 12}, r"mriq_folder.json: unknown field\(s\) \['bits'\]; expected only 'range'"),
        ({"range": [4095, 0]}, r"mriq_folder.json: field 'range' is \[4095, 0\]; expected \[low, high\], two finite numbers with low < high"),
        ({"range": [0]}, r"mriq_folder.json: field 'range' is \[0\]; expected \[low, high\]"),
        ({"range": ["0", "4095"]}, r"mriq_folder.json: field 'range' is \[\"0\", \"4095\"\]; expected \[low, high\]"),
    ],
)
def test_malformed_sidecar_names_the_file_and_field(tmp_path: Path, sidecar: object, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        FolderModel(folder_with(tmp_path, CODES12, sidecar=sidecar), SHAPE, LABELS)


def test_values_outside_the_stated_range_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"a.png: stored values \[0, 4095\] become \[0, 16.06\] after scaling \(range \[0, 255\] from mriq_folder.json\); "
                                         r"expected \[0, 1\]: the range in mriq_folder.json does not cover the stored values"):
        FolderModel(folder_with(tmp_path, CODES12, sidecar={"range": [0, 255]}), SHAPE, LABELS)


def test_float_images_outside_unit_range_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"a.npy: stored values \[0, 4095\] become \[0, 4095\] after scaling \(floating-point values as stored\); expected \[0, 1\]"):
        FolderModel(folder_with(tmp_path, CODES12.astype(np.float32), "npy"), SHAPE, LABELS)


def test_bad_sbit_and_colour_pngs_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"a.png: the sBIT chunk gives 12 significant bits; a 8-bit PNG allows 1 to 8"):
        FolderModel(folder_with(tmp_path, np.zeros((8, 8), np.uint8), sbit=12), SHAPE, LABELS)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ModelError, match=r"a.png: colour PNG \(colour type 2\); expected a single-channel grey image"):
        FolderModel(tmp_path, SHAPE, LABELS)


def test_provenance_records_the_scaling_and_the_sidecar(tmp_path: Path, mni) -> None:
    mni = one_contrast(mni)
    ctx = ModelContext.for_data(mni, torch.device("cpu"), 0)
    for i in range(2):
        save_png(tmp_path / f"c{i}.png", np.round(mni.test.images[i, 0].numpy() * 4095).astype(np.uint16))
        save_png(tmp_path / f"c{i}_seg.png", mni.test.masks[i, 0].numpy().astype(np.uint8))
    with pytest.raises(ModelError, match=r"largest stored value is 4095, .*mriq_folder.json"):  # no range stated: no guess
        load_model(str(tmp_path), ctx, mni)
    (tmp_path / SIDECAR).write_text('{"range": [0, 4095]}')
    ranged = load_model(str(tmp_path), ctx, mni)
    assert ranged.provenance["scaling"] == "range [0, 4095] from mriq_folder.json" and ranged.provenance["n_files"] == 4
    images, masks = ranged.sample(None, seed=0)
    assert torch.equal(masks, mni.test.masks[:2])
    np.testing.assert_allclose(images.numpy(), mni.test.images[:2].numpy(), atol=0.5 / 4095 + 1e-6)  # 12-bit quantisation


# ---------------------------------------------------------------------------------------------- several contrasts

SHAPE3 = (3, 8, 8)
NAMES3 = ("t1", "t2", "flair")


def three(seed: int = 0) -> np.ndarray:
    """3×8×8 float images in [0, 1], distinct per contrast."""
    return np.random.default_rng(seed).random((3, 8, 8))


def model3(folder: Path) -> FolderModel:
    return FolderModel(folder, SHAPE3, LABELS, NAMES3, contrast_name)


def test_one_file_per_contrast_with_synonyms_in_any_order(tmp_path: Path) -> None:
    img = three()
    for name, k in (("FLAIR", 2), ("T1w", 0), ("t2w", 1)):  # synonyms of flair, t1, t2; written out of order
        save_png(tmp_path / f"case_{name}.png", np.round(img[k] * 255).astype(np.uint8))
    save_png(tmp_path / "case_seg.png", labels_array().astype(np.uint8))
    images, masks = model3(tmp_path).sample(None, seed=0)
    assert images.shape == (1, 3, 8, 8) and masks.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(images[0].numpy(), np.round(img * 255) / 255, atol=1e-7)  # channels in the data's order


@pytest.mark.parametrize("layout", ["slice", "stack"])
def test_one_array_with_every_contrast(tmp_path: Path, layout: str) -> None:
    imgs = np.stack([three(0), three(1)])
    if layout == "slice":
        for i in range(2):
            np.save(tmp_path / f"s{i}.npy", imgs[i])
    else:
        np.save(tmp_path / "s.npy", imgs)
    images = model3(tmp_path).sample(None, seed=0)
    np.testing.assert_allclose(images.numpy(), imgs, atol=1e-7)


def test_files_of_contrasts_the_run_does_not_use_are_listed(tmp_path: Path) -> None:
    img = three(2)
    for k, name in enumerate(("t1", "t2", "flair")):
        np.save(tmp_path / f"case_{name}.npy", img[k])
    np.save(tmp_path / "case_t1ce.npy", img[0])  # a fourth contrast, not selected for this run
    model = model3(tmp_path)
    np.testing.assert_allclose(model.sample(None, seed=0)[0].numpy(), img, atol=1e-7)
    assert model.describe()["unused_files"] == {"n": 1, "examples": ["case_t1ce.npy"], "why": "contrasts the run does not use (it uses t1, t2, flair)"}


def test_a_missing_contrast_file_names_the_file_and_the_contrasts(tmp_path: Path) -> None:
    save_png(tmp_path / "case_t1.png", np.zeros((8, 8), np.uint8))
    save_png(tmp_path / "case_flair.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ModelError, match=r"'case' has case_t1.png, case_flair.png but no case_t2.png; expected one file per contrast of "
                                         r"\['t1', 't2', 'flair'\]"):
        model3(tmp_path)


def test_images_given_both_ways_or_twice_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "case.npy", three())
    np.save(tmp_path / "case_t1.npy", three()[0])
    with pytest.raises(ModelError, match=r"case.npy and case_t1.npy both give the images of 'case'"):
        model3(tmp_path)
    (tmp_path / "case.npy").unlink()
    np.save(tmp_path / "case_t1n.npy", three()[0])
    with pytest.raises(ModelError, match=r"case_t1.npy and case_t1n.npy are both the t1 image of 'case'"):
        model3(tmp_path)


def test_a_grey_image_for_several_contrasts_says_how_to_name_them(tmp_path: Path) -> None:
    save_png(tmp_path / "case.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ModelError, match=r"case.png: array of shape \(8, 8\); expected the 3 contrasts \(t1, t2, flair\) of one slice, 3×8×8 "
                                         r"\(or a stack N×3×8×8\), or one 8×8 file per contrast named <name>_<contrast>.png"):
        model3(tmp_path)


def test_images_and_labels_layout_with_one_file_per_contrast(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    img = three(3)
    for k, name in enumerate(NAMES3):
        np.save(tmp_path / "images" / f"a_{name}.npy", img[k])
    np.save(tmp_path / "labels" / "a.npy", labels_array())
    images, masks = model3(tmp_path).sample(None, seed=0)
    np.testing.assert_allclose(images[0].numpy(), img, atol=1e-7)
    assert np.array_equal(masks[0, 0].numpy(), labels_array())


# ---------------------------------------------------------------------------------------------- export-masks round trip


def test_portable_stems_map_ids_to_safe_unique_names() -> None:
    ids = ["BraTS-001:z042", "BraTS-001:z042", "a/b c", ".hidden", "", "case_t1", "case_seg"]
    reserved = lambda stem: stem.rpartition("_")[2] in {"seg", "t1"}  # noqa: E731
    stems = portable_stems(ids, reserved=reserved)
    assert stems == ["BraTS-001_z042", "BraTS-001_z042__2", "a_b_c", "x.hidden", "x", "case_t1__2", "case_seg__2"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", s) for s in stems) and len(set(stems)) == len(stems)


def _export(tmp_path: Path, cache_dir: Path, *args: str) -> tuple[Path, dict]:
    out = tmp_path / "export"
    assert cli.main(["export-masks", str(out), "--cache", str(cache_dir), *args]) == 0
    return out, json.loads((out / MANIFEST).read_text())


def _write_images(out: Path, manifest: dict, data, split: str, per_contrast: bool) -> None:
    images = getattr(data, split).images
    for e, img in zip(manifest["splits"][split], images):
        if per_contrast:  # one 16-bit PNG per contrast, named with a synonym where there is one
            for name, chan in zip(manifest["contrasts"], img):
                token = {"t1": "t1n", "flair": "FLAIR"}.get(name, name)
                save_png(out / split / f"{e['stem']}_{token}.png", np.round(chan.numpy() * 65535).astype(np.uint16))
        else:
            np.save(out / split / f"{e['stem']}.npy", img.numpy())


def test_export_masks_round_trip_with_several_contrasts(tmp_path: Path, cache_dir: Path, mni) -> None:
    """Export the test and train masks of three contrasts, save the real images under the exported names (test: one
    PNG per contrast; train: one C×H×W array), load the folder as the model: generate() gives the real images back."""
    data = several_contrasts(mni, 3)
    out, manifest = _export(tmp_path, cache_dir, "--contrasts", ",".join(data.contrasts))
    assert manifest["contrasts"] == list(data.contrasts) and manifest["image_shape"] == list(data.image_shape)
    assert [e["id"] for e in manifest["splits"]["test"]] == list(data.test.ids)
    assert [e["id"] for e in manifest["splits"]["train"]] == list(data.train.ids)
    assert not any(":" in p.name for p in out.rglob("*"))
    ctx = ModelContext.for_data(data, torch.device("cpu"), 0)
    _write_images(out, manifest, data, "test", per_contrast=True)
    model = load_model(str(out), ctx, data)
    assert model.can_generate and model.provenance["splits"] == {"test": {"masks": len(data.test), "images": len(data.test)},
                                                                 "train": {"masks": len(data.train), "images": 0}}
    got = model.generate(data.test.masks, seed=0)
    np.testing.assert_allclose(got.numpy(), data.test.images.numpy(), atol=0.5 / 65535 + 1e-6)  # 16-bit quantisation
    assert torch.equal(model.generate(data.test.masks[3:5], seed=0), got[3:5])  # any exported masks, in the order asked
    with pytest.raises(ModelError, match=r"no images for the train masks: save one per mask in .*train/ as <stem>.npy \(3×H×W\) or "
                                         r"<stem>_t1.png.*train-on-synthetic criteria \(dice_tstr, dice_augmented\)"):
        model.generate(data.train.masks, seed=0)
    _write_images(out, manifest, data, "train", per_contrast=False)
    model = load_model(str(out), ctx, data)
    assert torch.equal(model.generate(data.train.masks, seed=0), data.train.images)


def test_export_masks_with_one_contrast_and_the_suites_data_options(tmp_path: Path, cache_dir: Path, mni) -> None:
    suite = tmp_path / "suite.yaml"
    text = (Path(cli.__file__).resolve().parents[1] / "suites" / "brain_tumour.yaml").read_text()
    suite.write_text(text.replace("    default: builtin:mni-tumour\n", f"    default: builtin:mni-tumour\n    contrasts: [{mni.contrasts[-1]}]\n", 1))
    out, manifest = _export(tmp_path, cache_dir, "--suite", str(suite))
    data = mni.select([mni.contrasts[-1]])
    assert manifest["contrasts"] == list(data.contrasts) and manifest["data_options"] == {"contrasts": list(data.contrasts)}
    _write_images(out, manifest, data, "test", per_contrast=False)
    _write_images(out, manifest, data, "train", per_contrast=False)
    model = load_model(str(out), ModelContext.for_data(data, torch.device("cpu"), 0), data)
    assert torch.equal(model.generate(data.test.masks, seed=0), data.test.images)
    assert torch.equal(model.generate(data.train.masks, seed=0), data.train.images)


def test_export_folder_errors_name_the_files(tmp_path: Path, cache_dir: Path, mni) -> None:
    data = several_contrasts(mni, 3)
    out, manifest = _export(tmp_path, cache_dir, "--contrasts", ",".join(data.contrasts))
    shape, names = data.image_shape, data.contrasts
    with pytest.raises(ModelError, match=r"no images beside the exported masks yet"):
        open_folder_model(out, shape, None, names, contrast_name)
    first, second = (e["stem"] for e in manifest["splits"]["test"][:2])
    np.save(out / "test" / f"{first}.npy", data.test.images[0].numpy())
    with pytest.raises(ModelError, match=rf"images for 1 of {len(data.test)} exported masks; missing {len(data.test) - 1}, e.g. {second}.npy"):
        open_folder_model(out, shape, None, names, contrast_name)
    np.save(out / "test" / "typo.npy", data.test.images[0].numpy())
    with pytest.raises(ModelError, match=r"1 file\(s\) match no exported mask, e.g. \['typo.npy'\]"):
        open_folder_model(out, shape, None, names, contrast_name)
    other = tuple(reversed(names))
    with pytest.raises(ModelError, match=re.escape(f"exported for contrasts {list(names)}, the run's data has {list(other)}")):
        open_folder_model(out, shape, None, other, contrast_name)
    assert cli.main(["export-masks", str(out), "--cache", str(cache_dir)]) == 2  # never over an earlier export


def test_an_exported_folder_is_a_mask_conditioned_model_in_a_gate_run(pytester: pytest.Pytester, run_plugin, cache_dir: Path, mni) -> None:
    """export-masks, the real test images saved under the exported names (every contrast), then a gate run with the
    folder as the model: the images are paired with the test masks and Dice on them equals Dice on the real ones."""
    out, manifest = _export(pytester.path, cache_dir)
    _write_images(out, manifest, mni, "test", per_contrast=False)
    pytester.makefile(".yaml", suite=(
        "mriq_suite:\n  name: tiny\n  context_of_use: folder test\n  criteria:\n"
        "    - id: DICE-WT\n      requirement: r\n      hazard: h\n      rationale: r\n      metric: dice\n"
        "      params: {region: whole_tumour}\n      threshold: {min: -0.05, relative: difference}\n"))
    result = run_plugin(f"--mriq-model={out}", "--mriq-device=cpu", "--mriq-report=report")
    result.assert_outcomes(passed=1)
    rep = json.loads((pytester.path / "report" / "report.json").read_text())
    (rec,) = rep["results"]
    assert rec["samples"]["paired"] and rec["samples"]["evaluated"] == "generated (test masks)" and rec["compared"]["value"] == 0.0
    contexts = rep["provenance"]["contexts"]
    (model,) = [c["model"] for c in (contexts.values() if isinstance(contexts, dict) else contexts) if "model" in c]
    assert model["layout"] == "export-masks" and model["splits"]["test"]["images"] == len(mni.test)
