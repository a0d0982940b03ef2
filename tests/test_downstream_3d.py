"""Downstream measures on volumes (N×C×D×H×W): the 3D segmenter chosen by the data, padding, sliding-window
inference, left-right flips, protocol A (Dice, HD95, lesion-wise) and protocol B (TSTR) with one suite format.

The volumes are 12 synthetic cases (8 train, 4 test) of 4×32×32×32 at 6 mm from
:func:`mriq_validate.data.mni3d.synthesise_volume`, laid out as the contract says (D = axial slice index, each D-slice
``axial_to_display`` of the RAS axial slice). Segmenters use a small test budget (:data:`TEST_SEGMENTER`) and the
shared on-disk cache.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mriq_validate import segmenter, segnets
from mriq_validate.cache import DiskCache
from mriq_validate.data.core import ReferenceData, Split
from mriq_validate.data.mni3d import synthesise_volume
from mriq_validate.data.volumes import display_volume
from mriq_validate.errors import MetricError
from mriq_validate.metrics import Sample, create_metric
from mriq_validate.metrics.functional import lesionwise as LW
from mriq_validate.metrics.functional.downstream import HD95_DEFINITIONS, hd95_per_image
from mriq_validate.segmenter import DEFAULT_BUDGET, SegmenterConfig, get_segmenter, segmenter_key
from mriq_validate.segnets import divisible_pad
from mriq_validate.session import RunContext, RunSettings

CONTRASTS = ("t1", "t1c", "t2", "flair")
LABELS = {"necrotic_core": 1, "oedema": 2, "enhancing": 3}
REGIONS = {"whole_tumour": (1, 2, 3), "tumour_core": (1, 3), "enhancing_tumour": (3,)}
# Measured on these volumes (seed 0, CPU): 24 epochs reach whole-tumour Dice 0.67-0.89 (mean 0.79) on the 4 test
# volumes, trained in 5-25 s on a busy 2-core machine; the default 3D budget (DEFAULT_BUDGET[3]) is for the 44-volume builtin cohort.
TEST_SEGMENTER = {"channels": [8, 16, 32], "strides": [2, 2], "epochs": 24}
DEVICE = torch.device("cpu")



@functools.lru_cache(maxsize=2)
def synthetic_volumes(n: int = 12, seed: int = 5, voxel_mm: float = 6.0, shape: tuple[int, int, int] = (32, 32, 32)
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` volumes N×4×D×H×W in [0, 1] (each contrast divided by its brain's 99.5th percentile) and N×1×D×H×W labels."""
    images, masks = [], []
    for i in range(n):
        case = synthesise_volume(np.random.default_rng([seed, i]), voxel_mm=voxel_mm, shape=shape)
        vol = np.stack([display_volume(case.images[c]) for c in CONTRASTS])
        scale = np.array([np.percentile(v[v > 0], 99.5) for v in vol])[:, None, None, None]
        images.append(np.clip(vol / scale, 0, 1).astype(np.float32))
        masks.append(display_volume(case.labels)[None].astype(np.int64))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))


def volume_data(spacing_mm: float = 6.0, n_train: int = 8) -> ReferenceData:
    """The synthetic volumes as reference data (``n_train`` train, the rest test) at an isotropic ``spacing_mm``."""
    x, y = synthetic_volumes()
    split = lambda s: Split(x[s], y[s], tuple(f"case{i}" for i in range(len(x)))[s])  # noqa: E731
    return ReferenceData("test-volumes", split(slice(0, n_train)), split(slice(n_train, None)), LABELS, REGIONS, (spacing_mm,) * 3,
                         CONTRASTS, {"source": "mni3d.synthesise_volume, 6 mm"})


def VolumeContext(data: ReferenceData, cache_dir: Path) -> RunContext:  # noqa: N802 (a constructor, as the tests use it)
    """A run context over given reference data (no model)."""
    return RunContext(RunSettings(model=None, data=None, device="cpu", cache_dir=str(cache_dir)), "test-volumes", data=data)


