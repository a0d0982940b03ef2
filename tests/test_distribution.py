"""Known-answer tests for the set-level distribution metrics (FID, KID, MMD², PRDC, Vendi)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from mriq_validate.errors import MetricError
from mriq_validate.metrics.functional.distribution import (
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    kid,
    median_bandwidth,
    mmd2,
    prdc,
    vendi_score,
)


def _feats(seed: int, n: int = 200, d: int = 16, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features
    return rng.normal(size=(n, d)) @ mix * scale + shift


def _fid_scipy(f1: np.ndarray, f2: np.ndarray) -> float:
    """Direct textbook computation: np.cov + scipy.linalg.sqrtm (pytorch-fid style)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean).real)


def _kid_direct(f1: np.ndarray, f2: np.ndarray, subsets: int, m: int, seed: int) -> tuple[float, float]:
    """Double-loop unbiased MMD² with (x·y/d + 1)³, drawing subsets exactly as kid() does."""
    rng = np.random.default_rng(seed)
    d = f1.shape[1]
    k = lambda u, v: (float(np.dot(u, v)) / d + 1.0) ** 3  # noqa: E731
    vals = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
        vals.append(sxx + syy - 2 * sxy)
    return float(np.mean(vals)), float(np.std(vals))


# ----------------------------------------------------------------------------------------------- FID
@pytest.mark.parametrize("d", [4, 16, 64])
def test_fid_matches_scipy_sqrtm(d: int) -> None:
    f1, f2 = _feats(1, 300, d), _feats(2, 250, d, shift=0.3, scale=1.2)
    ours, ref = fid_from_features(f1, f2), _fid_scipy(f1, f2)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_matches_stats_path() -> None:
    f1, f2 = _feats(3), _feats(4, shift=1.0)
    assert frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2)) == fid_from_features(f1, f2)


def test_fid_identical_sets_is_zero() -> None:
    f = _feats(5, 300, 32)
    scale = float(np.trace(np.cov(f, rowvar=False)))
    assert abs(fid_from_features(f, f.copy())) < 1e-6 * scale


def test_fid_singular_covariance_is_finite_and_real() -> None:
    # n < d: rank-deficient covariances; the eigen-based trace term must stay real and finite.
    f1, f2 = _feats(6, 20, 64), _feats(7, 20, 64)
    v = fid_from_features(f1, f2)
    assert np.isfinite(v) and v > 0
    assert v == pytest.approx(_fid_scipy(f1, f2), rel=1e-4)


@pytest.mark.parametrize("n,d", [(20, 64), (40, 300)])
def test_fid_feature_path_equals_covariance_path(n: int, d: int) -> None:
    # d > n uses the nuclear-norm identity tr((C1 C2)^½) = ||A Bᵀ||_* / sqrt((n1−1)(n2−1)); both must agree
    f1, f2 = _feats(13, n, d), _feats(14, n + 5, d, shift=0.2)
    via_cov = frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))
    assert fid_from_features(f1, f2) == pytest.approx(via_cov, rel=1e-8)
    f = _feats(15, n, d)
    assert abs(fid_from_features(f, f.copy())) < 1e-6 * float(np.trace(np.cov(f, rowvar=False)))


def test_fid_separated_gaussians_is_large() -> None:
    f1, f2 = _feats(8), _feats(9, shift=10.0)
    same = fid_from_features(f1, _feats(10))
    far = fid_from_features(f1, f2)
    # exact identity part: the mean term alone is d * 10²
    assert far > 100 * same and far > 0.9 * f1.shape[1] * 100


def test_fid_is_translation_invariant() -> None:
    f1, f2 = _feats(11), _feats(12, shift=0.5)
    assert fid_from_features(f1 + 7.0, f2 + 7.0) == pytest.approx(fid_from_features(f1, f2), rel=1e-9)


# ----------------------------------------------------------------------------------------------- KID
def test_kid_matches_double_loop() -> None:
    f1, f2 = _feats(20, 40, 5), _feats(21, 35, 5, shift=0.4)
    res = kid(f1, f2, subsets=4, subset_size=12, rng=123)
    ref_mean, ref_std = _kid_direct(f1, f2, 4, 12, 123)
    assert res.mean == pytest.approx(ref_mean, rel=1e-6)
    assert res.std == pytest.approx(ref_std, rel=1e-6)
    mean, std = res  # unpacks as a (mean, std) pair
    assert (mean, std) == (res.mean, res.std)


