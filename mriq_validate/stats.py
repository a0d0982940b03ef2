"""Statistics: seeded resampling, confidence intervals and correlations, in one place.

Every resampling of the package goes through here: criteria (:func:`resample_metric`, :func:`compare`), the study and
``calibrate`` (:func:`noise_floor`), the downstream table (:func:`estimate_from`). Statistics evaluated on the same
resample rows are paired: a difference of two statistics is resampled row by row, which scipy's ``bootstrap`` does
not do across separately computed values. Set-level metrics (``resample == "subsample"``) are resampled as 80 %
subsets without replacement, their spread widened by the delete-d jackknife factor (Shao & Wu 1989).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

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


class Resampleable(Protocol):
    """What resampling needs of a metric (:class:`mriq_validate.metrics.Metric` has it)."""

    resample: str

    def config(self) -> dict[str, Any]: ...

    def size(self, prepared: Any) -> int: ...

    def value(self, prepared: Any, index: np.ndarray) -> float: ...


def bootstrap_indices(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` resamples (with replacement) of ``range(n)``, shape n_boot × n."""
    if n < 2:
        raise ValueError(f"bootstrap needs at least 2 items, got {n}")
    return rng.integers(0, n, size=(n_boot, n))


def subsample_indices(n: int, n_sub: int, rng: np.random.Generator, fraction: float = 0.8) -> np.ndarray:
    """``n_sub`` subsets of ``round(fraction·n)`` items of ``range(n)`` drawn without replacement (n_sub × m)."""
    m = max(2, int(round(fraction * n)))
    if n < 3:
        raise ValueError(f"subsampling needs at least 3 items, got {n}")
    return np.stack([rng.permutation(n)[:m] for _ in range(n_sub)]) if n_sub else np.empty((0, m), np.int64)


def resample_rows(n: int, n_boot: int, rng: np.random.Generator, subsample: bool = False) -> np.ndarray:
    """Resample rows of ``range(n)``: :func:`subsample_indices` or :func:`bootstrap_indices` (none when ``n_boot`` is 0)."""
    if subsample:
        return subsample_indices(n, n_boot, rng)
    return bootstrap_indices(n, n_boot, rng) if n_boot else np.empty((0, n), np.int64)


def widen_factor(n: int, m: int) -> float:
    """sqrt(m / (n - m)): the delete-d jackknife factor that turns the spread of m-of-n subsample replicates into the
    full sample's sampling noise (1 when m ≥ n)."""
    return math.sqrt(m / (n - m)) if m < n else 1.0


def jackknife_widen(reps: np.ndarray, n: int, m: int) -> np.ndarray:
    """Replicates of a statistic on m-of-n subsamples (without replacement), spread about their mean by
    :func:`widen_factor`, so their spread estimates the full sample's sampling noise (unscaled, 80 % subsamples
    understate it about 2×)."""
    reps = np.asarray(reps, dtype=np.float64)
    if reps.size == 0 or m >= n:
        return reps
    centre = reps[np.isfinite(reps)].mean() if np.isfinite(reps).any() else 0.0
    return centre + (reps - centre) * widen_factor(n, m)


def summarise(point: float, reps: np.ndarray, n: int, level: float = 0.95) -> Estimate:
    """An :class:`Estimate` from a point value and its resampling replicates (non-finite replicates dropped)."""
    reps = np.asarray(reps, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Estimate(float(point), float(point), float(point), 0.0, n, 0, level)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return Estimate(float(point), float(lo), float(hi), float(reps.std(ddof=1)) if reps.size > 1 else 0.0, n, int(reps.size), level)


def replicates(statistic: Callable[[np.ndarray], float], rows: np.ndarray) -> np.ndarray:
    """``statistic(row)`` for every resample row (float64)."""
    return np.array([statistic(row) for row in rows], dtype=np.float64)


def estimate_from(statistic: Callable[[np.ndarray], float], n: int, rows: np.ndarray, level: float = 0.95) -> Estimate:
    """``statistic`` on all of ``range(n)`` with its percentile CI and SE over the resample ``rows``; statistics
    evaluated on the same ``rows`` are paired."""
    return summarise(float(statistic(np.arange(n))), replicates(statistic, rows), n, level)


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, rng: np.random.Generator, n_boot: int = 1000,
              level: float = 0.95) -> Estimate:
    """Percentile bootstrap of ``statistic(index)`` over ``n_boot`` resamples of ``range(n)`` drawn from ``rng``."""
    rows = bootstrap_indices(n, n_boot, rng) if n_boot and n >= 2 else np.empty((0, n), dtype=np.int64)
    return estimate_from(statistic, n, rows, level)


@dataclass(frozen=True)
class Replicates:
    """A statistic's point value on ``n`` items and its replicates on resample rows of ``m`` items each."""

    point: float
    reps: np.ndarray
    n: int
    m: int
    subsample: bool = False

    def spread(self, reps: np.ndarray | None = None) -> np.ndarray:
        """``reps`` (default: this statistic's) widened by the jackknife factor when subsampled."""
        reps = self.reps if reps is None else reps
        return jackknife_widen(reps, self.n, self.m) if self.subsample else reps

    def estimate(self, level: float = 0.95) -> Estimate:
        """The point value with its percentile CI and SE."""
        return summarise(self.point, self.spread(), self.n, level)

    @property
    def se(self) -> float:
        """The resampling standard error: SD (ddof 1) of the finite replicates × :func:`widen_factor` when subsampled."""
        finite = self.reps[np.isfinite(self.reps)]
        return float(finite.std(ddof=1) * (widen_factor(self.n, self.m) if self.subsample else 1.0))


