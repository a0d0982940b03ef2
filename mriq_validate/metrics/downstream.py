"""Downstream metrics (Deo et al. 2025, arXiv 2505.07175): Dice and HD95 of a segmenter, under two protocols.

Protocol A (evaluate on generated; metrics ``dice`` and ``hd95``): the segmenter trained on the real training split
is applied to the images a model generates for real test masks; Dice (or HD95) against those masks is compared with
the same segmenter's value on the real test images.

Protocol B (train on generated, test on real; metrics ``dice_tstr`` and ``dice_augmented``): a segmenter of the same
architecture and budget is trained on the model's image-mask pairs (TSTR), or on the real training split plus them
(augmentation), and its Dice is measured on the REAL test split, one value per test image. Trained on the real
training split itself it is TRTR, the same segmenter (same cache key) as protocol A's.

Slices and volumes: one suite serves both. The segmenter's dimensionality and default budget come from the data
(:meth:`mriq_validate.segmenter.SegmenterConfig.resolve`: a 2D UNet on slices N×C×H×W, a 3D UNet on volumes
N×C×D×H×W; a suite that sets ``segmenter.spatial_dims`` against the data is an error naming it). Every value is per
image: per slice on slices, per volume on volumes; HD95 is in mm at the data's spacing (in-plane on slices, 3D on
volumes), and the lesion-wise metrics find lesions in the image's own dimensionality (8-connected in the slice plane,
26-connected in 3D as BraTS 2023).

Training noise: ``noise_floor`` of ``dice``, ``dice_tstr`` and ``dice_augmented`` is the seed-to-seed standard
deviation of the TRTR segmenter's mean real-test Dice over ``noise_seeds`` training seeds (default
:data:`DEFAULT_NOISE_SEEDS`; seed 0 is the TRTR segmenter itself). A threshold in ``unit: seed_sd`` is widened for the
uncertainty of that estimate so that it keeps the false-alarm rate it states (:class:`mriq_validate.bounds.NoiseUnit`).

HD95 has three definitions (``definition``): MONAI's (the larger of the two one-way 95th percentiles), the pooled one
(95th percentile of both directions' distances together, with BraTS's 374 mm for an empty mask) and BraTS 2023's
(DeepMind surface-distance: area-weighted surface elements); see
:data:`mriq_validate.metrics.functional.downstream.HD95_DEFINITIONS`.

Lesion-wise (metrics ``dice_lesionwise`` and ``hd95_lesionwise``, protocol A): the BraTS 2023 challenges' lesion-wise
Dice and HD95 of the same segmenter's prediction, per image: every lesion (connected component, merged by dilation)
scored on its own, each missed lesion and each false-positive blob scoring Dice 0 and HD95 374 mm
(:mod:`mriq_validate.metrics.functional.lesionwise`, which documents the official code it follows).

The segmenter (training, cache) is :mod:`mriq_validate.segmenter`; Dice and HD95 of label maps are
:mod:`mriq_validate.metrics.functional.downstream`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import torch

from ..contract import MeasureContext
from ..cache import content_hash
from ..errors import MetricError
from ..segmenter import SegmenterConfig, check_labels, get_segmenter
from .base import Metric, PerImageMetric, Sample, check_int, check_number, check_region, register_metric
from .functional import downstream as F
from .functional import lesionwise as LW


# Training seeds the noise floor is measured over. 5, not 3: three seeds estimate an SD only to within a factor of about
# 6 (95% chi-square interval), and the seed_sd bound widens to keep its false-alarm rate by x2.09 with 3 seeds against
# x1.29 with 5 (3 seed SDs). Each extra seed is one more training of the default segmenter (45-60 s on one CPU core,
# once per data and configuration: cached on disk).
DEFAULT_NOISE_SEEDS = 5


def _segmenter_params(name: str, region: Any, segmenter: Any, min_real_dice: Any) -> tuple[str, float, SegmenterConfig]:
    """The parameters every segmenter-based metric takes, checked: ``region``, ``min_real_dice``, ``segmenter``."""
    return (check_region(name, region), check_number(name, "min_real_dice", min_real_dice, lambda v: 0 <= v < 1, "in [0, 1)"),
            SegmenterConfig.from_params(segmenter, f"metric {name!r}: "))


def _for_data(ctx: MeasureContext, name: str, segmenter: SegmenterConfig) -> SegmenterConfig:
    """``segmenter`` resolved for the data's dimensionality (2D slices or 3D volumes) and its default budget; MetricError
    naming the metric when the suite set ``segmenter.spatial_dims`` (or ``roi_size``) against the data."""
    return segmenter.resolve(ctx.data.spatial_dims, f"metric {name!r}: ")


def _region_masks(ctx: MeasureContext, name: str, segmenter: SegmenterConfig, region: str,
                  sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """Protocol A's pair: ``region`` in the real-data segmenter's prediction on the sample's images, and in the sample's
    own masks (boolean N×1×H×W or N×1×D×H×W)."""
    assert sample.masks is not None
    pred = ctx.predict(_for_data(ctx, name, segmenter), sample.images)
    return ctx.data.region_mask(pred, region), ctx.data.region_mask(sample.masks, region)


def _check_competence(ctx: MeasureContext, name: str, region: str, segmenter: SegmenterConfig, min_real_dice: float) -> None:
    """MetricError unless the real-data segmenter reaches ``min_real_dice`` on the real test images, decided on Dice
    exactly as protocol A's ``dice`` decides it (the same computation, memoised by the run); first, MetricError naming
    metric ``name`` when its segmenter does not fit the data's dimensionality."""
    _for_data(ctx, name, segmenter)
    ctx.prepare(Dice(region, asdict(segmenter), min_real_dice), ctx.real("test"))