def test_kid_full_set_equals_mmd2_poly() -> None:
    # one subset holding every row of two equal-size sets is the plain unbiased MMD² with the same kernel
    f1, f2 = _feats(22, 60, 8), _feats(23, 60, 8, shift=0.2)
    assert kid(f1, f2, subsets=1, subset_size=60).mean == pytest.approx(mmd2(f1, f2, kernel="poly"), rel=1e-9)


def test_kid_caps_subset_size_and_reports_it() -> None:
    f1, f2 = _feats(24, 30, 4), _feats(25, 50, 4)
    res = kid(f1, f2, subsets=3, subset_size=100)
    assert res.capped and res.subset_size == 30 and res.requested_subset_size == 100
    assert not kid(f1, f2, subsets=3, subset_size=10).capped


def test_kid_identical_distribution_is_zero_within_std() -> None:
    f = _feats(26, 400, 16)
    res = kid(f, f.copy(), subsets=50, subset_size=100, rng=0)
    assert abs(res.mean) <= 3 * res.std / np.sqrt(res.subsets) + 3 * res.std
    far = kid(f, _feats(27, 400, 16, shift=3.0), subsets=20, subset_size=100)
    assert far.mean > 10 * (abs(res.mean) + res.std)


def test_kid_seeded_reproducible() -> None:
    f1, f2 = _feats(28, 100, 8), _feats(29, 100, 8)
    assert kid(f1, f2, subsets=5, subset_size=20, rng=7).as_dict() == kid(f1, f2, subsets=5, subset_size=20, rng=7).as_dict()


def test_kid_whole_gram_and_per_subset_products_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # sets up to GRAM_MAX_ROWS index their Gram matrices; larger ones multiply per subset: the same estimate up to rounding
    import mriq_validate.metrics.functional.distribution as dist

    f1, f2 = _feats(30, 90, 32), _feats(31, 70, 32, shift=0.3)
    whole = kid(f1, f2, subsets=6, subset_size=25, rng=5)
    monkeypatch.setattr(dist, "GRAM_MAX_ROWS", 0)
    per_subset = kid(f1, f2, subsets=6, subset_size=25, rng=5)
    assert whole.mean == pytest.approx(per_subset.mean, rel=1e-12) and whole.std == pytest.approx(per_subset.std, rel=1e-12)
    assert whole.mean == pytest.approx(_kid_direct(f1, f2, 6, 25, 5)[0], rel=1e-12)


