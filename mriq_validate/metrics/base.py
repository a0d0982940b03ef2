"""The metric registry and base classes.

A metric declares its direction, what it takes (per image or per set), its valid range (enforced: a value outside it
is a MetricError), whether it needs label masks (enforced by ``check_sample``) and its functional entry point (the pure
maths in :mod:`mriq_validate.metrics.functional`, usable without a run). It is computed in two steps so that bootstrap
CIs are cheap and paired:

* ``prepare(ctx, sample)`` does the expensive work once (per-image scores, features, a trained model);
* ``value(prepared, index)`` turns a resample ``index`` of the sample's images into a number (subclasses write
  ``compute``; ``value`` checks the number against ``valid_range``).

Per-image metrics derive from :class:`PerImageMetric` and only write ``scores``. A measure of 2D images declares
``native_dims = 2``; given volumes (N×C×D×H×W), it scores each one's axial slices that hold brain and aggregates them per
volume (:data:`VOLUME_AGGREGATIONS`, recorded in the metric's config). The implementations register themselves on import;
:mod:`mriq_validate.metrics` imports them all, so import the registry from the package.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from ..arrays import batches
from ..contract import MeasureContext, Sample
from ..data.preprocess import BRAIN_FRACTION
from ..errors import MetricError
from .functional.intensity import axial_brain_slices



#: What a metric may declare in ``needs``, each checked by :meth:`Metric.check_sample`.
NEEDS = ("masks",)
#: Rounding allowed beyond a bound of ``valid_range``, relative to max(1, |bound|) (float32 maths in MONAI and pyiqa).
RANGE_TOLERANCE = 1e-6


class Metric(ABC):
    """Base class. Subclasses set the class attributes and validate every parameter in ``__init__`` (so that loading a
    suite, which creates its metrics, reports a bad one with its file and line)."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    kind: ClassVar[Literal["per_image", "set", "paired"]]
    # The pure maths, on tensors or arrays and the metric's configuration, with a docstring example that runs
    # (mriq_validate.metrics.functional); the class calls it. A staticmethod, so that instances do not bind it.
    functional: ClassVar[Callable[..., Any] | None] = None
    valid_range: ClassVar[tuple[float, float]] = (-np.inf, np.inf)
    needs: ClassVar[tuple[str, ...]] = ()  # a subset of NEEDS
    summary: ClassVar[str] = ""
    # What the measure is blind to or biased by, one honest sentence each; the evidence report lists them per measure.
    limitations: ClassVar[tuple[str, ...]] = ()
    # True when ``value`` is an average over items of a fixed reference (e.g. Dice on the real test slices of a
    # segmenter trained on the sample), so two samples' values are paired item by item whatever the sample sizes.
    pairs_by_reference: ClassVar[bool] = False
    # "bootstrap": resample items with replacement, value on the full set; "subsample": 80 % subsets without
    # replacement for set-level measures that duplicates would bias, value = mean over the subsets.
    resample: ClassVar[str] = "bootstrap"
    default_n_boot: ClassVar[int] = 1000
    # "joint": one value from all contrasts together (a segmenter or feature extractor that takes every channel);
    # "each": a measure of one grey image, taken on each contrast alone, and a criterion on it must pass on every one.
    channels: ClassVar[Literal["joint", "each"]] = "joint"

    def __init__(self, **params: Any) -> None:
        if params:
            raise MetricError(f"metric {self.name!r} takes no parameters, got {sorted(params)}")

    def config(self) -> dict[str, Any]:
        """Everything that changes the number (recorded with the value)."""
        return {"name": self.name}

    @abstractmethod
    def prepare(self, ctx: MeasureContext, sample: Sample) -> Any:
        """Expensive, once per sample."""

    def value(self, prepared: Any, index: np.ndarray) -> float:
        """The metric on the resample ``index`` of the items (``range(size(prepared))``); MetricError naming the metric and
        the value when it lies outside ``valid_range`` (NaN is passed on: callers decide what a failed resample means)."""
        v = float(self.compute(prepared, index))
        if not math.isnan(v) and not self.in_range(v):
            raise MetricError(f"metric {self.name!r}: value {v!r} lies outside its valid range {_range_text(self.valid_range)}")
        return v

    @abstractmethod
    def compute(self, prepared: Any, index: np.ndarray) -> float:
        """The number :meth:`value` returns, before its range check."""

    def in_range(self, v: float | np.ndarray) -> bool | np.ndarray:
        """Whether ``v`` lies in ``valid_range``, allowing :data:`RANGE_TOLERANCE` of rounding at a finite bound."""
        lo, hi = self.valid_range
        return (v >= lo - RANGE_TOLERANCE * max(1.0, abs(lo))) & (v <= hi + RANGE_TOLERANCE * max(1.0, abs(hi)))

    def regions(self) -> tuple[str, ...]:
        """The region or label names this metric reads from the data's annotations (checked against the data)."""
        region = self.config().get("region")
        return (region,) if isinstance(region, str) else ()

    def uses_annotations(self) -> bool:
        """Whether this metric needs the data's label masks (a cohort without annotations cannot run it)."""
        return "masks" in self.needs or bool(self.regions())

    def noise_floor(self, ctx: MeasureContext) -> float | None:
        """The seed-to-seed standard deviation of this metric's value on real data (training noise), if it has one."""
        return None

    def size(self, prepared: Any) -> int:
        """How many items ``value`` resamples (the sample's images, unless the metric says otherwise)."""
        return len(prepared)

    def check_sample(self, sample: Sample) -> None:
        """MetricError when the sample lacks what this metric needs."""
        if "masks" in self.needs and sample.masks is None:
            raise MetricError(f"metric {self.name!r} needs label masks with the {sample.origin} images, and none came with them")
        if len(sample) < 2:
            raise MetricError(f"metric {self.name!r} needs at least 2 images, got {len(sample)} ({sample.origin})")


