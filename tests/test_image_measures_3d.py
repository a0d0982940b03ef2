"""Measures of images on volumes: 2D measures score a volume's axial slices with brain and aggregate them,
MS-SSIM compares volumes in 3D, copy detection embeds volumes in 3D; the conformal rule and 2D results are unchanged."""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mriq_validate.cache import DiskCache
from mriq_validate.data.mni3d import synthesise_volume
from mriq_validate.data.preprocess import BRAIN_FRACTION
from mriq_validate.data.volumes import display_volume
from mriq_validate.errors import MetricError
from mriq_validate.metrics import Sample, create_metric
from mriq_validate.metrics.functional import intensity as FI
from mriq_validate.metrics.functional.diversity import ms_ssim_pairs
from mriq_validate.metrics.functional.iqa import piqe
from mriq_validate.metrics.functional.memorisation import CopyInvariance, copy_distances, copy_embedding

SHAPE = (32, 40, 32)  # RAS X×Y×Z at 6 mm → D×H×W = 32×40×32


@lru_cache(maxsize=None)
def _volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case as C×D×H×W in [0, 1] (per contrast) and its 1×D×H×W labels."""
    case = synthesise_volume(np.random.default_rng(seed), voxel_mm=6.0, shape=SHAPE)
    img = display_volume(np.stack(list(case.images.values())))
    img = np.clip(img / img.max(axis=(1, 2, 3), keepdims=True), 0, 1).astype(np.float32)
    lab = display_volume(case.labels)[None].astype(np.int64)
    return img, lab


def _volumes(seeds: range) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [_volume(s) for s in seeds]
    return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))


def _ctx(tmp_path, train: torch.Tensor, test: torch.Tensor) -> SimpleNamespace:
    split = lambda x: SimpleNamespace(images=x, masks=None)  # noqa: E731
    return SimpleNamespace(device=torch.device("cpu"), cache=DiskCache(tmp_path), seed=0,
                           data=SimpleNamespace(train=split(train), test=split(test), spatial_dims=train.ndim - 2))


def _noisy(x: torch.Tensor, sigma: float = 0.08, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _brain_depths(volume: np.ndarray) -> np.ndarray:
    """The test's own reading of "axial slices with brain" (D×H×W grey volume)."""
    share = FI.brain_mask(volume).reshape(volume.shape[0], -1).mean(1)
    return np.flatnonzero(share > BRAIN_FRACTION)


def test_brain_slices_follow_the_2d_data_rule_and_ignore_a_faint_background():
    vols, _ = _volumes(range(3))
    _, owner, depth = FI.axial_brain_slices(vols[:, :1])
    faint = vols[:, :1] + 1e-3 * torch.rand(vols[:, :1].shape, generator=torch.Generator().manual_seed(1))
    _, owner_f, depth_f = FI.axial_brain_slices(faint)
    for i in range(len(vols)):
        nonzero = np.flatnonzero((vols[i].numpy() != 0).any(0).reshape(SHAPE[2], -1).mean(1) > BRAIN_FRACTION)  # preprocess rule
        ours = depth[owner == i]
        assert len(np.setxor1d(ours, nonzero)) <= 2  # the same slices, up to the edge slices
        assert np.array_equal(depth_f[owner_f == i], ours)  # a generator's faint background does not add slices
        assert 0 < len(ours) < SHAPE[2]


@pytest.mark.parametrize("how, agg", [("mean", np.mean), ("median", np.median), ("worst", np.max)])
def test_a_slice_measure_scores_a_volume_by_its_declared_aggregation_of_brain_slices(tmp_path, how, agg):
    vols, masks = _volumes(range(3))
    metric = create_metric("piqe", {"volume_aggregation": how})
    assert how in metric.config()["volume_aggregation"]
    sample = Sample(vols[:, 3:4], masks, "volumes", channel=3)
    ctx = _ctx(tmp_path, vols, vols)
    got = metric.prepare(ctx, sample)
    expected = [agg(piqe(v[0][_brain_depths(v[0].numpy())][:, None])) for v in vols[:, 3:4]]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # all contrasts at once: each volume scores the mean over its contrasts, each contrast by its own brain slices
    both = metric.prepare(ctx, Sample(vols[:, 2:4], masks, "volumes"))
    np.testing.assert_allclose(both, (metric.prepare(ctx, Sample(vols[:, 2:3], masks, "v", 2)) + got) / 2, rtol=1e-6)


def test_a_bad_volume_aggregation_is_refused_with_the_choices():
    with pytest.raises(MetricError, match=r"volume_aggregation must be one of \['mean', 'median', 'worst'\], got 'max'"):
        create_metric("niqe_mri", {"volume_aggregation": "max"})


