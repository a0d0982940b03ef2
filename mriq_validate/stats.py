"""Statistics: seeded bootstrap confidence intervals (paired where the samples are paired)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A value with its percentile-bootstrap confidence interval and standard error."""

    value: float
    ci_low: float
    ci_high: float
    se: float
    n: int
    n_boot: int
    level: float = 0.95

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready fields."""
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "se": self.se, "n": self.n,
                "n_boot": self.n_boot, "ci_level": self.level}


def bootstrap_indices(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` resamples (with replacement) of ``range(n)``, shape n_boot × n."""
    if n < 2:
        raise ValueError(f"bootstrap needs at least 2 items, got {n}")
    return rng.integers(0, n, size=(n_boot, n))


def summarise(point: float, reps: np.ndarray, n: int, level: float = 0.95) -> Estimate:
    """An :class:`Estimate` from a point value and its resampling replicates (non-finite replicates dropped)."""
    reps = np.asarray(reps, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Estimate(float(point), float(point), float(point), 0.0, n, 0, level)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return Estimate(float(point), float(lo), float(hi), float(reps.std(ddof=1)) if reps.size > 1 else 0.0, n, int(reps.size), level)


def jackknife_widen(reps: np.ndarray, n: int, m: int) -> np.ndarray:
    """Replicates of a statistic on m-of-n subsamples (without replacement), spread about their mean by
    sqrt(m / (n - m)): the delete-d jackknife correction, so their spread estimates the full sample's sampling noise
    (unscaled, 80 % subsamples understate it about 2×)."""
    reps = np.asarray(reps, dtype=np.float64)
    if reps.size == 0 or m >= n:
        return reps
    centre = reps[np.isfinite(reps)].mean() if np.isfinite(reps).any() else 0.0
    return centre + (reps - centre) * np.sqrt(m / (n - m))


def subsample_indices(n: int, n_sub: int, rng: np.random.Generator, fraction: float = 0.8) -> np.ndarray:
    """``n_sub`` subsets of ``round(fraction·n)`` items of ``range(n)`` drawn without replacement (n_sub × m)."""
    m = max(2, int(round(fraction * n)))
    if n < 3:
        raise ValueError(f"subsampling needs at least 3 items, got {n}")
    return np.stack([rng.permutation(n)[:m] for _ in range(n_sub)]) if n_sub else np.empty((0, m), np.int64)


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, rng: np.random.Generator, n_boot: int = 1000,
              level: float = 0.95) -> Estimate:
    """Percentile bootstrap of ``statistic(index)`` over ``n_boot`` resamples of ``range(n)`` drawn from ``rng``."""
    indices = bootstrap_indices(n, n_boot, rng) if n_boot and n >= 2 else np.empty((0, n), dtype=np.int64)
    reps = np.array([statistic(idx) for idx in indices], dtype=np.float64)
    return summarise(float(statistic(np.arange(n))), reps, n, level)
