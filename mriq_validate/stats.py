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


def estimate_from(statistic: Callable[[np.ndarray], float], n: int, indices: np.ndarray, level: float = 0.95) -> Estimate:
    """Point value on ``range(n)`` and percentile CI over the given resample ``indices`` (n_boot × n).

    Statistics evaluated on the same ``indices`` are paired.
    """
    full = float(statistic(np.arange(n)))
    if indices.size == 0:
        return Estimate(full, full, full, 0.0, n, 0, level)
    reps = np.array([statistic(idx) for idx in indices], dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Estimate(full, float("nan"), float("nan"), float("nan"), n, 0, level)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return Estimate(full, float(lo), float(hi), float(reps.std(ddof=1)) if reps.size > 1 else 0.0, n, int(reps.size), level)


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, rng: np.random.Generator, n_boot: int = 1000,
              level: float = 0.95) -> Estimate:
    """Percentile bootstrap of ``statistic(index)`` over ``n_boot`` resamples of ``range(n)`` drawn from ``rng``."""
    indices = bootstrap_indices(n, n_boot, rng) if n_boot and n >= 2 else np.empty((0, n), dtype=np.int64)
    return estimate_from(statistic, n, indices, level)


def mean_ci(values: np.ndarray, rng: np.random.Generator, n_boot: int = 1000, level: float = 0.95) -> Estimate:
    """Mean of ``values`` with a percentile-bootstrap CI (vectorised)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or n_boot == 0:
        m = float(v.mean()) if v.size else float("nan")
        return Estimate(m, m, m, 0.0, int(v.size), 0, level)
    reps = v[bootstrap_indices(v.size, n_boot, rng)].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return Estimate(float(v.mean()), float(lo), float(hi), float(reps.std(ddof=1)), int(v.size), n_boot, level)
