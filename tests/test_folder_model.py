"""Folder models: masks read as integer labels, images scaled by the bit depth the file or the user states."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from mriq_validate.errors import ModelError
from mriq_validate.folder_model import SIDECAR, FolderModel, png_chunks
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


@pytest.mark.parametrize(
    "image, ext, sbit, sidecar, expected, scaling",
    [
        (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "png", None, None, lambda a: a / 255, "dtype max 255"),
        (CODES12, "png", 12, None, lambda a: a / 4095, "sBIT 12 bits"),
        # as the PNG specification asks: 12-bit samples scaled to 16 bits by left bit replication, sBIT 12
        ((CODES12 << 4) | (CODES12 >> 8), "png", 12, None, lambda a: CODES12 / 4095, "sBIT 12 bits (samples scaled to 16 bits"),
        (CODES12, "png", None, {"range": [0, 4095]}, lambda a: a / 4095, "range [0, 4095] from mriq_folder.json"),
        (CODES12, "png", None, None, lambda a: a / 65535, "dtype max 65535"),
        (CODES12, "npy", None, None, lambda a: a / 65535, "dtype max 65535"),
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
    save_png(tmp_path / "b.png", CODES12)
    model = FolderModel(tmp_path, SHAPE)
    assert model.describe()["scaling"] == "dtype max 65535 (1 files); sBIT 12 bits (1 files)"


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
    ctx = ModelContext(mni.train.images, mni.train.masks, mni.image_shape, torch.device("cpu"), 0, dict(mni.labels))
    for i in range(2):
        save_png(tmp_path / f"c{i}.png", np.round(mni.test.images[i, 0].numpy() * 4095).astype(np.uint16))
        save_png(tmp_path / f"c{i}_seg.png", mni.test.masks[i, 0].numpy().astype(np.uint8))
    plain = load_model(str(tmp_path), ctx, mni).provenance
    (tmp_path / SIDECAR).write_text('{"range": [0, 4095]}')
    ranged = load_model(str(tmp_path), ctx, mni)
    assert plain["scaling"] == "dtype max 65535" and ranged.provenance["scaling"] == "range [0, 4095] from mriq_folder.json"
    assert plain["sha256_16"] != ranged.provenance["sha256_16"] and plain["n_files"] == ranged.provenance["n_files"] == 4
    images, masks = ranged.sample(None, seed=0)
    assert torch.equal(masks, mni.test.masks[:2])
    np.testing.assert_allclose(images.numpy(), mni.test.images[:2].numpy(), atol=0.5 / 4095 + 1e-6)  # 12-bit quantisation
