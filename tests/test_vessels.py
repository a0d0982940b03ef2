"""``builtin:mni-vessel``: deterministic, thin labelled vessels; the vessel perturbations break and prune them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from mriq_validate.cache import DiskCache
from mriq_validate.data import BUILTIN_DATASETS, ReferenceData, load_data
from mriq_validate.perturb import PerturbContext, apply

VESSEL_CTX = PerturbContext(lesion_labels=(1,))


@pytest.fixture(scope="module")
def data(cache_dir: Path) -> ReferenceData:
    """The cohort, from the tests' shared cache so it is built once (~15 s cold)."""
    return load_data("builtin:mni-vessel", DiskCache(cache_dir))


def test_vessel_cohort_shape_labels_and_provenance(data: ReferenceData) -> None:
    assert "mni-vessel" in BUILTIN_DATASETS and data.name == "builtin:mni-vessel"
    assert (len(data.train), len(data.test)) == (192, 96)
    assert data.image_shape == (1, 128, 128) and data.spacing_mm == (1.5, 1.5)
    assert data.labels == {"vessel": 1} and data.regions == {"vessel": (1,)}
    for split in (data.train, data.test):
        assert split.images.dtype == torch.float32 and split.masks.dtype == torch.int64
        assert float(split.images.min()) >= 0.0 and float(split.images.max()) <= 1.0
        assert set(torch.unique(split.masks).tolist()) == {0, 1}
        assert set(np.unique(split.covariates["site"]).tolist()) == {0, 1, 2}
        assert (split.masks.flatten(1).sum(1) > 50).all()  # every slice has vessels
    assert {"source", "simulated", "generator", "preprocessing", "cache_key"} <= set(data.provenance)
    assert "nilearn" in data.provenance["source"] and "vessel" in data.provenance["simulated"]
    assert len(set(data.train.ids) | set(data.test.ids)) == 288


def test_vessels_are_thin_and_bright(data: ReferenceData) -> None:
    masks = data.train.masks[:, 0].numpy().astype(bool)
    images = data.train.images[:, 0].numpy()
    widths = [ndimage.distance_transform_edt(m)[m] for m in masks]
    assert np.mean([w.mean() for w in widths]) < 1.5  # mean half-width: 1-3 px wide vessels
    everything = np.concatenate(widths)
    assert np.percentile(everything, 99) <= 2.5 and (everything > 2.3).mean() < 0.02  # only crossings are thicker
    assert 0.005 < masks.mean() < 0.1
    brain = ndimage.binary_erosion(images > 0.05, iterations=2) & ~ndimage.binary_dilation(masks, iterations=2)
    assert images[masks].mean() > images[brain].mean() + 0.3


def test_vessel_cohort_is_deterministic(data: ReferenceData) -> None:
    from mriq_validate.data.mni import load_template, split_in_memory, template_paths
    from mriq_validate.data.vessels import vessel_case

    again = split_in_memory(vessel_case, load_template(template_paths()), 3, "test", prefix="vessel-")
    assert torch.equal(again.images, data.test.images[:3]) and torch.equal(again.masks, data.test.masks[:3])
    assert again.ids == data.test.ids[:3]
    assert all(np.array_equal(v, data.test.covariates[k][:3]) for k, v in again.covariates.items())


def _components(images: torch.Tensor, threshold: float = 0.6) -> np.ndarray:
    return np.array([ndimage.label(x > threshold, structure=np.ones((3, 3)))[1] for x in images[:, 0].numpy()])


def test_vessel_break_cuts_bright_vessels_into_more_pieces(data: ReferenceData) -> None:
    images, masks = data.test.images[:16], data.test.masks[:16]
    bright = lambda x: int(((x > 0.6) & (masks > 0)).sum())  # noqa: E731
    out = apply("vessel_break", images, masks, seed=0, ctx=VESSEL_CTX, gaps=5, length=5)
    assert torch.equal(out.masks, masks)
    assert bright(out.images) < bright(images)
    assert (_components(out.images) >= _components(images)).all()
    assert _components(out.images).sum() > _components(images).sum() + 16  # on average > 1 extra piece per slice
    more = apply("vessel_break", images, masks, seed=0, ctx=VESSEL_CTX, gaps=10, length=5)
    assert bright(more.images) < bright(out.images)


def test_vessel_prune_removes_small_branches_only(data: ReferenceData) -> None:
    images, masks = data.test.images[:16], data.test.masks[:16]
    vessel_bright = lambda x: int(((x > 0.6) & (masks > 0)).sum())  # noqa: E731
    levels = [vessel_bright(apply("vessel_prune", images, masks, seed=0, ctx=VESSEL_CTX, min_area=a).images) for a in (0, 20, 60, 200)]
    assert levels == sorted(levels, reverse=True) and levels[-1] < levels[0]
    # big trunks survive a small threshold
    kept = apply("vessel_prune", images, masks, seed=0, ctx=VESSEL_CTX, min_area=20).images
    assert vessel_bright(kept) > 0.5 * vessel_bright(images)
