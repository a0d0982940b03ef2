"""The metric registry.

A metric declares its direction, what it takes (per image or per set), its valid range and what it needs.
It is computed in two steps so that bootstrap CIs are cheap and paired:

* ``prepare(ctx, sample)`` does the expensive work once (per-image scores, features, a trained model);
* ``value(prepared, index)`` turns a resample ``index`` of the sample's images into a number.

Per-image metrics derive from :class:`PerImageMetric` and only write ``scores``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch

from ..errors import MetricError

if TYPE_CHECKING:
    from ..session import RunContext


@dataclass(frozen=True)
class Sample:
    """A set of images to measure: N×1×H×W float in [0, 1], optional N×1×H×W label masks, and where it came from."""

    images: torch.Tensor
    masks: torch.Tensor | None
    origin: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


class Metric(ABC):
    """Base class. Subclasses set the class attributes and validate ``params`` in ``__init__``."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    kind: ClassVar[Literal["per_image", "set", "paired"]]
    valid_range: ClassVar[tuple[float, float]] = (-np.inf, np.inf)
    needs: ClassVar[tuple[str, ...]] = ()  # e.g. ("masks", "segmenter", "reference", "train", "weights")
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

    def __init__(self, **params: Any) -> None:
        if params:
            raise MetricError(f"metric {self.name!r} takes no parameters, got {sorted(params)}")

    def config(self) -> dict[str, Any]:
        """Everything that changes the number (recorded with the value)."""
        return {"name": self.name}

    @abstractmethod
    def prepare(self, ctx: "RunContext", sample: Sample) -> Any:
        """Expensive, once per sample."""

    @abstractmethod
    def value(self, prepared: Any, index: np.ndarray) -> float:
        """The metric on the resample ``index`` of the items (``range(size(prepared))``)."""

    def noise_floor(self, ctx: "RunContext") -> float | None:
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


class PerImageMetric(Metric):
    """A metric that scores each image; the set value is the mean of the scores."""

    kind: ClassVar[Literal["per_image", "set", "paired"]] = "per_image"

    @abstractmethod
    def scores(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        """One score per image (length N)."""

    def prepare(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        self.check_sample(sample)
        s = np.asarray(self.scores(ctx, sample), dtype=np.float64)
        if s.shape != (len(sample),):
            raise MetricError(f"metric {self.name!r} returned {s.shape} scores for {len(sample)} images")
        if not np.all(np.isfinite(s)):
            bad = np.flatnonzero(~np.isfinite(s))[:10].tolist()
            raise MetricError(f"metric {self.name!r} is not finite on {sample.origin} image(s) {bad}")
        return s

    def value(self, prepared: np.ndarray, index: np.ndarray) -> float:
        return float(prepared[index].mean())


METRICS: dict[str, type[Metric]] = {}


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``."""
    if cls.name in METRICS:
        raise ValueError(f"metric {cls.name!r} registered twice")
    METRICS[cls.name] = cls
    return cls


def metric_names() -> list[str]:
    """All registered metric names."""
    _load_all()
    return sorted(METRICS)


def create_metric(name: str, params: dict[str, Any] | None = None, where: str = "") -> Metric:
    """Instantiate metric ``name`` with ``params``; MetricError naming the unknown name or bad parameter."""
    _load_all()
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


def _load_all() -> None:
    from .. import downstream  # noqa: F401  (dice)
    from . import copying, distributional, diversity, intensity, iqa  # noqa: F401
