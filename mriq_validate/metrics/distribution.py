"""Set-level distribution metrics over features, against the real training split by default (maths in
:mod:`.functional.distribution`).

Each compares the evaluated sample's features with a real reference split's features (``reference``), so the
baseline (the same measure on the real test images) says what "as good as real data" looks like. CIs come from
subsamples without replacement (``resample = "subsample"``): bootstrap duplicates would bias set distances and
diversity scores (a resample with copies looks like a collapsed set); their spread is widened by the delete-d
jackknife factor sqrt(m/(n-m)) so it estimates the full set's sampling noise.

Cost in the set size N: FID, FRD, KID and Vendi are linear (means and covariances, fixed-size KID subsets, a d × d
cosine Gram matrix). MMD and PRDC compare every pair of items: their matrices are computed in row blocks (memory of one
block), and on sets larger than ``max_items`` they are evaluated on a random subset of ``max_items`` items per set, drawn
from the run seed and the measure's name, so that their time (and the CI's, which resamples the subset) stops growing.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from ..contract import MeasureContext
from ..errors import MetricError
from ..seeding import derive_seed
from .base import Metric, Sample, check_bool, check_int, register_metric
from .features import RADIOMIC_3D, check_features, features, make_extractor
from .functional import distribution as D



class FeatureSetMetric(Metric):
    """Base: ``distance(sample_features, reference_features)``; subclasses set ``distance``, the declarations and the
    integer parameters they take beyond ``features`` and ``reference`` (``int_params``: name → (default, lowest))."""

    kind: ClassVar[Literal["per_image", "set", "paired"]] = "set"
    resample: ClassVar[str] = "subsample"
    default_n_boot: ClassVar[int] = 100
    int_params: ClassVar[dict[str, tuple[int, int]]] = {}
    # Measures whose cost is quadratic in the set size take ``max_items`` (in ``int_params``): each set is cut to a seeded
    # random subset of that many items. The default leaves every set of up to 2048 items (the embedded data's) whole:
    # Naeem et al. 2020 evaluate PRDC on 10k samples, but a value is repeated for each of the default_n_boot subsamples,
    # and 2048 items keep a measure's 100 resamples within about a minute on two CPU cores.
    MAX_ITEMS: ClassVar[int] = 2048

    def __init__(self, features: dict[str, Any] | None = None, reference: str = "train", **params: Any) -> None:
        if reference not in ("train", "test"):
            raise MetricError(f"metric {self.name!r}: reference must be 'train' or 'test', got {reference!r}")
        check_features(features, f"metric {self.name!r}: features: ")
        self.features, self.reference, self.params = dict(features or {}), reference, params
        self.check_params()

    def check_params(self) -> None:
        extra = sorted(set(self.params) - set(self.int_params))
        if extra:
            raise MetricError(f"metric {self.name!r}: unknown parameter(s) {extra}; expected {['features', 'reference', *self.int_params]}")
        self.params = {k: check_int(self.name, k, self.params.get(k, default), lowest) for k, (default, lowest) in self.int_params.items()}
        if "k" in self.params and "max_items" in self.params and self.params["max_items"] <= self.params["k"]:
            raise MetricError(f"metric {self.name!r}: max_items must be more than k = {self.params['k']} (the k-th nearest "
                              f"neighbour needs k + 1 items per set), got {self.params['max_items']!r}")

    def config(self) -> dict[str, Any]:
        capped = {"subset": "sets larger than max_items: a random subset of max_items items each (seeded by the run seed "
                            "and the measure's name); the CI subsamples that subset"} if "max_items" in self.params else {}
        return {"name": self.name, "features": {"extractor": "segmenter", **self.features},
                "reference": f"real {self.reference} split", **self.params, **capped,
                "ci": "80% subsamples without replacement, spread widened by the delete-d jackknife factor sqrt(m/(n-m))"}

    def uses_annotations(self) -> bool:
        return self.config()["features"]["extractor"] == "segmenter"  # the default extractor is trained on the labels

    def prepare(self, ctx: MeasureContext, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        self.check_sample(sample)
        ext = make_extractor(ctx, self.features, f"metric {self.name!r}: features: ")
        split = getattr(ctx.data, self.reference)
        own, ref = features(ctx, ext, sample.images, sample.masks), features(ctx, ext, split.images, split.masks)
        return self.capped(own, ctx.seed, "evaluated"), self.capped(ref, ctx.seed, "reference")

    def capped(self, f: np.ndarray, run_seed: int, role: str) -> np.ndarray:
        """``f``, or a random subset of ``max_items`` of its rows (seeded by the run seed, the measure's name and the
        set's role, so two sets of one size, e.g. generated and real test images, keep the same rows and stay paired)."""
        if "max_items" not in self.params:
            return f
        rows = D.capped_rows(len(f), self.params["max_items"], derive_seed(run_seed, self.name, "max_items", role))
        return f if rows is None else f[rows]

    def size(self, prepared: tuple[np.ndarray, np.ndarray]) -> int:
        return len(prepared[0])

    def compute(self, prepared: tuple[np.ndarray, np.ndarray], index: np.ndarray) -> float:
        own, ref = prepared
        return float(self.distance(own[index], ref))

    def distance(self, own: np.ndarray, ref: np.ndarray) -> float:
        raise NotImplementedError


@register_metric
class Fid(FeatureSetMetric):
    """Fréchet distance between Gaussian fits of the features (FID when the features are Inception's)."""

    name, higher_is_better, valid_range = "fid", False, (0.0, np.inf)
    functional = staticmethod(D.fid_from_features)
    summary = "Fréchet distance of feature Gaussians vs the real reference (segmenter features by default)"
    limitations = (
        "Set-level: fits a Gaussian to the features and is biased upwards at small n (hundreds of images give unstable "
        "values), so compare only sets of equal size under the same feature extractor.",
        "Features come from the real-data segmenter's encoder unless configured otherwise; insensitive to localised lesion "
        "edits, and blind to memorisation: copies of the training set score as well as new images (Deo et al. 2025).",
    )

    def distance(self, own: np.ndarray, ref: np.ndarray) -> float:
        return D.fid_from_features(own, ref)


@register_metric
class Frd(Fid):
    """FRD-style Fréchet radiomic distance: FID on z-scored handcrafted radiomic features."""

    name = "frd"
    functional = staticmethod(D.frd)
    summary = "Fréchet distance of radiomic (first-order + GLCM) features vs the real reference"
    limitations = (
        "22 handcrafted features (first order, GLCM, gradient), not the full PyRadiomics set of Konz et al.'s FRD: "
        "sensitive to texture and intensity shifts, blind to lesion position and to anatomy beyond texture.",
        "Computed on the whole image unless masked (a slice, or a volume as a whole: 3D texture, not per slice); same "
        "small-n bias as FID, and blind to memorisation.",
    )

    def __init__(self, features: dict[str, Any] | None = None, reference: str = "train", masked: bool = False) -> None:
        super().__init__({"extractor": "radiomic", "masked": check_bool(self.name, "masked", masked), **(features or {})}, reference)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "volumes": RADIOMIC_3D}

    def distance(self, own: np.ndarray, ref: np.ndarray) -> float:
        return D.frd(own, ref)


