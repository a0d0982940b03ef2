"""A threshold's bounds on the compared quantity: the noise unit they are written in, the clinical tolerance that can
loosen them, and the check of a value against them.

Pure functions of a :class:`~mriq_validate.suite.Threshold` and recorded numbers (scipy is imported where needed), so
the gate (:mod:`mriq_validate.criteria`) and every reader that re-derives a verdict from a finished report
(:mod:`mriq_validate.integrity`) use the same code.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .errors import MetricError
from .stats import Estimate


class Threshold(Protocol):
    """What the bounds are made from: a suite's threshold (:class:`mriq_validate.suite.Threshold` has these fields;
    ``tolerance`` is None or has ``min`` and ``max``)."""

    min: float | None
    max: float | None
    on: str
    unit: str
    tolerance: Any


def check_threshold(th: Threshold, compared: Estimate, scale: float | NoiseUnit) -> tuple[bool, float, dict[str, float | None]]:
    """Whether ``compared`` (value or CI bound per ``th.on``) lies within the bounds in the noise unit ``scale``: a
    :class:`NoiseUnit` (see :func:`noise_unit`), or a number the bounds are multiplied by."""
    lo, hi = threshold_bounds(th, scale)
    checked = {"value": compared.value, "lower_ci": compared.ci_low, "upper_ci": compared.ci_high}[th.on]
    if not np.isfinite(checked):
        cause = (" (a ratio to a baseline that is 0 in some bootstrap resamples)" if th.relative == "ratio" else "")
        raise MetricError(f"the {th.on.replace('_', ' ')} of the compared quantity is not finite ({checked}){cause}; the "
                          f"criterion cannot be decided")
    ok = (lo is None or checked >= lo) and (hi is None or checked <= hi)
    return ok, float(checked), {"min": lo, "max": hi}


def noise_bounds(th: Threshold, scale: float | NoiseUnit) -> tuple[float | None, float | None]:
    """The threshold's ``min``/``max`` as bounds on the compared quantity in the noise unit ``scale`` (before any
    clinical tolerance)."""
    to = scale.bound if isinstance(scale, NoiseUnit) else (lambda c: c * scale)
    return (to(th.min) if th.min is not None else None), (to(th.max) if th.max is not None else None)


def threshold_bounds(th: Threshold, scale: float | NoiseUnit) -> tuple[float | None, float | None]:
    """The bounds the gate applies to the compared quantity: the noise bounds, each loosened to the clinical tolerance
    where that is looser."""
    lo, hi = noise_bounds(th, scale)
    tol = th.tolerance
    if tol is not None:
        lo = min(lo, tol.min) if lo is not None and tol.min is not None else lo
        hi = max(hi, tol.max) if hi is not None and tol.max is not None else hi
    return lo, hi


def bound_sources(th: Threshold, scale: float | NoiseUnit) -> dict[str, str]:
    """Per bound, what set it: ``"clinical tolerance"`` where the tolerance is the looser, else ``"noise"``."""
    if th.tolerance is None:
        return {}
    noise = dict(zip(("min", "max"), noise_bounds(th, scale)))
    out = {}
    for side, pick in (("min", min), ("max", max)):
        t = getattr(th.tolerance, side)
        if noise[side] is not None:
            out[side] = "clinical tolerance" if t is not None and pick(noise[side], t) == t and t != noise[side] else "noise"
    return out



@dataclass(frozen=True)
class NoiseUnit:
    """The unit of a threshold's bounds, and how a bound ``c`` in it becomes a bound on the compared quantity.

    ``absolute``: ``c``. ``se``: ``c`` bootstrap SEs of the baseline. ``seed_sd``: ``c`` seed-to-seed SDs of training
    noise, with the false-alarm rate that ``c`` SDs would have if the SD were known: a difference of two independent
    trainings (SD σ·√2) falls below ``-|c|·σ`` with probability α = Φ(−|c|/√2) (c = 3: 1.7 %). The SD is only estimated,
    as ``scale`` = s from ``seeds`` trainings, so the bound is widened to ``c′·s`` with ``c′`` = :func:`seed_sd_multiplier`
    chosen to keep α exactly (normal training noise, the baseline's training among the seeds); without the widening,
    3 seed SDs from 3 seeds falsely fail 7.0 % of trainings as useful as the baseline's, not 1.7 %.
    """

    unit: str
    scale: float = 1.0
    seeds: int | None = None
    seed_means: tuple[float, ...] = ()

    def bound(self, c: float) -> float:
        """The bound on the compared quantity for the threshold's bound ``c``."""
        if self.unit != "seed_sd":
            return c * self.scale
        assert self.seeds is not None
        return math.copysign(seed_sd_multiplier(abs(c), self.seeds), c) * self.scale

    def record(self, th: Threshold) -> dict[str, Any]:
        """What the outcome records about the unit (empty for ``absolute``)."""
        if self.unit == "se":
            return {"noise_unit": {"unit": "se", "se": self.scale}}
        if self.unit != "seed_sd":
            return {}
        assert self.seeds is not None
        per_bound: dict[str, Any] = {}
        for name, c in (("min", th.min), ("max", th.max)):
            if c is None:
                continue
            m = seed_sd_multiplier(abs(c), self.seeds)
            per_bound[name] = {"seed_sds": c, "multiplier": math.copysign(m, c), "inflation": m / abs(c) if c else 1.0,
                               "false_alarm": seed_sd_false_alarm(m, self.seeds),
                               "false_alarm_uninflated": seed_sd_false_alarm(abs(c), self.seeds)}
        return {"noise_unit": {"unit": "seed_sd", "seed_sd": self.scale, "seeds": self.seeds, "seed_means": list(self.seed_means),
                               "bounds": per_bound,
                               "model": "false_alarm: the chance that a training as useful as the baseline's falls outside the bound "
                                        "(normal training noise; the baseline's training is one of the seeds)"}}


@functools.lru_cache(maxsize=256)
def seed_sd_false_alarm(multiplier: float, seeds: int) -> float:
    """P(D < −multiplier·s): the false-alarm rate of the bound ``-multiplier × s`` for a training as useful as the baseline's.

    D is a new training's value minus the baseline training's; s the SD (ddof 1) of ``seeds`` = k trainings' values, the
    baseline's among them (the TRTR segmenter is seed 0 of the noise seeds). Values of independent trainings are normal
    N(μ, σ²). Exact, by decomposition: with X̄ the seeds' mean, d = k − 1 and e₀ the baseline's residual,
    D = (X_new − X̄) − e₀, where X_new − X̄ ~ N(0, σ²(1 + 1/k)) is independent of the residuals; e₀ = σR·√(d/k)·cos θ and
    s = σR/√d, with R² ~ χ²_d and θ the angle between the residual vector and the baseline's axis (density ∝ sin^(d−2) θ
    on [0, π], independent of R). Given θ, D < −m·s ⇔ Z/(R/√d) < √d·(√(d/k)·cos θ − m/√d)/√(1 + 1/k) with Z standard
    normal, a Student-t_d event; the rate is its average over θ. (With the baseline not among the seeds it would be
    F_{t_d}(−m/√2); sharing it makes s and D dependent and the rate lower: k = 3, m = 3 gives 7.0 % instead of 8.4 %.)
    """
    from scipy import integrate, special, stats

    if seeds < 2 or not multiplier >= 0:
        raise ValueError(f"seed_sd_false_alarm needs seeds >= 2 and multiplier >= 0, got {seeds}, {multiplier}")
    k, d = seeds, seeds - 1

    def given(theta: float) -> float:
        return float(stats.t.cdf(math.sqrt(d) * (math.sqrt(d / k) * math.cos(theta) - multiplier / math.sqrt(d)) / math.sqrt(1 + 1 / k), d))

    if d == 1:  # the residual vector lies on a line: θ is 0 or π
        return 0.5 * (given(0.0) + given(math.pi))
    norm = special.beta(0.5, (d - 1) / 2)  # ∫₀^π sin^(d−2) θ dθ
    value, _ = integrate.quad(lambda th: math.sin(th) ** (d - 2) * given(th), 0.0, math.pi, epsabs=1e-12, epsrel=1e-10)
    return float(value / norm)


@functools.lru_cache(maxsize=256)
def seed_sd_multiplier(sds: float, seeds: int) -> float:
    """The multiplier c′ of an SD estimated from ``seeds`` trainings for a bound of ``sds`` (≥ 0) seed-to-seed SDs:
    :func:`seed_sd_false_alarm` (c′, seeds) equals Φ(−sds/√2), the rate ``sds`` known SDs have for a difference of two
    independent trainings. c′ > sds and c′ → sds as seeds grow (c = 3: 6.26 for 3 seeds, 3.86 for 5, 3.25 for 10)."""
    from scipy import optimize, stats

    if not sds >= 0 or not math.isfinite(sds):
        raise ValueError(f"seed_sd_multiplier needs a finite bound >= 0 seed SDs, got {sds}")
    if sds == 0:
        return 0.0
    alpha = float(stats.norm.cdf(-sds / math.sqrt(2)))
    hi = sds
    while seed_sd_false_alarm(hi, seeds) > alpha:
        hi *= 2
    return float(optimize.brentq(lambda m: seed_sd_false_alarm(m, seeds) - alpha, sds, hi, xtol=1e-10, rtol=1e-12))
