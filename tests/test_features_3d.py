"""Feature extractors and distribution measures on volumes (N×C×D×H×W): the 3D segmenter's encoder, 3D radiomics
(FRD), user TorchScript 3D networks, pixel thumbnails; FID, KID, MMD, PRDC and Vendi over them with one suite format.

Data and run context: the 6 mm synthetic volumes of :mod:`test_downstream_3d`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_downstream_3d import TEST_SEGMENTER, VolumeContext, volume_data

from mriq_validate.errors import MetricError
from mriq_validate.metrics import Sample, create_metric
from mriq_validate.metrics.features import RADIOMIC_3D, features, make_extractor
from mriq_validate.metrics.functional import radiomics as R
from mriq_validate.segmenter import SegmenterConfig

SEG_FEATURES = {"extractor": "segmenter", "segmenter": TEST_SEGMENTER}


@pytest.fixture(scope="module")
def ctx(cache_dir: Path) -> VolumeContext:
    return VolumeContext(volume_data(), cache_dir)


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=g)).clamp(0, 1)


def value(ctx: VolumeContext, name: str, params: dict, sample: Sample) -> float:
    """The measure on the whole sample (no resampling)."""
    metric = create_metric(name, params)
    prepared = ctx.prepare(metric, sample)
    return metric.compute(prepared, np.arange(metric.size(prepared)))


# ---------------------------------------------------------------- the segmenter's encoder


def test_segmenter_features_pool_the_3d_encoder_over_every_axis(ctx: VolumeContext) -> None:
    ext = make_extractor(ctx, SEG_FEATURES)
    seg = ctx.segmenter(SegmenterConfig.from_params(TEST_SEGMENTER).resolve(3))
    assert ext.identity == seg.key and ext.config["spatial_dims"] == 3 and "D×H×W" in ext.config["pooling"]
    test = ctx.data.test
    f = features(ctx, ext, test.images, test.masks)
    assert f.shape[0] == len(test) and f.shape[1] >= sum(TEST_SEGMENTER["channels"]) and np.all(np.isfinite(f))
    assert not np.allclose(f[0], f[1])  # the volumes are told apart
    with pytest.raises(MetricError, match=r"metric 'fid': features: segmenter.spatial_dims=2 but the data are 3D volumes"):
        create_metric("fid", {"features": {"segmenter": {**TEST_SEGMENTER, "spatial_dims": 2}}}).prepare(ctx, ctx.real("test"))


def test_fid_on_volumes_is_zero_for_a_set_with_itself_and_grows_with_noise(ctx: VolumeContext) -> None:
    train = ctx.data.train
    fid = {"features": SEG_FEATURES}
    same = value(ctx, "fid", fid, ctx.real("train"))
    scale = value(ctx, "fid", fid, ctx.real("test"))
    # measured: 2e-16 with itself against 0.071 for the real test split; Gaussian noise of SD 0.05, 0.15, 0.3 gives
    # 0.0012, 0.021, 0.058: zero up to round-off, then growing with the noise
    assert abs(same) < 1e-6 * max(scale, 1.0)
    noisy_fid = [value(ctx, "fid", fid, Sample(noisy(train.images, s), train.masks, f"noise {s}")) for s in (0.05, 0.15, 0.3)]
    assert 0 < noisy_fid[0] < noisy_fid[1] < noisy_fid[2]


def test_every_set_measure_runs_on_volume_features(ctx: VolumeContext) -> None:
    for name, extra in (("kid", {"subsets": 5, "subset_size": 4}), ("mmd", {}), ("precision", {"k": 2}), ("recall", {"k": 2}),
                        ("density", {"k": 2}), ("coverage", {"k": 2}), ("vendi", {})):
        got = value(ctx, name, {"features": SEG_FEATURES, **extra}, ctx.real("test"))
        assert np.isfinite(got), name
    assert value(ctx, "vendi", {"features": SEG_FEATURES}, ctx.real("test")) > 1  # 4 distinct volumes


# ---------------------------------------------------------------- radiomics (FRD) in 3D


def test_radiomic_glcm_uses_the_13_directions_of_the_26_neighbourhood() -> None:
    for d in (1, 2):
        three = R._offsets(d, 3)
        assert len(three) == len(set(three)) == 13
        assert not any(tuple(-v for v in o) in three for o in three)  # one of each opposite pair
        assert {o[1:] for o in three if o[0] == 0} == set(R._offsets(d))  # the in-plane ones are the 2D ones
        assert all(max(map(abs, o)) == d for o in three)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**16), st.integers(3, 7), st.integers(4, 9))
def test_3d_radiomics_do_not_depend_on_which_in_plane_axis_is_which(seed: int, depth: int, side: int) -> None:
    x = torch.rand(2, 1, depth, side, side, generator=torch.Generator().manual_seed(seed))
    np.testing.assert_allclose(R.radiomic_features(x.transpose(-1, -2)), R.radiomic_features(x), rtol=1e-9, atol=1e-12)


def test_a_volume_of_one_repeated_slice_has_that_slices_intensity_statistics() -> None:
    s = torch.rand(3, 1, 20, 24, generator=torch.Generator().manual_seed(1))
    vol = s[:, :, None].repeat(1, 1, 5, 1, 1)
    f2, f3 = R.radiomic_features(s), R.radiomic_features(vol)
    cols = [R.RADIOMIC_FEATURE_NAMES.index(f"firstorder_{n}") for n in ("mean", "std", "skewness", "kurtosis", "entropy", "energy")]
    np.testing.assert_allclose(f3[:, cols], f2[:, cols], rtol=1e-9)
    grad = R.RADIOMIC_FEATURE_NAMES.index("gradient_mean")
    np.testing.assert_allclose(f3[:, grad], f2[:, grad], rtol=1e-9)  # no change along D: the 3D gradient is the in-plane one
    with pytest.raises(MetricError, match=r"n×1×D×H×W volumes"):
        R.radiomic_features(torch.rand(2, 2, 4, 8, 8))


def test_frd_on_volumes_is_3d_zero_with_itself_and_grows_with_noise(ctx: VolumeContext) -> None:
    assert make_extractor(ctx, {"extractor": "radiomic"}).config["volumes"] == RADIOMIC_3D and "not per slice" in RADIOMIC_3D
    assert create_metric("frd").config()["volumes"] == RADIOMIC_3D  # the report says how volumes were treated
    train = ctx.data.train  # measured: 6e-14 with itself; 44 for the real test split; noise 0.02 and 0.1: 4e12 and 1e14
    # (features constant over the reference, e.g. the 10th percentile of a volume's voxels, all background, are z-scored
    # by an SD of 0 + 1e-8: any change of them dominates, as on slices)
    assert abs(value(ctx, "frd", {}, ctx.real("train"))) < 1e-6
    frd = [value(ctx, "frd", {}, Sample(noisy(train.images, s), train.masks, f"noise {s}")) for s in (0.02, 0.1)]
    assert 0 < frd[0] < frd[1]


# ---------------------------------------------------------------- user networks and pixels


class PoolNet(torch.nn.Module):
    """A tiny feature network for 2D or 3D inputs: one convolution, ReLU, global average pooling."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv, pool = (torch.nn.Conv3d, torch.nn.AdaptiveAvgPool3d) if dims == 3 else (torch.nn.Conv2d, torch.nn.AdaptiveAvgPool2d)
        self.conv, self.pool = conv(2, 3, 3, padding=1), pool(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def test_a_user_torchscript_3d_network_extracts_volume_features(ctx: VolumeContext, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.jit.script(PoolNet(3).eval())
    path = tmp_path / "net3d.pt"
    net.save(str(path))
    ext = make_extractor(ctx, {"extractor": "torchscript", "path": str(path), "channels": 2, "size": 16})
    test = ctx.data.test
    got = features(ctx, ext, test.images, None)
    with torch.no_grad():  # what the extractor promises: each contrast resized on every axis, repeated to 2 channels
        want = torch.cat([net(torch.nn.functional.interpolate(test.images[:, c:c + 1], size=(16, 16, 16), mode="trilinear",
                                                               align_corners=False).repeat(1, 2, 1, 1, 1)) for c in range(4)], 1)
    np.testing.assert_allclose(got, want.double().numpy(), rtol=1e-5, atol=1e-7)
    assert got.shape == (len(test), 3 * 4)
    assert value(ctx, "fid", {"features": {"extractor": "torchscript", "path": str(path), "channels": 2}}, ctx.real("train")) < 1e-6


def test_a_2d_network_on_volumes_is_an_error_naming_the_shapes(ctx: VolumeContext, tmp_path: Path) -> None:
    path = tmp_path / "net2d.pt"
    torch.jit.script(PoolNet(2).eval()).save(str(path))
    ext = make_extractor(ctx, {"extractor": "torchscript", "path": str(path), "channels": 2})
    with pytest.raises(MetricError, match=rf"feature extractor {path} failed on input of shape \(2, 2, 32, 32, 32\); the data need a "
                                          r"network taking N×C×D×H×W \(volumes: a 3D network\) \(RuntimeError: "):
        ext(ctx.data.test.images, None)


def test_pixel_thumbnails_of_volumes(ctx: VolumeContext) -> None:
    ext = make_extractor(ctx, {"extractor": "pixels", "size": 8})
    f = ext(ctx.data.test.images, None)
    assert f.shape == (len(ctx.data.test), 4 * 8 ** 3)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-9)  # each contrast unit norm, divided by sqrt(C)
