"""Resampling statistics: bootstrap and widened subsample spreads estimate the sampling noise of a full set."""

from __future__ import annotations

import numpy as np
import pytest

from mriq_validate.stats import (bootstrap, bootstrap_indices, compare, correlate, correlation, jackknife_widen, noise_floor,
                                 resample_metric, subsample_indices, summarise)


def test_bootstrap_se_of_a_mean_matches_sigma_over_sqrt_n() -> None:
    x = np.random.default_rng(0).normal(0, 2.0, 400)
    est = bootstrap(lambda i: x[i].mean(), x.size, np.random.default_rng(1), n_boot=2000)
    assert abs(est.se / (2.0 / np.sqrt(400)) - 1) < 0.1
    assert est.ci_low < x.mean() < est.ci_high and est.value == x.mean()


def test_widened_subsample_spread_matches_the_full_sample_se() -> None:
    x = np.random.default_rng(2).normal(0, 1.0, 300)
    idx = subsample_indices(x.size, 2000, np.random.default_rng(3))
    reps = np.array([x[i].mean() for i in idx])
    raw, wide = reps.std(), jackknife_widen(reps, x.size, idx.shape[1]).std()
    assert abs(wide / (1 / np.sqrt(300)) - 1) < 0.1  # the full set's SE
    assert raw < 0.6 * wide  # unscaled 80 % subsamples understate it about 2x


def test_indices_and_summaries() -> None:
    rng = np.random.default_rng(0)
    assert bootstrap_indices(5, 3, rng).shape == (3, 5)
    sub = subsample_indices(10, 4, rng)
    assert sub.shape == (4, 8) and all(len(set(r)) == 8 for r in sub)
    est = summarise(1.0, np.array([0.5, np.nan, 1.5]), 3)
    assert est.n_boot == 2 and est.ci_low < 1.0 < est.ci_high
    assert summarise(2.0, np.array([]), 3).se == 0.0


class MeanMetric:
    """The smallest resampleable metric: the mean of per-item values."""

    def __init__(self, resample: str = "bootstrap") -> None:
        self.resample = resample

    def size(self, prepared: np.ndarray) -> int:
        return len(prepared)

    def value(self, prepared: np.ndarray, index: np.ndarray) -> float:
        return float(prepared[index].mean())


def test_paired_resamples_share_rows_so_a_constant_shift_has_no_spread() -> None:
    """Paired: the subject is the reference + 1 item by item, so every replicate of the difference is exactly 1;
    unpaired, the two sides' independent resamples give the difference the spread of two independent means."""
    ref = np.random.default_rng(0).normal(0, 1.0, 200)
    subject = ref + 1.0
    metric = MeanMetric()
    v, b = resample_metric(metric, subject, ref, 500, np.random.default_rng(1), paired=True)
    diff = compare(v, b, lambda a, c: a - c)
    assert diff.value == pytest.approx(1.0) and diff.ci_low == pytest.approx(1.0) and diff.ci_high == pytest.approx(1.0)
    assert diff.se < 1e-12
    v, b = resample_metric(metric, subject, ref, 500, np.random.default_rng(1), paired=False)
    diff = compare(v, b, lambda a, c: a - c)
    assert abs(diff.se / (np.sqrt(2) * ref.std() / np.sqrt(200)) - 1) < 0.15  # sqrt(2) x the SE of one mean
    assert diff.ci_low < 1.0 < diff.ci_high


def test_noise_floor_by_hand() -> None:
    """Bootstrap SE: SD of the resampled means; subsample SE: SD of 80 % subset means × sqrt(m / (n - m)), both on the
    rows the seeded stream draws; both near the analytic SE of a mean, sd / sqrt(n)."""
    x = np.random.default_rng(4).normal(3.0, 2.0, 150)
    n, k = x.size, 400
    point, se = noise_floor(MeanMetric(), x, k, np.random.default_rng(7))
    rows = np.random.default_rng(7).integers(0, n, size=(k, n))
    assert point == x.mean() and se == pytest.approx(x[rows].mean(axis=1).std(ddof=1), rel=1e-12)
    point, se_sub = noise_floor(MeanMetric("subsample"), x, k, np.random.default_rng(7))
    rng, m = np.random.default_rng(7), 120
    means = np.array([x[rng.permutation(n)[:m]].mean() for _ in range(k)])
    assert point == x.mean() and se_sub == pytest.approx(means.std(ddof=1) * np.sqrt(m / (n - m)), rel=1e-12)
    for s in (se, se_sub):  # an SD from 400 replicates has a relative SD of about 1/sqrt(2 * 399) = 3.5 %
        assert abs(s / (x.std() / np.sqrt(n)) - 1) < 0.11
    assert np.isnan(noise_floor(MeanMetric(), x, 1, np.random.default_rng(7))[1])


def test_correlate_matches_scipy_and_resamples_pairs() -> None:
    from scipy import stats

    x = np.random.default_rng(5).normal(size=30)
    y = 0.6 * x + np.random.default_rng(6).normal(size=30)
    c = correlate(x, y, np.random.default_rng(0), n_boot=300)
    assert c["spearman"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert c["pearson"] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    rows = np.random.default_rng(0).integers(0, 30, size=(300, 30))  # the same rows resample x and y together
    reps = [stats.spearmanr(x[r], y[r])[0] for r in rows]
    assert (c["spearman_ci_low"], c["spearman_ci_high"]) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])), abs=1e-9)
    line = correlate(np.arange(10.0), -2 * np.arange(10.0) + 1, np.random.default_rng(0), n_boot=200)
    assert line["spearman"] == pytest.approx(-1) and line["pearson"] == pytest.approx(-1) and line["spearman_ci_high"] == pytest.approx(-1)
    assert np.isnan(correlation("spearman", np.ones(5), np.arange(5.0)))  # a constant side has no correlation
