"""Volumes answered in X×Y×Z order on a grid where D = W (the embedded 3D data, 64×72×64, and the default NIfTI grid,
96×112×96): the shape check cannot see the swap, the axis-order check does (:mod:`mriq_validate.axis_order`). Faithful
volumes (the real ones and every builtin stand-in) are never flagged; D↔W-swapped ones, with or without the H flip of a
true RAS X×Y×Z array, are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mriq_validate.cache import DiskCache
from mriq_validate.data import load_data
from mriq_validate.data.core import ReferenceData
from mriq_validate.errors import ModelError
from mriq_validate.models import BUILTIN_MODELS, ModelAdapter, ModelContext, load_model

PICK = [0, 3, 6, 9, 12, 15, 18]  # 7 of the 19 test volumes: the checks run per call, so single volumes are the hard case


@pytest.fixture(scope="module")
def vol(cache_dir: Path) -> ReferenceData:
    return load_data("builtin:mni-tumour-3d", DiskCache(cache_dir))


@pytest.fixture(scope="module")
def ctx(vol: ReferenceData) -> ModelContext:
    return ModelContext.for_data(vol, torch.device("cpu"), 0)


def swapped(x: torch.Tensor) -> torch.Tensor:
    """D and W exchanged (a ``permute(0, 1, 4, 3, 2)``)."""
    return x.transpose(2, 4).contiguous()


def xyz(x: torch.Tensor) -> torch.Tensor:
    """The RAS X×Y×Z array of D×H×W volumes (``xyz[w, H-1-h, d] = x[d, h, w]``), what a model working in NIfTI order returns."""
    return x.transpose(2, 4).flip(3).contiguous()


class Fixed:
    """A model that answers every request with ``images`` (as many as asked)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        return self.images[: masks.shape[0]]


def test_the_statistic_separates_faithful_from_swapped_volumes_with_the_measured_margin(vol: ReferenceData, ctx: ModelContext) -> None:
    """Single real test volumes and the whole test split: as returned they match the reference far better than with D↔W
    exchanged (by 0.31 or more, measured); swapped or X×Y×Z they match it far better exchanged. The rule's margin (0.15)
    lies halfway."""
    from mriq_validate.axis_order import MARGIN, axis_order_scores, mean_volume

    ref = mean_volume(ctx.train_images)
    batches = [vol.test.images[i : i + 1] for i in PICK] + [vol.test.images]
    for x in batches:
        ok = axis_order_scores(mean_volume(x), ref, ctx.spacing_mm)
        assert not ok.flagged and ok.swapped - ok.as_is <= -2 * MARGIN and ok.as_is > 0.6, ok
        for wrong in (swapped(x), xyz(x)):
            bad = axis_order_scores(mean_volume(wrong), ref, ctx.spacing_mm)
            assert bad.flagged and bad.swapped - bad.as_is >= 2 * MARGIN, bad


@pytest.mark.heavy
def test_faithful_stand_ins_pass_and_a_model_in_x_y_z_order_is_an_error(vol: ReferenceData, ctx: ModelContext) -> None:
    masks = vol.test.masks[PICK]
    for name in BUILTIN_MODELS:  # every stand-in that passes today, one volume per call and all at once
        model = load_model(f"builtin:{name}", ctx, vol)
        assert model.generate(masks[:1], seed=0).shape == (1, *vol.image_shape)
        assert model.generate(masks, seed=0).shape == (len(PICK), *vol.image_shape)
    real = vol.test.images[PICK]
    assert torch.equal(ModelAdapter(Fixed(real), "m.py:faithful", ctx).generate(masks, seed=0), real)
    for wrong in (swapped(real), xyz(real)):
        for n in (1, len(PICK)):
            with pytest.raises(ModelError) as err:
                ModelAdapter(Fixed(wrong), "m.py:xyz", ctx).generate(masks[:n], seed=0)
            msg = str(err.value)
            assert msg.startswith("model m.py:xyz generate() returned volumes that seem to be in X×Y×Z order (D and W swapped)"), msg
            assert "x.permute(0, 1, 4, 3, 2).flip(3)" in msg and "D×H×W" in msg, msg


def test_structureless_or_symmetric_volumes_are_not_flagged(vol: ReferenceData, ctx: ModelContext) -> None:
    """Noise, a constant and a volume symmetric under the D↔W exchange carry no evidence of an axis order: never an error."""
    from mriq_validate.axis_order import axis_order_scores, mean_volume

    ref = mean_volume(ctx.train_images)
    noise = torch.rand(2, *vol.image_shape, generator=torch.Generator().manual_seed(0))
    real = vol.test.images[:1]
    symmetric = (real + swapped(real)) / 2
    for x in (noise, torch.full((1, *vol.image_shape), 0.5), symmetric):
        assert not axis_order_scores(mean_volume(x), ref, ctx.spacing_mm).flagged
    masks = vol.test.masks[:2]
    assert ModelAdapter(Fixed(noise), "m.py:noise", ctx).generate(masks, seed=0).shape == noise.shape
    assert np.isfinite(axis_order_scores(mean_volume(noise), ref, ctx.spacing_mm).as_is)


def test_the_margin_holds_on_the_default_nifti_grid(tmp_path: Path) -> None:
    """A synthetic BraTS 2021 cohort read with ``slicing: volume`` onto the default grid (96×112×96 at 2 mm, D = W),
    normalised per volume: each test volume alone is not flagged, and flagged once swapped or in X×Y×Z order."""
    from mriq_validate.axis_order import MARGIN, axis_order_scores, mean_volume
    from mriq_validate.data.cohort_writer import write_cohort

    write_cohort(tmp_path / "brats", "brats2021", 6, seed=3, voxel_mm=2.0, shape=(96, 112, 80), orientation="LPS")
    data = load_data(str(tmp_path / "brats"), DiskCache(tmp_path / "cache"), slicing="volume", test_fraction=0.34)
    assert data.image_shape[1:] == (96, 112, 96) and len(data.test) >= 2
    ref = mean_volume(data.train.images)
    for i in range(len(data.test)):
        x = data.test.images[i : i + 1]
        ok = axis_order_scores(mean_volume(x), ref, data.spacing_mm)
        assert not ok.flagged and ok.swapped - ok.as_is <= -2 * MARGIN, ok
        assert all(axis_order_scores(mean_volume(w), ref, data.spacing_mm).flagged for w in (swapped(x), xyz(x)))
