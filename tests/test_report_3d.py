"""Report and figures for volumes: the sample grid shows each volume's axial slice through its lesion
centroid with the index written; the report's data section says the items are 3D volumes; nothing breaks on 5D."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from test_models_3d import SHAPE, volume_data

from mriq_validate.figures import axial_sample, lesion_slice, sample_grid_figure
from mriq_validate.integrity import validate_report
from mriq_validate.report import build_report, write_report
from mriq_validate.session import RunContext, RunSettings


def samples_section(page: str) -> str:
    """The "Samples: real vs generated" section of a report page (its caption and the grid as an inline PNG)."""
    match = re.search(r"<section id='samples'>.*?</section>", page, re.S)
    assert match is not None, "the page has no samples section"
    return match.group(0)


def test_lesion_slice_is_the_centroid_and_the_mid_slice_without_lesion() -> None:
    mask = np.zeros(SHAPE, np.int64)
    assert lesion_slice(mask) == SHAPE[0] // 2
    mask[3:6, 5:9, 5:9] = 2  # slices 3, 4, 5 equally: centroid 4
    assert lesion_slice(mask) == 4
    mask[12, 0, 0] = 1  # one voxel far above pulls the centroid up by (12 - 4) / (3·16 + 1)
    assert lesion_slice(mask) == int(np.floor((3 * 16 * 4 + 12) / 49 + 0.5)) == 4
    mask[12, :4, :4] = 1  # 16 voxels at 12 against 48 around 4: centroid (48·4 + 16·12) / 64 = 6
    assert lesion_slice(mask) == 6


def test_the_sample_grid_of_volumes_shows_the_lesion_centroid_slice() -> None:
    data = volume_data()
    real, gen, masks = data.test.images.numpy(), data.test.images.numpy()[::-1].copy(), data.test.masks.numpy()
    cut = axial_sample({"real": real, "generated": gen, "masks": masks[:, 0], "contrasts": ["t1", "flair"]})
    want = [lesion_slice(m[0]) for m in masks]
    assert list(cut["slice_index"]) == want and cut["real"].shape == (4, 2, *SHAPE[1:]) and cut["masks"].shape == (4, *SHAPE[1:])
    assert all((cut["masks"][i] > 0).any() for i in range(4))  # the slice through the centroid of these compact lesions shows them
    np.testing.assert_array_equal(cut["generated"][1, 1], gen[1, 1, want[1]])
    fig = sample_grid_figure({"real": real, "generated": gen, "masks": masks, "contrasts": np.array(["t1", "flair"])}, n=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"axial slice {k}" for k in want[:3]]
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    np.testing.assert_array_equal(shown[2 * 3 + 2], real[2, 1, want[2]])  # row 3 (real flair), column 3
    slices = {"real": real[:, :, 5], "generated": gen[:, :, 5], "masks": masks[:, 0, 5]}
    assert axial_sample(slices) is slices  # slices pass unchanged


def test_the_report_of_a_volume_run_records_the_item_kind_and_draws_the_sample(tmp_path: Path) -> None:
    """A run context on volumes (builtin:real): its provenance says spatial_dims 3 and volumes, its sample grid travels as
    the centroid slices; the report validates and its page shows the samples and the data section's item kind."""
    data = volume_data()
    ctx = RunContext(RunSettings(model="builtin:real", data=None, device="cpu", cache_dir=str(tmp_path / "cache")), "test-volumes",
                     data=data)  # the data as a loader would give it
    sample, paired = ctx.generated("test")
    assert paired and sample.images.shape == (4, 2, *SHAPE) and ctx.item_kind == "volumes"
    samples = ctx.sample_images(k=3)
    assert samples is not None and list(samples["slice_index"]) == [lesion_slice(m[0]) for m in data.test.masks[:3].numpy()]
    assert samples["real"].shape == (3, 2, *SHAPE[1:])
    prov = ctx.provenance()
    assert prov["data"]["spatial_dims"] == 3 and prov["data"]["item_kind"] == "volumes" and prov["data"]["spacing_mm"] == [2.0, 1.5, 1.25]
    report = build_report([], {"settings": {"seed": 0, "device": "cpu", "model": "builtin:real"}, "suites": [],
                               "contexts": [json.loads(json.dumps(prov, default=str))]})
    folder = write_report(report, tmp_path / "out", sample_images=samples)
    validate_report(json.loads(folder.read_text()))
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Samples: real vs generated" in page and "axial slice through the lesion centroid" in page
    assert "<th>train / test volumes</th><td>6 / 4</td>" in page and "<th>items</th><td>3D volumes</td>" in page
    # 5D tensors, uncut, draw the grid of their centroid slices, cut here by hand: the same picture, pixel for pixel
    images, masks = data.test.images[:2], data.test.masks[:2]
    full = write_report(report, tmp_path / "full", sample_images={"real": images, "generated": images, "masks": masks})
    assert full == tmp_path / "full" / "report.json"
    index = [lesion_slice(m[0]) for m in masks.numpy()]
    by_hand = {"real": np.stack([v[:, k] for v, k in zip(images.numpy(), index)]), "masks": np.stack([m[0, k] for m, k in zip(masks.numpy(), index)]),
               "slice_index": np.array(index)}
    write_report(report, tmp_path / "by-hand", sample_images={**by_hand, "generated": by_hand["real"]})
    uncut, cut = (samples_section((tmp_path / f / "report.html").read_text()) for f in ("full", "by-hand"))
    assert "axial slice through the lesion centroid" in uncut and uncut == cut
    assert torch.equal(sample.images, data.test.images)
