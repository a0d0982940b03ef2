"""Resampling statistics: bootstrap and widened subsample spreads estimate the sampling noise of a full set."""

from __future__ import annotations

import numpy as np

from mriq_validate.stats import bootstrap, bootstrap_indices, jackknife_widen, subsample_indices, summarise


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