# ----------------------------------------------------------------------------------------------- MMD
def test_mmd2_rbf_matches_direct() -> None:
    f1, f2 = _feats(30, 25, 3), _feats(31, 30, 3, shift=0.5)
    sigma = median_bandwidth(f1, f2)
    z = np.concatenate([f1, f2])
    pd = [np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]
    assert sigma == pytest.approx(float(np.median(pd)), rel=1e-9)
    k = lambda u, v: np.exp(-np.sum((u - v) ** 2) / (2 * sigma**2))  # noqa: E731
    n, m = len(f1), len(f2)
    sxx = sum(k(f1[i], f1[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(f2[i], f2[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(f1[i], f2[j]) for i in range(n) for j in range(m)) / (n * m)
    assert mmd2(f1, f2) == pytest.approx(sxx + syy - 2 * sxy, rel=1e-9)


def test_mmd2_same_distribution_near_zero_and_far_positive() -> None:
    f1, f2 = _feats(32, 300, 8), _feats(33, 300, 8)
    near = mmd2(f1, f2)
    far = mmd2(f1, _feats(34, 300, 8, shift=2.0))
    assert far > 20 * abs(near)


# ----------------------------------------------------------------------------------------------- PRDC
def test_prdc_identical_sets() -> None:
    f = _feats(40, 150, 8)
    r = prdc(f, f.copy(), k=5)
    assert r["precision"] == 1.0 and r["recall"] == 1.0 and r["coverage"] == 1.0


def test_prdc_separated_gaussians() -> None:
    r = prdc(_feats(41, 150, 8), _feats(42, 150, 8, shift=50.0), k=5)
    assert r == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_matches_reference_formulas() -> None:
    x, y = _feats(43, 30, 3), _feats(44, 25, 3, shift=0.3)
    k = 3
    dxx = np.linalg.norm(x[:, None] - x[None], axis=2)
    dyy = np.linalg.norm(y[:, None] - y[None], axis=2)
    dxy = np.linalg.norm(x[:, None] - y[None], axis=2)
    rx = np.sort(dxx, axis=1)[:, k]
    ry = np.sort(dyy, axis=1)[:, k]
    exp = {
        "precision": np.mean([any(dxy[i, j] < rx[i] for i in range(len(x))) for j in range(len(y))]),
        "recall": np.mean([any(dxy[i, j] < ry[j] for j in range(len(y))) for i in range(len(x))]),
        "density": np.mean([sum(dxy[i, j] < rx[i] for i in range(len(x))) for j in range(len(y))]) / k,
        "coverage": np.mean([dxy[i].min() < rx[i] for i in range(len(x))]),
    }
    got = prdc(x, y, k=k)
    for key, v in exp.items():
        assert got[key] == pytest.approx(v, abs=1e-12), key


def test_prdc_mode_collapse_lowers_recall_not_precision() -> None:
    real = _feats(45, 200, 4)
    collapsed = real[:10].repeat(20, axis=0) + np.random.default_rng(0).normal(scale=1e-3, size=(200, 4))
    r = prdc(real, collapsed, k=5)
    assert r["precision"] > 0.9 and r["recall"] < 0.5 and r["coverage"] < 0.5


# ----------------------------------------------------------------------------------------------- Vendi
def test_vendi_identical_is_one() -> None:
    v = np.tile(np.random.default_rng(0).normal(size=(1, 7)), (20, 1))
    assert vendi_score(v) == pytest.approx(1.0, abs=1e-9)
    assert vendi_score(v, kernel="rbf") == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("n,d", [(5, 5), (8, 30), (30, 30)])
def test_vendi_orthogonal_is_n(n: int, d: int) -> None:
    q, _ = np.linalg.qr(np.random.default_rng(n).normal(size=(d, n)))
    v = q.T * np.random.default_rng(1).uniform(0.5, 3.0, size=(n, 1))  # n orthogonal rows of varied norm
    assert vendi_score(v) == pytest.approx(float(n), rel=1e-9)


def test_vendi_between_bounds_and_orders_diversity() -> None:
    diverse, narrow = _feats(50, 100, 16), _feats(51, 100, 16, shift=5.0, scale=0.5)
    vd, vn = vendi_score(diverse), vendi_score(narrow)
    assert 1.0 <= vn < vd <= 100.0


# ----------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: fid_from_features(np.zeros((5, 3)), np.zeros((5, 4))), "f1 and f2: feature dimensions differ (3 vs 4)"),
        (lambda: fid_from_features(np.zeros((1, 3)), np.zeros((5, 3))), "f1: expected at least 2 rows and 1 column, got shape (1, 3)"),
        (lambda: fid_from_features(np.zeros((5, 3)), np.zeros((1, 3))), "f2: expected at least 2 rows and 1 column, got shape (1, 3)"),
        (lambda: fid_from_features(np.full((5, 3), np.nan), np.zeros((5, 3))), "f1: contains NaN or inf in row(s) [0, 1, 2, 3, 4]"),
        (lambda: frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3)),
         "mu1, mu2: expected two vectors of equal length, got shapes (3,) and (2,)"),
        (lambda: kid(np.zeros((5, 3)), np.zeros((5, 3)), subsets=0), "subsets: expected an integer ≥ 1, got 0"),
        (lambda: kid(np.zeros((5, 3)), np.zeros((5, 3)), subset_size=1), "subset_size: expected an integer ≥ 2, got 1"),
        (lambda: mmd2(np.ones((5, 3)), np.ones((5, 3)), kernel="laplace"), "kernel: expected 'rbf' or 'poly', got 'laplace'"),
        (lambda: mmd2(np.ones((5, 3)), np.ones((5, 3))),
         "f1, f2: all points are identical, the median-heuristic bandwidth is undefined; pass bandwidth"),
        (lambda: mmd2(np.zeros((5, 3)), np.ones((5, 3)), bandwidth=0.0),
         "bandwidth: expected a positive number or None (median heuristic), got 0.0"),
        (lambda: prdc(np.zeros((5, 3)), np.zeros((5, 3)), k=5), "k: expected an integer in [1, 4] (fewer than each set's size), got 5"),
        (lambda: vendi_score(np.zeros((5, 3))), "f: cosine kernel needs non-zero vectors, row(s) [0, 1, 2, 3, 4] are zero"),
        (lambda: vendi_score(np.ones((5, 3)), kernel="poly"), "kernel: expected 'cosine' or 'rbf', got 'poly'"),
        (lambda: gaussian_stats(np.zeros(5)), "f: expected a 2-D n×d feature array, got shape (5,)"),
    ],
)
def test_validation_messages(call, message: str) -> None:
    """The whole one-line message: the argument that is wrong, what was expected and what came (a substring such as
    "f" or "k" would match almost any message)."""
    with pytest.raises(MetricError) as exc:
        call()
    assert str(exc.value) == message