@register_metric
class Kid(FeatureSetMetric):
    """Kernel inception distance: unbiased MMD² with the cubic polynomial kernel, averaged over subsets."""

    name, higher_is_better, valid_range = "kid", False, (-np.inf, np.inf)
    functional = staticmethod(D.kid)
    int_params = {"subsets": (50, 1), "subset_size": (100, 2)}
    summary = "KID (unbiased MMD², cubic kernel, subset mean) vs the real reference"
    limitations = (
        "Set-level: unbiased but high-variance at small n (the subsets are drawn from the run seed); the same "
        "feature-extractor caveats as FID, and blind to memorisation.",
    )

    def prepare(self, ctx: MeasureContext, sample: Sample) -> tuple[np.ndarray, np.ndarray, int]:  # type: ignore[override]
        """The features, and the seed of the subset draws: derived from the run seed and this measure's configuration,
        so a run is replayable and another run seed draws other subsets."""
        import json

        own, ref = super().prepare(ctx, sample)
        return own, ref, derive_seed(ctx.seed, "kid-subsets", json.dumps(self.config(), sort_keys=True, default=str))

    def compute(self, prepared: tuple[np.ndarray, np.ndarray, int], index: np.ndarray) -> float:  # type: ignore[override]
        own, ref, seed = prepared
        return float(D.kid(own[index], ref, subsets=self.params["subsets"], subset_size=self.params["subset_size"], rng=seed).mean)


