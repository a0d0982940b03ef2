"""The downstream segmenter and its features with several contrasts: one input channel per contrast, one label map out,
cache keys that follow the contrasts, and feature extractors that say how they combine them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mriq_validate import segmenter
from mriq_validate.cache import DiskCache
from mriq_validate.errors import MetricError
from mriq_validate.metrics.features import make_extractor
from mriq_validate.segmenter import SegmenterConfig, get_segmenter, segmenter_key, train_segmenter

TINY = SegmenterConfig(channels=(4, 8), strides=(2,), num_res_units=0, epochs=2, batch_size=8)


def discs(n: int = 8, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three contrasts of n slices with a disc (label 1): bright in the first, dark in the second, absent in the third."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        cy, cx = torch.randint(8, size - 8, (2,), generator=g)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < 25).float()
        noise = 0.05 * torch.rand(3, size, size, generator=g)
        images.append(torch.stack([0.3 + 0.5 * disc, 0.7 - 0.5 * disc, torch.full((size, size), 0.4)]) + noise)
        masks.append(disc.long()[None])
    return torch.stack(images).clamp(0, 1), torch.stack(masks)


@pytest.mark.parametrize("c", [1, 3])
def test_the_segmenter_reads_every_contrast_and_predicts_one_label_map(c: int) -> None:
    x, y = discs()
    net, history = train_segmenter(x[:, :c], y, 2, TINY, torch.device("cpu"))
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == c and history["in_channels"] == c
    seg = segmenter.Segmenter(net, 2, TINY, "k", torch.device("cpu"), history, c, ("t1", "t2", "flair")[:c])
    assert segmenter.Segmenter(net, 2, TINY, "k", torch.device("cpu")).in_channels == c  # read from the network when not given
    pred = seg.predict(x[:, :c])
    assert pred.shape == (8, 1, 32, 32) and pred.dtype == torch.int64
    with pytest.raises(MetricError, match=rf"segmenter trained on {c} channel\(s\) \(.*\) got images of shape \(8, {4 - c if c == 3 else 3}, 32, 32\)"):
        seg.predict(x[:, : (1 if c == 3 else 3)])


def test_masks_must_be_one_label_map() -> None:
    x, y = discs()
    with pytest.raises(MetricError, match=r"needs images N×C×H×W \(one channel per contrast\) and masks N×1×H×W, got \(8, 3, 32, 32\) and \(8, 3, 32, 32\)"):
        train_segmenter(x, y.repeat(1, 3, 1, 1), 2, TINY, torch.device("cpu"))


def test_the_cache_key_follows_the_contrasts(tmp_path) -> None:
    x, y = discs()
    key = lambda images, names: segmenter_key(images, y, 2, TINY, "cpu", names)  # noqa: E731
    three = key(x, ("t1", "t2", "flair"))
    assert three != key(x, ("t1", "t2", "t1c"))  # same pixels, other contrasts: apart
    assert three != key(x[:, [2, 1, 0]], ("flair", "t2", "t1"))  # another order
    assert three != key(x[:, :2], ("t1", "t2"))  # fewer contrasts
    assert key(x[:, :1], ("t1",)) != key(x[:, 2:], ("flair",))  # one contrast: its pixels tell them apart
    assert key(x[:, :1], ("t1",)) == segmenter_key(x[:, :1], y, 2, TINY)  # one contrast: keys cached before stay valid
    seg = get_segmenter(x, y, 2, TINY, torch.device("cpu"), DiskCache(tmp_path), contrasts=("t1", "t2", "flair"))
    assert seg.key == three and seg.in_channels == 3 and seg.contrasts == ("t1", "t2", "flair")
    with pytest.raises(MetricError, match=r"contrasts \['t1', 't2'\] but images with 3 channel\(s\)"):
        get_segmenter(x, y, 2, TINY, torch.device("cpu"), DiskCache(tmp_path), contrasts=("t1", "t2"))


def test_feature_extractors_record_how_they_combine_contrasts(tmp_path) -> None:
    x, y = discs()
    seg = get_segmenter(x, y, 2, TINY, torch.device("cpu"), DiskCache(tmp_path), contrasts=("t1", "t2", "flair"))
    ctx = SimpleNamespace(segmenter=lambda cfg: seg, device=torch.device("cpu"))
    joint = make_extractor(ctx, {"segmenter": {"channels": [4, 8], "strides": [2], "num_res_units": 0, "epochs": 2, "batch_size": 8}})
    assert joint.config["contrasts"].startswith("joint") and joint.config["in_channels"] == 3
    assert joint.config["contrast_names"] == ["t1", "t2", "flair"]
    f = joint(x, y)
    assert f.shape == (8, 4 + 8 + 8) and np.all(np.isfinite(f))  # levels 4 and 8, and the bottom block's two hooked outputs
    assert not np.allclose(f, joint(x[:, [0, 1, 1]], y))  # the encoder sees the third contrast
    for kind, dims in (("radiomic", 22), ("pixels", 32 * 32)):
        ext = make_extractor(ctx, {"extractor": kind})
        one, three = ext(x[:, :1], y), ext(x, y)
        assert one.shape == (8, dims) and three.shape == (8, 3 * dims) and ext.config["contrasts"].startswith("each contrast alone")
        if kind == "pixels":
            np.testing.assert_allclose(np.linalg.norm(three, axis=1)[np.linalg.norm(one, axis=1) > 0], 1.0, atol=1e-9)
        else:
            np.testing.assert_allclose(three[:, :dims], one)
