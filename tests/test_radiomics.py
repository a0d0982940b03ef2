"""Radiomic features: shape, known-answer GLCM, invariances and the direction of blur effects."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from mriq_validate.errors import MetricError
from mriq_validate.metrics.functional.distribution import fid_from_features
from mriq_validate.metrics.functional.radiomics import RADIOMIC_FEATURE_NAMES, glcm, radiomic_features

IDX = {n: i for i, n in enumerate(RADIOMIC_FEATURE_NAMES)}


@pytest.fixture(scope="module")
def data(mni):
    """The T1 channel of the builtin MNI-tumour cohort (session fixture from conftest): these are measures of one grey image."""
    return mni.select(["t1"])


def _glcm_loop(q: np.ndarray, roi: np.ndarray, dy: int, dx: int, levels: int) -> np.ndarray:
    p = np.zeros((levels, levels))
    h, w = q.shape
    for y in range(h):
        for x in range(w):
            y2, x2 = y + dy, x + dx
            if 0 <= y2 < h and 0 <= x2 < w and roi[y, x] and roi[y2, x2]:
                p[q[y, x], q[y2, x2]] += 1
                p[q[y2, x2], q[y, x]] += 1
    return p / p.sum()


def test_shape_names_finite(data) -> None:
    f = radiomic_features(data.test.images[:20])
    assert f.shape == (20, len(RADIOMIC_FEATURE_NAMES)) == (20, 22)
    assert len(set(RADIOMIC_FEATURE_NAMES)) == 22 and np.all(np.isfinite(f))
    fm = radiomic_features(data.test.images[:20].numpy(), masks=(data.test.images[:20] > 0.1))
    assert fm.shape == f.shape and np.all(np.isfinite(fm))


@pytest.mark.parametrize("dy,dx", [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, 2), (-2, -2)])
def test_glcm_matches_loop(dy: int, dx: int) -> None:
    rng = np.random.default_rng(abs(dy) * 10 + dx + 5)
    q = rng.integers(0, 6, size=(2, 9, 11))
    roi = rng.random((2, 9, 11)) > 0.3
    p = glcm(q, roi, dy, dx, levels=6)
    for k in range(2):
        np.testing.assert_allclose(p[k], _glcm_loop(q[k], roi[k], dy, dx, 6), atol=1e-15)


def test_first_order_matches_numpy_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.beta(2, 5, size=(3, 1, 20, 24))
    roi = rng.random(x.shape) > 0.4
    f = radiomic_features(x, masks=roi)
    for k in range(3):
        v = x[k, 0][roi[k, 0]]
        hist = np.bincount(np.clip(np.floor(v * 32), 0, 31).astype(int), minlength=32) / v.size
        exp = {"mean": v.mean(), "std": v.std(), "skewness": scipy.stats.skew(v),
               "kurtosis": scipy.stats.kurtosis(v, fisher=False), "p10": np.percentile(v, 10), "p50": np.median(v),
               "p90": np.percentile(v, 90), "entropy": scipy.stats.entropy(hist[hist > 0], base=2), "energy": np.mean(v * v)}
        for name, val in exp.items():
            assert f[k, IDX[f"firstorder_{name}"]] == pytest.approx(val, rel=1e-9, abs=1e-12), name


def test_constant_image_identities() -> None:
    f = radiomic_features(np.full((2, 1, 32, 32), 0.4))[0]
    for d in (1, 2):
        assert f[IDX[f"glcm_contrast_d{d}"]] == 0 and f[IDX[f"glcm_dissimilarity_d{d}"]] == 0
        assert f[IDX[f"glcm_homogeneity_d{d}"]] == 1 and f[IDX[f"glcm_energy_d{d}"]] == 1
        assert f[IDX[f"glcm_correlation_d{d}"]] == 1
    for name in ("skewness", "kurtosis", "entropy"):
        assert f[IDX[f"firstorder_{name}"]] == 0
    assert f[IDX["firstorder_std"]] == pytest.approx(0.0, abs=1e-12)  # mean of 1024 × 0.4 is not exact in float
    assert f[IDX["gradient_mean"]] == 0 and f[IDX["gradient_p90"]] == 0


def test_rot90_and_flip_invariance(data) -> None:
    x = data.test.images[:6].numpy()
    f = radiomic_features(x)
    np.testing.assert_allclose(radiomic_features(np.rot90(x, 1, axes=(2, 3)).copy()), f, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(radiomic_features(x[..., ::-1].copy()), f, rtol=1e-10, atol=1e-12)


def test_mask_restricts_to_region() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((1, 1, 32, 32))
    roi = np.zeros_like(x, dtype=bool)
    roi[..., 8:24, 8:24] = True
    x2 = x.copy()
    x2[~roi] = rng.random(int((~roi).sum()))  # change only outside the region
    a, b = radiomic_features(x, roi), radiomic_features(x2, roi)
    no_grad = [i for n, i in IDX.items() if not n.startswith("gradient")]  # gradients see 1-px neighbours
    np.testing.assert_array_equal(a[:, no_grad], b[:, no_grad])


def test_blur_shifts_texture_as_expected(data) -> None:
    from mriq_validate.perturb import apply

    te = data.test.subset(np.arange(64))
    blurred = apply("gaussian_blur", te.images, te.masks, seed=0, sigma=1.5).images
    f, fb = radiomic_features(te.images), radiomic_features(blurred)
    diff = fb - f  # paired: every slice should move the same way
    for d in (1, 2):
        assert np.all(diff[:, IDX[f"glcm_contrast_d{d}"]] < 0)
        assert np.all(diff[:, IDX[f"glcm_dissimilarity_d{d}"]] < 0)
        assert np.all(diff[:, IDX[f"glcm_correlation_d{d}"]] > 0)
        # homogeneity rises on average; not on every slice (smooth ramps move same-level pairs to adjacent levels)
        assert diff[:, IDX[f"glcm_homogeneity_d{d}"]].mean() > 0
    assert np.all(diff[:, IDX["gradient_mean"]] < 0)
    # FRD-style distance on z-scored features: blurred set is farther from the reference than a clean set
    ref = radiomic_features(data.train.images[:128])
    mu, sd = ref.mean(0), ref.std(0) + 1e-12
    z = lambda a: (a - mu) / sd  # noqa: E731
    assert fid_from_features(z(ref), z(fb)) > fid_from_features(z(ref), z(f))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"images": torch.rand(2, 3, 16, 16)}, "images"),
        ({"images": torch.rand(2, 1, 16, 16), "masks": torch.ones(2, 1, 8, 8)}, "masks"),
        ({"images": torch.rand(2, 1, 16, 16), "masks": torch.zeros(2, 1, 16, 16)}, "fewer than 2 pixels"),
        ({"images": torch.full((1, 1, 16, 16), float("nan"))}, "NaN"),
    ],
)
def test_validation(kwargs, needle: str) -> None:
    with pytest.raises(MetricError, match=needle):
        radiomic_features(**kwargs)


def test_isolated_pixels_region_has_no_glcm_pair() -> None:
    roi = np.zeros((1, 1, 16, 16), dtype=bool)
    roi[0, 0, 2, 2] = roi[0, 0, 10, 10] = True
    with pytest.raises(MetricError, match="no adjacent pixel pair"):
        radiomic_features(np.random.default_rng(0).random((1, 1, 16, 16)), roi)