@register_metric
class Mmd(FeatureSetMetric):
    """Unbiased MMD² with a Gaussian kernel (median-heuristic bandwidth)."""

    name, higher_is_better, valid_range = "mmd", False, (-np.inf, np.inf)
    functional = staticmethod(D.mmd2)
    int_params = {"max_items": (FeatureSetMetric.MAX_ITEMS, 2)}
    summary = "MMD² (RBF kernel, median bandwidth) vs the real reference"
    limitations = (
        "Set-level: the value depends on the kernel and its bandwidth, which the median heuristic takes from the pooled "
        "sample, so it is comparable only between sets of similar spread; blind to memorisation.",
        "The estimate is unbiased and can be slightly negative when the sets come from one distribution.",
    )

    def distance(self, own: np.ndarray, ref: np.ndarray) -> float:
        return float(D.mmd2(own, ref, kernel="rbf"))


PRDC_LIMITATION = ("k-nearest-neighbour manifold estimates (Naeem et al. 2020): they depend on k, on the feature extractor and "
                   "on outliers, which inflate the neighbourhoods they lie in.")


def _prdc_metric(component: str, higher: bool, text: str, limitation: str) -> type[FeatureSetMetric]:
    class Prdc(FeatureSetMetric):
        name, higher_is_better, valid_range, summary = component, higher, (0.0, np.inf if component == "density" else 1.0), text
        limitations = (PRDC_LIMITATION, limitation)
        functional = staticmethod(D.prdc)
        int_params = {"k": (5, 1), "max_items": (FeatureSetMetric.MAX_ITEMS, 2)}

        def distance(self, own: np.ndarray, ref: np.ndarray) -> float:
            return float(D.prdc(ref, own, k=self.params["k"])[component])

    Prdc.__name__ = f"Prdc_{component}"
    Prdc.__doc__ = f"PRDC {component} (Naeem et al. 2020; k nearest neighbours in feature space). {text}"
    return register_metric(Prdc)  # type: ignore[return-value]


for _c, _t, _lim in (
    ("precision", "fidelity: share of generated samples inside the real manifold",
     "Fidelity only: a collapsed set of realistic images keeps full precision; it does not see localised lesion errors, "
     "and copies of the training images score perfectly."),
    ("recall", "diversity: share of real samples inside the generated manifold",
     "Diversity only: falls with mode collapse, but a set of copies of the training images has full recall."),
    ("density", "fidelity: how densely generated samples fill real neighbourhoods",
     "Fidelity only and not bounded by 1: many images near dense real regions (or copies of them) raise it."),
    ("coverage", "diversity: share of real samples with a generated sample in their neighbourhood",
     "Diversity only: falls with mode collapse, but a set of copies of the training images has full coverage."),
):
    _prdc_metric(_c, True, _t, _lim)


@register_metric
class Vendi(FeatureSetMetric):
    """Vendi score (Friedman & Dieng 2023): the effective number of distinct samples (cosine kernel)."""

    name, higher_is_better, valid_range = "vendi", True, (1.0, np.inf)
    functional = staticmethod(D.vendi_score)
    summary = "Vendi diversity of the set (effective number of distinct images), features z-scored by the reference"
    limitations = (
        "Diversity only (the effective number of distinct images): it says nothing about fidelity, and noise raises it.",
        "It grows with the number of images up to the feature dimension, so compare only sets of equal size.",
    )

    def distance(self, own: np.ndarray, ref: np.ndarray) -> float:
        # the reference only z-scores the features: raw non-negative activations would make every cosine ≈ 1
        return float(D.vendi_score(D.standardise(own, ref)))