#: How a measure of 2D images turns the scores of a volume's axial slices with brain into the volume's score:
#: f(slice scores, higher_is_better). "worst" is the slice furthest in the bad direction.
VOLUME_AGGREGATIONS: dict[str, Callable[[np.ndarray, bool], float]] = {
    "mean": lambda s, higher_is_better: float(s.mean()),
    "median": lambda s, higher_is_better: float(np.median(s)),
    "worst": lambda s, higher_is_better: float(s.min() if higher_is_better else s.max()),
}


class PerImageMetric(Metric):
    """A metric that scores each image; the set value is the mean of the scores.

    ``native_dims``: None when ``scores`` takes slices and volumes alike; 2 when it takes slices only, and then a volume
    scores the :data:`VOLUME_AGGREGATIONS` ``volume_aggregation`` of its axial slices with brain (:meth:`volume_scores`).
    """

    kind: ClassVar[Literal["per_image", "set", "paired"]] = "per_image"
    native_dims: ClassVar[int | None] = None
    # True: ``scores`` sees one batch of ``--mriq-batch-size`` items at a time; False: all at once (a measure whose
    # every call pays a fixed cost over the whole reference, and that bounds its own item count, e.g. copy_fraction)
    batched: ClassVar[bool] = True
    volume_aggregation: str = "mean"  # set per instance by check_volume_aggregation

    @abstractmethod
    def scores(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        """One score per image (length N)."""

    def check_volume_aggregation(self, value: Any) -> str:
        """Set ``volume_aggregation`` (a name in :data:`VOLUME_AGGREGATIONS`); MetricError naming the metric otherwise."""
        if not isinstance(value, str) or value not in VOLUME_AGGREGATIONS:
            raise MetricError(f"metric {self.name!r}: volume_aggregation must be one of {sorted(VOLUME_AGGREGATIONS)}, got {value!r}")
        self.volume_aggregation = value
        return value

    def volume_config(self) -> dict[str, Any]:
        """How a volume is scored, for ``config`` (a measure of 2D images: on its axial slices with brain)."""
        if self.native_dims != 2:
            return {}
        return {"volume_aggregation": f"{self.volume_aggregation} over axial slices with brain (> {BRAIN_FRACTION:g} of the "
                                      "slice in the volume's log-Otsu brain mask; all slices of a volume without brain)"}

    def volume_scores(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        """One score per volume of ``sample`` (N×C×D×H×W) for a measure of 2D images: ``scores`` of all the volumes' axial
        slices with brain (:func:`~.functional.intensity.axial_brain_slices`) in one call, aggregated per volume."""
        slices, owner, depth = axial_brain_slices(sample.images)
        masks = None if sample.masks is None else sample.masks[torch.as_tensor(owner), :, torch.as_tensor(depth)]
        s = np.asarray(self.scores(ctx, Sample(slices, masks, f"{sample.origin} (axial slices)", sample.channel)), dtype=np.float64)
        if s.shape != (len(slices),):
            raise MetricError(f"metric {self.name!r} returned {s.shape} scores for {len(slices)} axial slices")
        aggregate = VOLUME_AGGREGATIONS[self.volume_aggregation]
        return np.array([aggregate(s[owner == i], self.higher_is_better) for i in range(len(sample))])

    def contrast_mean(self, ctx: MeasureContext, sample: Sample) -> np.ndarray | None:
        """For a measure of one grey image (``channels: each``) given several contrasts, the mean over the contrasts of
        :meth:`prepare` on each (the study and the downstream table; a criterion decides on each contrast, see
        :func:`mriq_validate.criteria.evaluate`); None when ``sample`` is one contrast or the measure takes them jointly."""
        if self.channels != "each" or sample.channel is not None or sample.images.shape[1] == 1:
            return None
        return np.mean([self.prepare(ctx, sample.contrast(c, f"channel {c}")) for c in range(sample.images.shape[1])], axis=0)

    def prepare(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        self.check_sample(sample)
        if (mean := self.contrast_mean(ctx, sample)) is not None:
            return mean
        s = np.concatenate([self.batch_scores(ctx, sample, sl) for sl in batches(len(sample), batch_size(ctx, len(sample)) if self.batched else max(len(sample), 1))] or [np.zeros(0)])
        if s.shape != (len(sample),):
            raise MetricError(f"metric {self.name!r} returned {s.shape} scores for {len(sample)} images")
        if not np.all(np.isfinite(s)):
            bad = np.flatnonzero(~np.isfinite(s))[:10].tolist()
            raise MetricError(f"metric {self.name!r} is not finite on {sample.origin} image(s) {bad}")
        outside = np.flatnonzero(~self.in_range(s))
        if outside.size:
            raise MetricError(f"metric {self.name!r}: score(s) {s[outside[:5]].tolist()} of {sample.origin} image(s) "
                              f"{outside[:10].tolist()} lie outside its valid range {_range_text(self.valid_range)}")
        return s

    def batch_scores(self, ctx: MeasureContext, sample: Sample, items: slice) -> np.ndarray:
        """The scores of ``sample``'s ``items`` (one batch: a mapped sample is never read whole)."""
        part = Sample(sample.images[items], None if sample.masks is None else sample.masks[items], sample.origin, sample.channel)
        if self.native_dims == 2 and part.images.ndim == 5:
            s = self.volume_scores(ctx, part)
        else:
            s = np.asarray(self.scores(ctx, part), dtype=np.float64)
        if s.shape != (len(part),):
            raise MetricError(f"metric {self.name!r} returned {s.shape} scores for {len(part)} images "
                              f"(items {items.start}-{items.stop - 1} of {sample.origin})")
        return s

    def compute(self, prepared: np.ndarray, index: np.ndarray) -> float:
        return float(prepared[index].mean())


def batch_size(ctx: Any, n: int) -> int:
    """Items per batch of per-image scoring: the run's ``--mriq-batch-size`` (all ``n`` at once for a context without one)."""
    return int(getattr(ctx, "batch_size", None) or max(n, 1))


METRICS: dict[str, type[Metric]] = {}


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``; ValueError when the name is taken or ``needs``
    declares something that is not checked (not in :data:`NEEDS`)."""
    if cls.name in METRICS:
        raise ValueError(f"metric {cls.name!r} registered twice")
    unchecked = sorted(set(cls.needs) - set(NEEDS))
    if unchecked:
        raise ValueError(f"metric {cls.name!r}: needs {unchecked} are not checked by check_sample; expected a subset of {list(NEEDS)}")
    METRICS[cls.name] = cls
    return cls


def metric_names() -> list[str]:
    """All registered metric names."""
    return sorted(METRICS)


def create_metric(name: str, params: dict[str, Any] | None = None, where: str = "") -> Metric:
    """Instantiate metric ``name`` with ``params``; MetricError naming the unknown name or bad parameter."""
    if name not in METRICS:
        raise MetricError(f"{where}unknown metric {name!r}; expected one of {sorted(METRICS)}")
    cls = METRICS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params")]
    unknown = sorted(set(params or {}) - set(accepted)) if "params" not in inspect.signature(cls.__init__).parameters else []
    if unknown:
        raise MetricError(f"{where}metric {name!r}: unknown parameter(s) {unknown}; expected {accepted or 'none'}")
    try:
        return cls(**(params or {}))
    except TypeError as exc:
        raise MetricError(f"{where}metric {name!r}: {exc}") from None


def _range_text(r: tuple[float, float]) -> str:
    return f"[{r[0]:g}, {r[1]:g}]"


# ---------------------------------------------------------------------------------- parameter checks for ``__init__``
def check_int(metric: str, field: str, value: Any, lowest: int, highest: int | None = None) -> int:
    """``value`` as an int in ``[lowest, highest]``; MetricError naming the metric, the field and the value otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest or (highest is not None and value > highest):
        span = f">= {lowest}" if highest is None else f"in [{lowest}, {highest}]"
        raise MetricError(f"metric {metric!r}: {field} must be an integer {span}, got {value!r}")
    return int(value)


def check_number(metric: str, field: str, value: Any, ok: Callable[[float], bool], expected: str) -> float:
    """``value`` as a float for which ``ok`` holds; MetricError ``"<field> must be <expected>"`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not ok(float(value)):
        raise MetricError(f"metric {metric!r}: {field} must be a number {expected}, got {value!r}")
    return float(value)


def check_bool(metric: str, field: str, value: Any) -> bool:
    """``value`` when it is true or false; MetricError otherwise (YAML ``"no"`` in quotes is a string, not false)."""
    if not isinstance(value, bool):
        raise MetricError(f"metric {metric!r}: {field} must be true or false, got {value!r}")
    return value


def check_region(metric: str, region: Any) -> str:
    """A region or label name (a non-empty string; whether the data has it is known only once the data are loaded)."""
    if not isinstance(region, str) or not region:
        raise MetricError(f"metric {metric!r}: region must be a region or label name, got {region!r}")
    return region