def _is_split(sample: Sample, split: Any) -> bool:
    """Whether ``sample`` holds exactly the images and masks of the real ``split`` (by content, whatever its origin says)."""
    return (sample.masks is not None and sample.images.shape == split.images.shape
            and content_hash(sample.images, sample.masks) == split.digest())


def _seed_means(ctx: MeasureContext, copies: list[Any], sample: Sample) -> list[float]:
    """The mean of ``ctx.prepare(copy, sample)`` for each metric copy (one per training seed; memoised by the run). The
    copies' segmenters are asked for together first, so that those not yet trained train side by side on the run's
    worker processes (:meth:`mriq_validate.session.RunContext.segmenters`)."""
    ctx.segmenters([_for_data(ctx, m.name, m.segmenter) for m in copies])
    return [float(np.mean(ctx.prepare(m, sample))) for m in copies]


_PROTOCOL_A_LIMITATIONS = (
    "Protocol A (a segmenter trained on real data, applied to generated images) shows that lesions are where the "
    "masks say and look like real lesions to a real-trained model; it does not show that a model trained on "
    "generated images generalises to real scans (protocol B, dice_tstr, does).",
    "Blind to errors outside the labelled regions (healthy anatomy, background artefacts) and inherits the "
    "segmenter's own errors; the criterion ERRORs when the segmenter's Dice on real images is below min_real_dice.",
)