def test_piqe_and_niqe_move_with_noise_on_volumes_as_on_slices(tmp_path):
    vols, _ = _volumes(range(14))
    train, test = vols[:10, :1], vols[10:, :1]
    train_slices = FI.axial_brain_slices(train)[0]
    test_slices = FI.axial_brain_slices(test)[0]
    for name, params in (("piqe", {}), ("niqe_mri", {"block_size": 16})):
        metric = create_metric(name, params)
        moves = {}
        for dims, (tr, te) in {"3D": (train, test), "2D": (train_slices, test_slices)}.items():
            ctx = _ctx(tmp_path / dims, tr, te)
            clean = metric.prepare(ctx, Sample(te, None, "clean", 0)).mean()
            noisy = metric.prepare(ctx, Sample(_noisy(te), None, "noisy", 0)).mean()
            moves[dims] = noisy - clean
        assert np.sign(moves["3D"]) == np.sign(moves["2D"]) != 0, (name, moves)  # (PIQE drops with noise on these small slices)


def test_brain_intensity_is_native_3d_and_scales_with_the_volume():
    vols, _ = _volumes(range(2))
    x = vols[:, 1:2].numpy().astype(np.float64)
    got = FI.brain_percentile(x, 95)
    for i in range(2):
        assert got[i] == pytest.approx(np.percentile(x[i, 0][FI.brain_mask(x[i, 0])], 95))
    np.testing.assert_allclose(FI.brain_percentile(x * 0.5, 95), got * 0.5, rtol=1e-12)


def test_ms_ssim_diversity_of_volumes_is_one_for_copies_and_lower_for_distinct_volumes():
    vols, _ = _volumes(range(4))
    same = vols[:1, :1].repeat(4, 1, 1, 1, 1)
    np.testing.assert_allclose(ms_ssim_pairs(same, 10), 1.0, atol=1e-6)
    distinct = ms_ssim_pairs(vols[:, :1], 10)
    assert distinct.shape == (10,) and distinct.max() < 0.99
    assert ms_ssim_pairs(_noisy(vols[:, :1]), 10).mean() < distinct.mean()  # noise makes a set look more diverse, as in 2D
    with pytest.raises(MetricError, match="32-pixel slice is smaller than the 33-pixel SSIM kernel"):
        ms_ssim_pairs(vols[:, :1], 10, kernel_size=33)


def test_copy_fraction_flags_copied_volumes_and_keeps_new_ones_near_alpha(tmp_path):
    vols, _ = _volumes(range(50))
    train, test, new = vols[:20], vols[20:40], vols[40:]
    ctx = _ctx(tmp_path, train, test)
    metric = create_metric("copy_fraction", {"alpha": 0.05})
    copies = torch.cat([train[:5], train[5:10].flip(-1), torch.roll(train[10:15], shifts=(1, 2, -2), dims=(2, 3, 4))])
    for c in (3,):
        assert metric.prepare(ctx, Sample(copies[:, c:c + 1], None, "copies", c)).tolist() == [1.0] * 15
        assert metric.prepare(ctx, Sample(new[:, c:c + 1], None, "new", c)).mean() <= 0.2  # expected 1/21 per volume
        assert metric.prepare(ctx, Sample(test[:, c:c + 1], None, "held-out", c)).mean() == 0.0


def test_copy_distance_of_a_flipped_volume_is_zero_and_the_embedding_is_3d():
    vols, _ = _volumes(range(3))
    inv = CopyInvariance(flips=True, max_shift=1)
    ref = copy_embedding(vols[:, :1], 8, inv)
    assert ref.shape == (3, 9 * 8**3)
    d, idx = copy_distances(copy_embedding(vols[:, :1].flip(-1), 8, inv), ref, inv, spatial_dims=3)
    np.testing.assert_allclose(d, 0, atol=1e-6)  # float32 pooling
    assert idx.tolist() == [0, 1, 2]
    with pytest.raises(MetricError, match=r"expected copy embeddings of 9·size³ values per volume"):
        copy_distances(ref[:, :-1], ref[:, :-1], inv, spatial_dims=3)


def test_too_few_held_out_volumes_for_alpha_say_how_many_and_which_alpha_fits(tmp_path):
    vols, _ = _volumes(range(40))
    ctx = _ctx(tmp_path, vols[:20], vols[20:40])
    with pytest.raises(MetricError, match=r"alpha=0.01 needs at least 99 held-out images .*got 20; with 20 held-out images "
                                          r"alpha must be at least 1/21 = 0.04762"):
        create_metric("copy_fraction", {}).prepare(ctx, Sample(vols[:5, :1], None, "gen", 0))