def metric_replicates(metric: Resampleable, prepared: Any, rows: np.ndarray, items: np.ndarray | None = None) -> Replicates:
    """``metric`` on every resample row of ``prepared``; the point value is the metric on all items (on ``items`` where
    given: a subgroup, whose rows are drawn from it), or, for a subsampled (set-level) metric, the mean replicate."""
    subsample = metric.resample == "subsample"
    whole = np.arange(metric.size(prepared)) if items is None else np.asarray(items, np.int64)
    reps = replicates(lambda row: metric.value(prepared, row), rows)
    point = float(reps.mean()) if subsample and reps.size else metric.value(prepared, whole)
    return Replicates(float(point), reps, len(whole), rows.shape[1], subsample)


def resample_metric(metric: Resampleable, prepared: Any, prepared_ref: Any | None, n_boot: int, rng: np.random.Generator,
                    paired: bool, measure: Callable[..., Replicates] = metric_replicates, items: np.ndarray | None = None,
                    ) -> tuple[Replicates, Replicates | None]:
    """``metric`` resampled on ``prepared`` and on ``prepared_ref`` (if given): with ``paired`` both use the same rows
    (their row-wise differences are the paired bootstrap), else each draws its own rows from ``rng`` in turn. ``items``
    (paired only) restricts both to those items (a subgroup): the rows are resamples of ``items`` and the point value
    is taken on them. ``measure(metric, prepared, rows, items=...)`` computes the replicates on the drawn rows (default
    :func:`metric_replicates`; the gate passes one that remembers them on disk,
    :func:`mriq_validate.memo.cached_replicates`)."""
    subsample = metric.resample == "subsample"
    if items is None:
        rows = resample_rows(metric.size(prepared), n_boot, rng, subsample)
    elif prepared_ref is not None and not paired:
        raise ValueError("resampling a subgroup (items) needs paired samples: the items must be the same on both sides")
    else:
        items = np.asarray(items, np.int64)
        rows = items[resample_rows(len(items), n_boot, rng, subsample)]
    value = measure(metric, prepared, rows, items=items)
    if prepared_ref is None:
        return value, None
    ref_rows = rows if paired else resample_rows(metric.size(prepared_ref), n_boot, rng, subsample)
    return value, measure(metric, prepared_ref, ref_rows, items=items)


def compare(value: Replicates, baseline: Replicates, fn: Callable[[float, float], float], level: float = 0.95) -> Estimate:
    """``fn(value, baseline)`` with its CI over the row-by-row ``fn`` of the replicates (paired when they share rows)."""
    reps = np.array([fn(a, b) for a, b in zip(value.reps, baseline.reps)], dtype=np.float64)
    return summarise(fn(value.point, baseline.point), value.spread(reps), value.n, level)


def noise_floor(metric: Resampleable, prepared: Any, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """(value on all items, resampling SE): the measure's noise floor on ``prepared``. SE over ``n_boot`` bootstrap
    resamples, or for a set-level metric over ``n_boot`` 80 % subsets widened by :func:`widen_factor`; NaN when
    ``n_boot`` < 2."""
    n = metric.size(prepared)
    point = float(metric.value(prepared, np.arange(n)))
    if n_boot < 2:
        return point, float("nan")
    subsample = metric.resample == "subsample"
    rows = resample_rows(n, n_boot, rng, subsample)
    return point, Replicates(point, replicates(lambda row: metric.value(prepared, row), rows), n, rows.shape[1], subsample).se


def correlation(kind: str, x: np.ndarray, y: np.ndarray) -> float:
    """Spearman or Pearson correlation of ``x`` and ``y`` (scipy.stats); NaN for fewer than 3 items or a constant side."""
    from scipy import stats

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or (x == x[0]).all() or (y == y[0]).all():
        return float("nan")
    fn = {"spearman": stats.spearmanr, "pearson": stats.pearsonr}[kind]
    return float(fn(x, y)[0])


def correlate(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_boot: int = 1000) -> dict[str, float]:
    """Spearman and Pearson of x and y with percentile-bootstrap 95 % CIs over the paired items (shared rows)."""
    n = len(x)
    rows = bootstrap_indices(n, n_boot, rng) if n >= 3 else np.empty((0, n), np.int64)
    est = {kind: estimate_from(lambda i: correlation(kind, x[i], y[i]), n, rows) for kind in ("spearman", "pearson")}
    out: dict[str, float] = {"n": n, **{kind: e.value for kind, e in est.items()}}
    for kind, e in est.items():  # no finite replicate: no interval
        out[f"{kind}_ci_low"], out[f"{kind}_ci_high"] = (e.ci_low, e.ci_high) if e.n_boot else (math.nan, math.nan)
    return out