@register_metric
class Dice(PerImageMetric):
    """Protocol A: Dice of the real-data segmenter's prediction on each image against the mask it was generated for."""

    name = "dice"
    functional = staticmethod(F.dice_per_image)
    higher_is_better = True
    valid_range = (0.0, 1.0)
    needs = ("masks",)
    summary = "Dice of a segmenter trained on real data, applied to the images (protocol A)"
    limitations: ClassVar[tuple[str, ...]] = (
        *_PROTOCOL_A_LIMITATIONS,
        "Dice per image (per slice on slices, per volume on volumes) weighs small lesions as much as large ones; thin "
        "structures (enhancing rim) are noisy, on slices most.",
        "Its seed-to-seed SD (unit: seed_sd) is the training noise of the real-data segmenter's Dice; protocol A compares "
        "two image sets under the SAME segmenter, so the false-alarm rate that unit states (for a difference of two "
        "trainings) does not apply to it; prefer unit se or absolute.",
    )

    def __init__(self, region: str = "whole_tumour", segmenter: dict[str, Any] | None = None, min_real_dice: float = 0.5,
                 noise_seeds: int = DEFAULT_NOISE_SEEDS) -> None:
        self.region, self.min_real_dice, self.segmenter = _segmenter_params(self.name, region, segmenter, min_real_dice)
        self.noise_seeds = check_int(self.name, "noise_seeds", noise_seeds, 2)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "protocol": "A", "segmenter": asdict(self.segmenter),
                "min_real_dice": self.min_real_dice, "noise_seeds": self.noise_seeds,
                "dice": "MONAI compute_dice per image (slice or volume), empty-vs-empty = 1"}

    def scores(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        return F.dice_per_image(*_region_masks(ctx, self.name, self.segmenter, self.region, sample))

    def prepare(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        """Per-image Dice, batch by batch; then the segmenter's competence on the real test images (this sample's scores
        when it is the real test split)."""
        scores = super().prepare(ctx, sample)
        real = scores if _is_split(sample, ctx.data.test) else ctx.prepare(self, ctx.real("test"))
        if real.mean() < self.min_real_dice:
            raise MetricError(
                f"metric 'dice' ({self.region}): the segmenter trained on real data reaches only Dice {real.mean():.3f} on the "
                f"real test images (< min_real_dice {self.min_real_dice}); it cannot tell damaged images from hard ones. "
                f"Train it longer (segmenter.epochs={_for_data(ctx, self.name, self.segmenter).epochs}) or check the data"
            )
        return scores

    def seed_means(self, ctx: MeasureContext) -> list[float]:
        """Mean real-test Dice of the real-data (TRTR) segmenter trained with seeds ``seed .. seed+noise_seeds-1`` (each
        trained once and cached on disk; the first is the segmenter this metric uses)."""
        copies = [Dice(self.region, {**asdict(self.segmenter), "seed": self.segmenter.seed + k}, self.min_real_dice, self.noise_seeds)
                  for k in range(self.noise_seeds)]
        ctx.progress(f"dice ({self.region}): training noise over {self.noise_seeds} segmenter seeds (trained once, then cached)")
        return _seed_means(ctx, copies, ctx.real("test"))

    def noise_floor(self, ctx: MeasureContext) -> float:
        """Seed-to-seed SD (ddof 1) of :meth:`seed_means`: the training noise of the real-data segmenter's Dice. Protocol
        A's comparisons use one segmenter on both sides, so this is a scale, not the noise of their difference."""
        return float(np.std(self.seed_means(ctx), ddof=1))


@register_metric
class Hd95(PerImageMetric):
    """Protocol A: 95th-percentile Hausdorff distance (mm) between the real-data segmenter's prediction on each image
    and the mask it was generated for; lower is better.

    ``definition: monai`` (default): the larger of the two one-way 95th percentiles of boundary distances (MONAI);
    both masks empty → 0 mm, exactly one empty → the image diagonal in mm. ``definition: brats``: the 95th percentile
    of both directions' distances pooled (medpy, panoptica); one empty → 374 mm as in BraTS's evaluation.
    ``definition: brats2023``: BraTS 2023's (DeepMind surface-distance: area-weighted surface elements on the
    voxel-corner grid, the larger one-way percentile); one empty → 374 mm. See
    :func:`~.functional.downstream.hd95_per_image`."""

    name = "hd95"
    functional = staticmethod(F.hd95_per_image)
    higher_is_better = False
    valid_range = (0.0, float("inf"))
    needs = ("masks",)
    summary = "95th-percentile Hausdorff distance (mm) of a segmenter trained on real data, applied to the images (protocol A)"
    limitations: ClassVar[tuple[str, ...]] = (
        *_PROTOCOL_A_LIMITATIONS,
        "On slices, HD95 in the slice plane, not in 3D: one slice's distances say nothing about the next slice's; on "
        "volumes, HD95 in 3D at the data's voxel spacing.",
        "An image where exactly one mask is empty scores a fixed penalty (the image diagonal, or 374 mm with definition "
        "brats) that dominates the mean; HD95 values of different definitions or image sizes are not comparable.",
    )

    def __init__(self, region: str = "whole_tumour", segmenter: dict[str, Any] | None = None, min_real_dice: float = 0.5,
                 definition: str = "monai") -> None:
        self.region, self.min_real_dice, self.segmenter = _segmenter_params(self.name, region, segmenter, min_real_dice)
        if not isinstance(definition, str) or definition not in F.HD95_DEFINITIONS:
            raise MetricError(f"metric 'hd95': definition {definition!r} unknown; expected one of {sorted(F.HD95_DEFINITIONS)}")
        self.definition = definition

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "protocol": "A", "segmenter": asdict(self.segmenter),
                "min_real_dice": self.min_real_dice, "definition": self.definition, "hd95": F.HD95_DEFINITIONS[self.definition][1]}

    def prepare(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        """The segmenter's competence first (once per sample), then per-image scores batch by batch."""
        self.check_sample(sample)
        _check_competence(ctx, self.name, self.region, self.segmenter, self.min_real_dice)
        return super().prepare(ctx, sample)

    def scores(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        pred, true = _region_masks(ctx, self.name, self.segmenter, self.region, sample)
        return F.hd95_per_image(pred, true, tuple(ctx.data.spacing_mm), self.definition)


class _Lesionwise(PerImageMetric):
    """Protocol A, lesion by lesion: the BraTS 2023 lesion-wise score (``score``: ``dice`` or ``hd95``) of the real-data
    segmenter's prediction on each image against the mask it was generated for
    (:func:`~.functional.lesionwise.lesionwise_dice_hd95`).

    ``challenge`` picks the BraTS 2023 settings (:data:`~.functional.lesionwise.BRATS2023_CHALLENGES`; default
    BraTS-GLI: dilation 3 voxels, lesions of at most 50 mm³ ignored); ``dilation`` (voxels, pixels on slices) and
    ``volume_threshold`` (mm³ on volumes, mm² on slices) override them. On volumes lesions are 26-connected 3D
    components as in BraTS 2023; on slices 8-connected components of the slice plane."""

    functional = staticmethod(LW.lesionwise_dice_hd95)
    needs = ("masks",)
    score: ClassVar[str] = ""
    _LIMITATIONS: ClassVar[tuple[str, ...]] = (
        *_PROTOCOL_A_LIMITATIONS,
        "On slices, a lesion is a connected region of the slice: a lesion that the slice plane cuts twice counts twice, "
        "and the BraTS 2023 settings, chosen for 3D volumes (dilation in voxels, threshold in mm³), apply to pixels and "
        "mm² there; on volumes, lesions are 3D (26-connected) as in BraTS 2023, at the data's voxel size.",
        "An image without lesions scores 1 (0 mm) when the segmenter predicts nothing and 0 (374 mm) when it predicts "
        "any blob: the mean depends on how many lesion-free images the sample holds.",
        "The BraTS 2023 definition (not one-to-one: a blob reaching two lesions counts for both; blobs near ignored small "
        "lesions go unpunished) is not the BraTS 2024 or 2025+ one; values are not comparable across them.",
    )

    def __init__(self, region: str = "whole_tumour", segmenter: dict[str, Any] | None = None, min_real_dice: float = 0.5,
                 challenge: str = "BraTS-GLI", dilation: int | None = None, volume_threshold: float | None = None) -> None:
        self.region, self.min_real_dice, self.segmenter = _segmenter_params(self.name, region, segmenter, min_real_dice)
        if not isinstance(challenge, str) or challenge not in LW.BRATS2023_CHALLENGES:
            raise MetricError(f"metric {self.name!r}: challenge {challenge!r} unknown; expected one of {sorted(LW.BRATS2023_CHALLENGES)}")
        preset = LW.BRATS2023_CHALLENGES[challenge]
        self.challenge = challenge
        self.dilation = preset.dilation if dilation is None else check_int(self.name, "dilation", dilation, 0)
        self.volume_threshold = preset.volume_threshold if volume_threshold is None else check_number(
            self.name, "volume_threshold", volume_threshold, lambda v: 0 <= v < float("inf"), ">= 0 (mm³ on volumes, mm² on slices)")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "protocol": "A", "segmenter": asdict(self.segmenter),
                "min_real_dice": self.min_real_dice, "challenge": self.challenge, "dilation": self.dilation,
                "volume_threshold": self.volume_threshold,
                "lesionwise": "BraTS 2023 lesion-wise (rachitsaluja/BraTS-2023-Metrics) per image: connected components "
                              "(26-connected on volumes, 8-connected in the plane on slices), GT lesions merged and predicted "
                              "components matched within the dilation, lesions of volume <= volume_threshold mm³ (area, mm², "
                              "on slices) ignored, missed lesion and false positive = Dice 0 / HD95 374 mm, HD95 of DeepMind "
                              "surface-distance"}

    def prepare(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        """The segmenter's competence first (once per sample), then per-image scores batch by batch."""
        self.check_sample(sample)
        _check_competence(ctx, self.name, self.region, self.segmenter, self.min_real_dice)
        return super().prepare(ctx, sample)

    def scores(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        pred, true = _region_masks(ctx, self.name, self.segmenter, self.region, sample)
        dice, hd95 = LW.lesionwise_dice_hd95(pred, true, tuple(ctx.data.spacing_mm), dilation=self.dilation,
                                             volume_threshold=self.volume_threshold)
        return {"dice": dice, "hd95": hd95}[self.score]


@register_metric
class DiceLesionwise(_Lesionwise):
    """Protocol A: BraTS 2023 lesion-wise Dice per image (missed lesions and false-positive blobs score 0)."""

    name = "dice_lesionwise"
    score = "dice"
    higher_is_better = True
    valid_range = (0.0, 1.0)
    summary = ("BraTS 2023 lesion-wise Dice (each lesion scored alone; misses and false-positive blobs score 0) of a segmenter "
               "trained on real data, applied to the images (protocol A)")
    limitations: ClassVar[tuple[str, ...]] = _Lesionwise._LIMITATIONS


@register_metric
class Hd95Lesionwise(_Lesionwise):
    """Protocol A: BraTS 2023 lesion-wise HD95 (mm) per image (missed lesions and false-positive blobs score 374 mm);
    lower is better."""

    name = "hd95_lesionwise"
    score = "hd95"
    higher_is_better = False
    valid_range = (0.0, float("inf"))
    summary = ("BraTS 2023 lesion-wise HD95 (mm; each lesion scored alone, misses and false-positive blobs 374 mm) of a "
               "segmenter trained on real data, applied to the images (protocol A)")
    limitations: ClassVar[tuple[str, ...]] = (
        *_Lesionwise._LIMITATIONS,
        "The 374 mm penalty for each missed lesion and false-positive blob exceeds the image's diagonal and dominates the "
        "mean: one stray blob moves the value of an image with one lesion by 187 mm, of a lesion-free image by 374 mm.",
    )


class _TrainOnSample(Metric):
    """Protocol B: train a segmenter on a training set made from the sample, report Dice per REAL test image.

    ``prepare`` returns the per-test-image Dice (``size`` = number of real test images, slices or volumes); ``value`` is
    their mean on a resample of the test images, so two samples' values are paired image by image
    (``pairs_by_reference``).
    """

    functional = staticmethod(F.dice_per_image)
    higher_is_better = True
    kind = "set"
    valid_range = (0.0, 1.0)
    needs = ("masks",)
    pairs_by_reference = True
    protocol = ""
    limitations: ClassVar[tuple[str, ...]] = (
        "Measures how useful the generated image-mask pairs are to ONE small segmenter with a fixed training budget; a "
        "larger model or another budget may rank generators differently.",
        "The seed-noise floor (unit: seed_sd) covers training randomness only. A faithful generator's images are a new "
        "draw of data, which adds variation the floor does not hold, so such a model fails the bound more often than "
        "the stated false-alarm rate; the rate is exact only for normal training noise.",
        "A difference within the bound is not evidence that the data are as useful as real data: with one test split "
        "and a few training seeds small losses go undetected.",
        "Dice per real test image (slice or volume): weighs small lesions as much as large ones; blind to what the "
        "segmenter does not need to learn (anatomy outside the lesion may be wrong and still train a good segmenter).",
    )

    def __init__(self, region: str = "whole_tumour", segmenter: dict[str, Any] | None = None, min_real_dice: float = 0.5,
                 noise_seeds: int = DEFAULT_NOISE_SEEDS) -> None:
        self.region, self.min_real_dice, self.segmenter = _segmenter_params(self.name, region, segmenter, min_real_dice)
        self.noise_seeds = check_int(self.name, "noise_seeds", noise_seeds, 2)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "protocol": self.protocol, "segmenter": asdict(self.segmenter),
                "min_real_dice": self.min_real_dice, "noise_seeds": self.noise_seeds, "evaluated_on": "real test",
                "dice": "MONAI compute_dice per real test image (slice or volume), empty-vs-empty = 1"}

    def training_set(self, ctx: MeasureContext, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        """The (images, masks) to train on, for a sample that is not the real training split itself."""
        raise NotImplementedError

    def check_sample(self, sample: Sample) -> None:
        if sample.masks is None:
            raise MetricError(f"metric {self.name!r}: {self.protocol} needs label masks to train a segmenter on the {sample.origin} "
                              f"images, and none came with them (TSTR needs masks: use a mask-conditioned model with generate(masks), "
                              f"one whose sample() returns (images, masks), or protocol A's metric 'dice')")
        super().check_sample(sample)

    def prepare(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        self.check_sample(sample)
        assert sample.masks is not None
        check_labels(sample.masks, ctx.n_classes, f"metric {self.name!r}: the {sample.origin} ")
        test = ctx.real("test")
        assert test.masks is not None
        if sample.masks.shape == test.masks.shape and torch.equal(sample.masks.long(), test.masks):
            raise MetricError(f"metric {self.name!r}: the {sample.origin} masks are the real test masks, on which the segmenter is "
                              f"evaluated; training on them would leak the test labels. Use `condition_on: train_masks` (the model "
                              f"generates for the real training masks; the baseline is then TRTR)")
        train = ctx.data.train
        cfg = _for_data(ctx, self.name, self.segmenter)
        is_real_train = _is_split(sample, train)
        if is_real_train:  # TRTR: the very segmenter protocol A uses (same cache key), memoised by the run
            seg = ctx.segmenter(cfg)
        else:
            images, masks = self.training_set(ctx, sample)
            ctx.progress(f"{self.name}: training a segmenter on {len(images)} image-mask pairs ({sample.origin}), or loading it from cache")
            seg = get_segmenter(images, masks, ctx.n_classes, cfg, ctx.device, ctx.cache, ctx.progress,
                                contrasts=tuple(ctx.data.contrasts))
        region = ctx.data.region_mask
        scores = F.dice_per_image(region(seg.predict(test.images), self.region), region(test.masks, self.region))
        trtr = scores if is_real_train else ctx.prepare(self, ctx.real("train"))
        if trtr.mean() < self.min_real_dice:
            raise MetricError(
                f"metric {self.name!r} ({self.region}): the segmenter trained on the real training split (TRTR) reaches only Dice "
                f"{trtr.mean():.3f} on the real test images (< min_real_dice {self.min_real_dice}); with this budget the task "
                f"cannot tell useful training data from useless. Train it longer (segmenter.epochs={cfg.epochs}) or check the data"
            )
        return scores

    def compute(self, prepared: np.ndarray, index: np.ndarray) -> float:
        return float(prepared[index].mean())

    def size(self, prepared: np.ndarray) -> int:
        return len(prepared)

    def seed_means(self, ctx: MeasureContext) -> list[float]:
        """Mean real-test Dice of the TRTR segmenter trained with seeds ``seed .. seed+noise_seeds-1`` (each trained once and
        cached on disk; the first is the TRTR baseline itself)."""
        cls = type(self)
        copies = [cls(self.region, {**asdict(self.segmenter), "seed": self.segmenter.seed + k}, self.min_real_dice, self.noise_seeds)
                  for k in range(self.noise_seeds)]
        ctx.progress(f"{self.name} ({self.region}): training noise over {self.noise_seeds} TRTR segmenter seeds (trained once, then cached)")
        return _seed_means(ctx, copies, ctx.real("train"))

    def noise_floor(self, ctx: MeasureContext) -> float:
        """Seed-to-seed SD (ddof 1) of :meth:`seed_means`. A difference between two independently trained segmenters (TSTR
        minus TRTR) has about sqrt(2) times this SD from training noise alone."""
        return float(np.std(self.seed_means(ctx), ddof=1))


@register_metric
class DiceTSTR(_TrainOnSample):
    """Protocol B, train on synthetic, test on real (TSTR): a segmenter of the same architecture and budget trained on
    the sample's image-mask pairs, Dice per real test image. On the real training split itself it is TRTR."""

    name = "dice_tstr"
    protocol = "B (TSTR: train on the sample, test on real)"
    summary = "Dice on the real test split of a segmenter trained on the images and their masks (protocol B, TSTR)"

    def training_set(self, ctx: MeasureContext, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        assert sample.masks is not None
        return sample.images, sample.masks


@register_metric
class DiceAugmented(_TrainOnSample):
    """Protocol B, augmentation: a segmenter trained on the real training split plus the sample's image-mask pairs
    (same architecture and epochs, so more steps), Dice per real test image. The real training split itself as the
    sample means no augmentation (TRTR); so does a sample identical to it (a copy adds no information)."""

    name = "dice_augmented"
    protocol = "B (augmentation: train on real train + the sample, test on real)"
    summary = "Dice on the real test split of a segmenter trained on real training data plus the images and masks (protocol B)"
    limitations: ClassVar[tuple[str, ...]] = (
        "Same epochs over a larger training set means more optimisation steps than TRTR: a gain may come from the extra "
        "steps rather than from the generated data.",
        *_TrainOnSample.limitations,
    )

    def training_set(self, ctx: MeasureContext, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        assert sample.masks is not None
        train = ctx.data.train
        if sample.images.shape[1:] != train.images.shape[1:]:
            raise MetricError(f"metric {self.name!r}: {sample.origin} images {tuple(sample.images.shape[1:])} differ in shape from the "
                              f"real training images {tuple(train.images.shape[1:])}")
        return torch.cat([train.images, sample.images]), torch.cat([train.masks, sample.masks.long()])
