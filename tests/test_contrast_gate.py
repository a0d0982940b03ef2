"""Measures of one grey image are decided on each contrast: a model that gets one contrast wrong fails the criterion,
and the outcome says which contrast (the mean over contrasts would have hidden it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mriq_validate.builtin_models import BUILTIN_MODELS
from mriq_validate.cache import DiskCache
from mriq_validate.criteria import evaluate
from mriq_validate.data import ReferenceData, load_data
from mriq_validate.metrics import Sample
from mriq_validate.session import RunContext, RunSettings
from mriq_validate.suite import load_suite

SUITE = Path(__file__).resolve().parents[1] / "suites" / "brain_tumour.yaml"


class ScaledReal:
    """The real test images for the requested masks (the stand-in ``builtin:real``), with channel ``channel`` multiplied
    by ``factor``."""

    def __init__(self, data: ReferenceData, channel: int | None, factor: float) -> None:
        self.real, self.channel, self.factor = BUILTIN_MODELS["real"].factory(data), channel, factor

    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        images = self.real.generate(masks, seed=seed).clone()
        if self.channel is not None:
            images[:, self.channel] *= self.factor
        return images


def OneContrastScaled(cache_dir: Path, channel: int | None, factor: float) -> RunContext:  # noqa: N802
    """A run whose model is :class:`ScaledReal` on the embedded data."""
    data = load_data("builtin:mni-tumour", DiskCache(cache_dir))
    return RunContext(RunSettings(model="constructed", data="builtin:mni-tumour", device="cpu", seed=0, cache_dir=str(cache_dir)),
                      "builtin:mni-tumour", data=data, model=ScaledReal(data, channel, factor))


@pytest.fixture(scope="module")
def intensity_criterion():  # type: ignore[no-untyped-def]
    (crit,) = [c for c in load_suite(SUITE).criteria if c.id == "INTENSITY-SCALE"]
    return crit


def test_every_contrast_is_decided_and_reported(cache_dir: Path, intensity_criterion) -> None:  # type: ignore[no-untyped-def]
    out = evaluate(intensity_criterion, OneContrastScaled(cache_dir, None, 1.0))
    assert out.verdict == "PASS"
    assert out.per_contrast is not None and list(out.per_contrast) == ["t1", "t1c", "t2", "flair"]
    assert all(p["verdict"] == "PASS" and p["checked"] == pytest.approx(1.0) for p in out.per_contrast.values())


@pytest.mark.parametrize("channel, name", [(1, "t1c"), (3, "flair")])
def test_one_contrast_at_half_scale_fails_by_name(cache_dir: Path, intensity_criterion, channel: int, name: str) -> None:  # type: ignore[no-untyped-def]
    out = evaluate(intensity_criterion, OneContrastScaled(cache_dir, channel, 0.5))
    assert out.verdict == "FAIL"
    assert out.per_contrast is not None
    assert {k for k, p in out.per_contrast.items() if p["verdict"] == "FAIL"} == {name}
    assert out.per_contrast[name]["checked"] == pytest.approx(0.5, abs=0.01)  # the ratio reads the scale factor
    assert f"[{name}]" in out.message and f"{name} 0.5" in out.message
    # the mean over the four contrasts (≈ 0.875) would have passed the band [0.7071, 1.4142]
    mean = sum(p["checked"] for p in out.per_contrast.values()) / 4
    assert 0.7071 < mean < 1.4142


def test_every_measure_of_one_grey_image_takes_a_multi_contrast_sample_as_the_mean_over_its_contrasts() -> None:
    """The study and the downstream table give a measure of one grey image (``channels: each``) all four contrasts at
    once; each must score the mean over the contrasts (pair-based MS-SSIM included, whose items are pairs), never
    refuse the sample or read one channel."""
    from mriq_validate.metrics import METRICS, create_metric

    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 4, 32, 32, generator=g)
    sample = Sample(images, None, "four contrasts")
    each = ("ms_ssim_diversity", "brain_intensity")  # a pair-based and a per-image one; neither needs a run
    assert all(METRICS[name].channels == "each" for name in each)
    for name in each:
        m = create_metric(name, {"n_pairs": 10, "kernel_size": 3} if name == "ms_ssim_diversity" else {})
        got = m.prepare(None, sample)
        want = np.mean([m.prepare(None, sample.contrast(c, f"channel {c}")) for c in range(4)], axis=0)
        np.testing.assert_allclose(got, want, err_msg=name)