def erase_lesions(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each lesion voxel set to its contrast's median over the healthy brain of its volume (the tumour's intensity gone,
    the anatomy kept)."""
    out = images.clone()
    for i in range(len(out)):
        lesion = masks[i, 0] > 0
        healthy = (images[i].sum(0) > 0) & ~lesion
        for c in range(out.shape[1]):
            out[i, c][lesion] = images[i, c][healthy].median()
    return out


@pytest.fixture(scope="module")
def ctx(cache_dir: Path) -> VolumeContext:
    return VolumeContext(volume_data(), cache_dir)


# ---------------------------------------------------------------- the configuration follows the data


def test_the_data_decide_dimensionality_and_budget() -> None:
    cfg = SegmenterConfig.from_params({})
    assert (cfg.spatial_dims, cfg.epochs, cfg.batch_size) == (None, None, None)
    two, three = cfg.resolve(2), cfg.resolve(3)
    assert (two.spatial_dims, two.epochs, two.batch_size) == (2, *DEFAULT_BUDGET[2].values())
    assert (three.spatial_dims, three.epochs, three.batch_size) == (3, *DEFAULT_BUDGET[3].values())
    assert three.batch_size <= 2 < two.batch_size  # volumes: small batches
    assert SegmenterConfig.from_params({"epochs": 3}).resolve(3).epochs == 3  # what a suite sets is kept
    # 2D keys: the same as a configuration that spells the 2D budget out (keys cached before 3D support stay valid)
    x, y = torch.rand(4, 2, 16, 16), torch.randint(0, 3, (4, 1, 16, 16))
    spelled = SegmenterConfig.from_params({"epochs": 40, "batch_size": 16, "spatial_dims": 2})
    assert segmenter_key(x, y, 4, cfg) == segmenter_key(x, y, 4, spelled)
    assert {"spatial_dims", "roi_size"}.isdisjoint(segmenter._key_fields(cfg))
    fields3 = segmenter._key_fields(three)
    assert fields3["spatial_dims"] == 3 and fields3["epochs"] == DEFAULT_BUDGET[3]["epochs"] and "roi_size" not in fields3
    assert segmenter._key_fields(SegmenterConfig.from_params({"roi_size": [16, 16, 16]}).resolve(3))["roi_size"] == (16, 16, 16)


def test_a_suite_that_sets_the_other_dimensionality_is_an_error_naming_it(ctx: VolumeContext) -> None:
    with pytest.raises(MetricError, match=r"metric 'dice': segmenter.spatial_dims=2 but the data are 3D volumes \(N×C×D×H×W\); "
                                          r"leave spatial_dims out"):
        ctx.prepare(create_metric("dice", {"segmenter": {"spatial_dims": 2}}), ctx.real("test"))
    with pytest.raises(MetricError, match=r"metric 'hd95': segmenter.spatial_dims=2"):
        ctx.prepare(create_metric("hd95", {"segmenter": {"spatial_dims": 2}}), ctx.real("test"))
    with pytest.raises(MetricError, match=r"metric 'dice_tstr': segmenter.spatial_dims=2"):
        ctx.prepare(create_metric("dice_tstr", {"segmenter": {"spatial_dims": 2}}), ctx.real("train"))
    with pytest.raises(MetricError, match=r"segmenter.spatial_dims=3 but the data are 2D slices"):
        SegmenterConfig.from_params({"spatial_dims": 3}).resolve(2)
    with pytest.raises(MetricError, match=r"roi_size \[16, 16\] has 2 axes but the data are 3D volumes"):
        SegmenterConfig.from_params({"roi_size": [16, 16]}).resolve(3, "metric 'dice': ")
    with pytest.raises(MetricError, match=r"segmenter.roi_size \[20, 16, 16\] must be divisible by 8"):
        SegmenterConfig.from_params({"roi_size": [20, 16, 16]})


# ---------------------------------------------------------------- padding, sliding windows, flips


@settings(max_examples=8, deadline=None)
@given(st.lists(st.integers(3, 13), min_size=2, max_size=3), st.sampled_from([2, 4, 8]))
def test_divisible_pad_pads_to_a_multiple_and_crops_back(sizes: list[int], k: int) -> None:
    x = torch.rand(2, 3, *sizes)
    padded, crop = divisible_pad(x, k)
    assert all(n % k == 0 and 0 <= n - s < k for n, s in zip(padded.shape[2:], sizes))
    assert torch.equal(padded[crop], x) and float(padded.sum()) == pytest.approx(float(x.sum()), rel=1e-6)  # zeros added only
    if all(s % k == 0 for s in sizes):
        assert padded is x


def test_volumes_of_any_size_train_and_predict_at_their_own_size(tmp_path: Path) -> None:
    x, y = synthetic_volumes()
    x, y = x[:4, :, 3:23, 2:29, 1:31], y[:4, :, 3:23, 2:29, 1:31]  # 20×27×30: none divisible by 4
    cfg = SegmenterConfig.from_params({"channels": [4, 8, 16], "strides": [2, 2], "epochs": 1})
    seg = get_segmenter(x, y, 4, cfg, DEVICE, DiskCache(tmp_path))
    assert seg.config.spatial_dims == 3 and seg.config.batch_size == DEFAULT_BUDGET[3]["batch_size"]
    pred = seg.predict(x)
    assert pred.shape == y.shape and pred.dtype == torch.int64
    with pytest.raises(MetricError, match=r"expected N×4×D×H×W"):
        seg.predict(x[:, :, 0])


def test_sliding_window_inference_agrees_with_whole_volume_inference(ctx: VolumeContext) -> None:
    cfg = SegmenterConfig.from_params(TEST_SEGMENTER).resolve(3)
    whole = ctx.segmenter(cfg)
    windowed = segmenter.Segmenter(whole.net, whole.n_classes, SegmenterConfig.from_params({**TEST_SEGMENTER, "roi_size": [16, 16, 16]}),
                                   whole.key, DEVICE, in_channels=4)
    test = ctx.data.test
    a, b = whole.predict(test.images), windowed.predict(test.images)
    assert a.shape == b.shape == test.masks.shape
    # windows of half the size see less context at their borders; measured: 0.997 of the voxels agree, and the two
    # lesion predictions overlap with Dice 0.73: nearly all voxels and most of the lesion must agree
    assert float((a == b).float().mean()) > 0.97
    lesion_overlap = 2 * ((a > 0) & (b > 0)).sum() / ((a > 0).sum() + (b > 0).sum())
    assert float(lesion_overlap) > 0.6


def test_flip_augmentation_flips_left_right_only_on_volumes() -> None:
    x, y = torch.rand(64, 2, 4, 5, 6), torch.randint(0, 4, (64, 1, 4, 5, 6))
    fx, fy = segnets.AUGMENTS["flip"](x, y, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(fx[i], x[i].flip(-1)) for i in range(64)])
    kept = torch.tensor([torch.equal(fx[i], x[i]) for i in range(64)])
    assert bool((flipped ^ kept).all()) and 16 < int(flipped.sum()) < 48  # every volume either W-flipped or kept, about half
    assert all(torch.equal(fy[i], y[i].flip(-1) if flipped[i] else y[i]) for i in range(64))  # masks with their images


# ---------------------------------------------------------------- protocol A on volumes


def test_dice_per_volume_sees_an_erased_tumour(ctx: VolumeContext) -> None:
    dice = create_metric("dice", {"segmenter": TEST_SEGMENTER})
    real = ctx.prepare(dice, ctx.real("test"))
    test = ctx.data.test
    erased = ctx.prepare(dice, Sample(erase_lesions(test.images, test.masks), test.masks, "erased"))
    assert real.shape == erased.shape == (len(test),)  # one value per volume
    # measured: real 0.67-0.89 per volume (mean 0.79), erased 0.0 on every volume: without the lesion's intensity the
    # segmenter finds nothing, so the erased mean must stay below half the real one, and the real one above 0.5
    assert real.mean() > 0.5 and erased.mean() < 0.5 * real.mean()
    seg = ctx.segmenter(SegmenterConfig.from_params(TEST_SEGMENTER).resolve(3))
    assert seg.config.spatial_dims == 3 and any(isinstance(m, torch.nn.Conv3d) for m in seg.net.modules())


def test_hd95_in_mm_scales_with_the_data_spacing(cache_dir: Path) -> None:
    m = torch.zeros(2, 1, 16, 16, 16, dtype=torch.bool)
    m[:, :, 4:10, 4:10, 4:10] = True
    p = m.clone()
    p[1] = p[1].roll(3, dims=1)  # 3 voxels along D
    for definition in HD95_DEFINITIONS:
        one = hd95_per_image(p, m, (1.0, 1.0, 1.0), definition)
        np.testing.assert_allclose(hd95_per_image(p, m, (2.0, 2.0, 2.0), definition), 2 * one)
        assert one[0] == 0 and one[1] > 0
    np.testing.assert_allclose(hd95_per_image(p, m, (2.5, 1.0, 1.0))[1], 2.5 * hd95_per_image(p, m, (1.0, 1.0, 1.0))[1])  # along D
    # through the metric: the same voxels at twice the data's spacing give twice the distances
    hd = {"segmenter": TEST_SEGMENTER, "definition": "brats2023"}
    six, twelve = VolumeContext(volume_data(6.0), cache_dir), VolumeContext(volume_data(12.0), cache_dir)
    a, b = six.prepare(create_metric("hd95", hd), six.real("test")), twelve.prepare(create_metric("hd95", hd), twelve.real("test"))
    assert np.all(a > 0) and np.all(a < 374)
    np.testing.assert_allclose(b, 2 * a)


def _two_arms(depth: int = 6) -> np.ndarray:
    """Two 3×3 columns in slice 0 joined only through slice 1 (a bridge): one lesion in 3D, two in slice 0."""
    m = np.zeros((depth, 16, 16), bool)
    m[0, 4:7, 2:5] = m[0, 4:7, 10:13] = True
    m[1, 4:7, 2:13] = True
    return m


def test_lesions_are_3d_components_on_volumes_and_plane_components_on_slices() -> None:
    m = _two_arms()
    three = LW.lesionwise_case(m, m, (1.0, 1.0, 1.0), dilation=0, volume_threshold=0)
    plane = LW.lesionwise_case(m[0], m[0], (1.0, 1.0), dilation=0, volume_threshold=0)
    assert len(three.volume) == 1 and len(plane.volume) == 2
    # touching only diagonally across slices: one 26-connected lesion, two lesions in each slice plane
    d = np.zeros((4, 12, 12), bool)
    d[1, 2:5, 2:5] = d[2, 5:8, 5:8] = d[1, 8:11, 8:11] = True
    assert len(LW.lesionwise_case(d, d, (1.0,) * 3, dilation=0, volume_threshold=0).volume) == 1
    assert len(LW.lesionwise_case(d, d, (1.0,) * 3, dilation=0, volume_threshold=0, connectivity=1).volume) == 3
    # predicting one arm: in 3D a partly found lesion (Dice > 0, nothing missed); in slice 0 one of two lesions missed
    p = m.copy()
    p[0, 4:7, 10:13] = False
    t3 = torch.from_numpy(m)[None, None]
    dice3, _ = LW.lesionwise_dice_hd95(torch.from_numpy(p)[None, None], t3, (1.0,) * 3, dilation=0, volume_threshold=0)
    dice2, _ = LW.lesionwise_dice_hd95(torch.from_numpy(p[:1])[:, None], torch.from_numpy(m[:1])[:, None], (1.0, 1.0), dilation=0,
                                       volume_threshold=0)
    assert 0.5 < dice3[0] < 1 and dice2[0] == pytest.approx(0.5)


def test_lesionwise_metrics_run_on_volumes_in_3d(ctx: VolumeContext) -> None:
    test = ctx.data.test
    dlw = create_metric("dice_lesionwise", {"segmenter": TEST_SEGMENTER, "dilation": 1, "volume_threshold": 216.0})
    hlw = create_metric("hd95_lesionwise", {"segmenter": TEST_SEGMENTER, "dilation": 1, "volume_threshold": 216.0})
    got_d, got_h = ctx.prepare(dlw, ctx.real("test")), ctx.prepare(hlw, ctx.real("test"))
    pred = ctx.data.region_mask(ctx.predict(SegmenterConfig.from_params(TEST_SEGMENTER).resolve(3), test.images), "whole_tumour")
    want_d, want_h = LW.lesionwise_dice_hd95(pred, ctx.data.region_mask(test.masks, "whole_tumour"), (6.0,) * 3, dilation=1,
                                             volume_threshold=216.0)
    np.testing.assert_allclose(got_d, want_d)
    np.testing.assert_allclose(got_h, want_h)
    assert got_d.shape == (len(test),) and np.all((0 <= got_d) & (got_d <= 1))
    assert any("on volumes, lesions are 3D (26-connected)" in t for t in dlw.limitations)
    assert "26-connected on volumes" in dlw.config()["lesionwise"]


# ---------------------------------------------------------------- protocol B on volumes


def test_tstr_on_volumes_trains_a_3d_segmenter_and_scores_each_real_test_volume(ctx: VolumeContext) -> None:
    tstr = create_metric("dice_tstr", {"segmenter": TEST_SEGMENTER, "noise_seeds": 2})
    trtr = ctx.prepare(tstr, ctx.real("train"))
    dice = ctx.prepare(create_metric("dice", {"segmenter": TEST_SEGMENTER}), ctx.real("test"))
    np.testing.assert_array_equal(trtr, dice)  # TRTR is protocol A's segmenter, scored per real test volume
    train = ctx.data.train
    erased = ctx.prepare(tstr, Sample(erase_lesions(train.images, train.masks), train.masks, "erased"))
    assert erased.shape == (len(ctx.data.test),)
    # trained on volumes without tumour intensity, the segmenter cannot find real tumours: measured Dice 0.0-0.016 per
    # volume against 0.79 (mean) for TRTR
    assert erased.mean() < 0.5 * trtr.mean()
    assert asdict(tstr.segmenter)["spatial_dims"] is None  # the suite's configuration, resolved per data
